"""Tuning with and without pruning: trials per hour and the best validation score over time.

Tunes ``ferlab_vgg`` on a seeded subset of FER2013 (``--subset`` training images, default
10,000; val = PublicTest, test = PrivateTest) for ``--budget-min`` minutes (default 30) twice:
with Optuna's median pruner (ferlab's defaults: 5 startup trials, no pruning in the schedule's
warm-up and the epoch after it) and with no pruner, each arm with its own seed (seed and
seed + 1000), so the arms share no trials. The two studies run **side by side** (two
worker processes started together, one thread each), so they share the machine's load and
their rates compare as a ratio. Afterwards each study's ``best.yaml`` goes through
``ferlab run`` once, which reuses the best trial's weights (same run key) and reads PrivateTest
for the first and only time.

Reports per arm: trials completed / pruned / failed, trials per hour, the best validation
value over time (minutes since the arm started), and the PrivateTest accuracy, balanced
accuracy and macro-F1 (with the config's TTA) of the best configuration.

    .venv/bin/python bench/tune.py                      # 30 + 30 min, side by side: ~35 min
    .venv/bin/python bench/tune.py --budget-min 10 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C

ARMS = ("median", "none")
SPACE = {
    "train.lr": {"float": [3.0e-4, 1.0e-2], "log": True},
    "train.weight_decay": {"float": [1.0e-3, 0.1], "log": True},
    "train.augment.erasing": {"float": [0.0, 0.5]},
    "train.label_smoothing": {"float": [0.0, 0.2]},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="FER2013 image-folder root")
    ap.add_argument("--subset", type=int, default=10_000, help="training images (seeded)")
    ap.add_argument("--budget-min", type=float, default=30.0, help="minutes per arm")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(C.BENCH_DIR / ".tune"), help="scratch folder")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child worker
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    return ap.parse_args(argv)


def make_subset(fer: Path, dest: Path, n: int, seed: int) -> Path:
    """``dest/train``: ``n`` seeded Training images; ``dest/test``: every test image (PublicTest
    and PrivateTest), as symbolic links to the real files (nothing is copied)."""
    marker = dest / f".subset-{n}-{seed}"
    if marker.is_file():
        return dest
    train = sorted(p for p in (fer / "train").glob("*/*") if p.is_file())
    chosen = sorted(random.Random(seed).sample(train, min(n, len(train))))
    for split, files in (("train", chosen), ("test", sorted((fer / "test").glob("*/*")))):
        for src in files:
            link = dest / split / src.parent.name / src.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(src.resolve())
    marker.write_text("ok")
    return dest


def config(args: argparse.Namespace, data: Path, arm: str) -> Any:
    from ferlab.config import load_config

    tune_block = {
        "metric": "val_balanced_accuracy",
        "trials": 10_000,  # the budget ends the study, not a trial count
        "sampler": "tpe",
        "pruner": arm,
        "space": SPACE,
    }
    return load_config(
        "fer2013_cpu",
        [
            f"name=tune_{arm}",
            # Each arm its own seed (trials are seeded by seed + trial number): the arms then
            # draw different first trials, so neither inherits the other's lucky start.
            f"seed={args.seed + 1000 * ARMS.index(arm)}",
            f"datasets=[{{name: fer2013, path: {data}}}]",
            f"train.epochs={args.epochs}",
            f"train.patience={args.epochs}",
            f"data.cache_dir={Path(args.work) / 'cache'}",
            "runtime.threads=1",
            "runtime.progress=false",
            "eval.bootstrap=200",
            f"tune={json.dumps(tune_block)}",
        ],
    )


def run_arm(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """One study (a child process): tune for the budget, then ``ferlab run`` its best.yaml."""
    from ferlab.config import load_config
    from ferlab.evaluation.analysis import collect_summary
    from ferlab.layout import Layout
    from ferlab.pipeline import run_experiment
    from ferlab.tuning import tune

    assert args.arm is not None
    out = Path(args.work) / args.arm
    t0 = time.time()
    result = tune(config(args, data, args.arm), timeout=args.budget_min, out=out, console=False)
    tuned_s = time.time() - t0
    trials = _study_trials(out, f"tune_{args.arm}")
    best_over_time, best = [], None
    for t in sorted(
        (t for t in trials if t["complete_s"] is not None), key=lambda t: t["complete_s"]
    ):
        if t["state"] == "COMPLETE" and (best is None or t["value"] > best):
            best = t["value"]
            best_over_time.append([round(t["complete_s"] / 60, 2), round(best, 4)])
    test: dict[str, Any] = {}
    if result.best_yaml is not None:
        run_experiment(load_config(Layout(out).tune_best), out=out, console=False)
        row = collect_summary(out)[0]
        test = {
            k: C.rnd(row.get(k), 4)
            for k in ("accuracy", "tta_accuracy", "tta_balanced_accuracy", "tta_macro_f1")
        }
        test["reused_best_trial_run"] = row.get("status") == "reused"
    hours = tuned_s / 3600
    counts = {s: result.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return {
        "arm": args.arm,
        "tuning_s": round(tuned_s, 1),
        "trials": counts,
        "trials_per_hour": round(sum(counts.values()) / hours, 2),
        "completed_per_hour": round(counts["COMPLETE"] / hours, 2),
        "pruned_per_hour": round(counts["PRUNED"] / hours, 2),
        "best_val_balanced_accuracy": C.rnd(result.best_value, 4),
        "best_params": result.best_params,
        "best_over_time_min": best_over_time,
        "private_test_of_best": test,
    }


def _study_trials(out: Path, name: str) -> list[dict[str, Any]]:
    import optuna

    from ferlab.layout import Layout
    from ferlab.tuning.study import open_storage

    storage, _ = open_storage(None, Layout(out))  # the study's journal file in tune/
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    start = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    rows = []
    for t in trials:
        done = t.datetime_complete
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "complete_s": None
                if done is None or start is None
                else (done - start).total_seconds(),
            }
        )
    return rows


def table(res: dict[str, Any]) -> str:
    lines = [
        "| arm | trials (complete / pruned / failed) | trials per hour | best val bal. acc | "
        "PrivateTest acc (TTA) | bal. acc (TTA) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for a in res["arms"]:
        c, t = a["trials"], a["private_test_of_best"]
        lines.append(
            f"| {a['arm']} | {c['COMPLETE']} / {c['PRUNED']} / {c['FAIL']} | "
            f"{a['trials_per_hour']} | {a['best_val_balanced_accuracy']} | "
            f"{t.get('tta_accuracy')} | {t.get('tta_balanced_accuracy')} |"
        )
    lines.append(f"\npruning / no pruning, trials per hour: {res['trials_per_hour_ratio']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fer = C.fer2013_path(args.data)
    work = Path(args.work)
    data = make_subset(fer, work / "fer2013_subset", args.subset, args.seed)
    if args.arm:  # a child: one study, its result as JSON on stdout
        print(json.dumps(run_arm(args, data), default=str), flush=True)
        return 0
    from ferlab.service.store import DataStore

    started = C.now_iso()
    cfg = config(args, data, "none")
    C.log(f"decoding the {args.subset}-image subset once (shared by both studies)")
    DataStore(cfg).get(cfg.datasets[0], cfg.models[0].image_size, cfg.models[0].channels)
    machine = C.machine_info(1)
    C.log(f"two studies side by side for {args.budget_min} min each: {', '.join(ARMS)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])]
    procs = {
        arm: subprocess.Popen([*base, "--arm", arm], stdout=subprocess.PIPE, text=True, env=env)
        for arm in ARMS
    }
    arms = []
    for arm, p in procs.items():
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"the {arm} study failed (exit {p.returncode})")
        arms.append(json.loads(out.strip().splitlines()[-1]))
    by = {a["arm"]: a for a in arms}
    res = {
        "benchmark": "tune",
        "started": started,
        "finished": C.now_iso(),
        "command": " ".join(["python", "bench/tune.py", *(argv or sys.argv[1:])]),
        "settings": {
            "subset": args.subset,
            "budget_min": args.budget_min,
            "epochs": args.epochs,
            "seed": args.seed,
            "space": SPACE,
            "model": "ferlab_vgg",
            "threads_per_study": 1,
        },
        "machine": machine,
        "arms": arms,
        "trials_per_hour_ratio": C.ratio(
            by["median"]["trials_per_hour"], by["none"]["trials_per_hour"]
        ),
    }
    res["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    C.emit(res, as_json=args.json, table=table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
