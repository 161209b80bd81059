"""Distillation: one net of the recipe trained on its teachers' soft vote (round three's lever
"distillation from an ensemble into one net", issue 21), scored as ``bench/ensemble.py``
scores its members, so a pilot compares with them.

    python bench/distill.py --teacher default --teacher RUN --epochs 56 --out DIR --json
    python bench/distill.py --smoke     # the shipped model teaches a student of 3 batches

The teachers (``--teacher``, repeatable: run folders or ``default``, the shipped model) score
FER2013's Training split (the recipe's TTA views, or ``--teacher-views plain``) at their own
calibrated temperature times ``--kd-temp``; their probabilities are averaged (a soft vote), and
each training image's target becomes ``--alpha`` x the vote + (1 - ``--alpha``) x its one-hot
label. The student is the recipe (``--config``, default ``fer2013_cpu_quick``; ``--set``
overrides) with ``train.soft_labels`` on, trained for exactly ``--epochs`` epochs (no time
budget: epochs compare across machines) through ferlab's own training path
(``ferlab.service.fitting.fit_or_reuse``, as ``ferlab run`` trains a pair: PublicTest chooses
the epoch and the temperature). A rerun into the same ``--out`` reuses a finished student.

Then the student and every teacher are scored on PublicTest and PrivateTest (plain and the
recipe's TTA; ``bench/ensemble.py``'s ``score_members``), and the teachers' vote beside them.
The verdict is PublicTest's (with the TTA): the student against a plain run of the same
epochs; PrivateTest is for the record. The teachers' training counts against any budget claim:
a distilled student is the vote's compute plus its own, in one net for ``ferlab predict``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import _common as C
import ensemble as E

T_START = time.perf_counter()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--teacher", dest="teachers", action="append", default=[], metavar="RUN",
                    help="a trained run folder or 'default' (repeatable)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=None, help="the student's epochs")
    ap.add_argument("--alpha", type=float, default=0.5, help="the vote's share of each target")
    ap.add_argument("--kd-temp", type=float, default=1.0,
                    help="softens the teachers beyond their calibrated temperature")  # fmt: skip
    ap.add_argument("--teacher-views", choices=("tta", "plain"), default="tta",
                    help="the teachers' views of a training image")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="the student's seed")
    E.add_recipe_args(ap, "the student", out="the student's folder (a rerun reuses it)",
                      smoke="3 batches, plain teacher views")  # fmt: skip
    args = ap.parse_args(argv)
    if args.smoke:
        args.teachers = args.teachers or ["default"]
        args.teacher_views = "plain"
    if not args.teachers:
        ap.error("no --teacher: name at least one trained run folder, or 'default'")
    if args.epochs is None and not args.smoke:
        ap.error("--epochs N: the student trains exactly N epochs (the pilots count epochs)")
    if not 0 < args.alpha <= 1:
        ap.error(f"--alpha {args.alpha}: the vote's share must be in (0, 1]")
    if args.kd_temp <= 0:
        ap.error(f"--kd-temp {args.kd_temp}: a temperature must be positive")
    # E.member_config reads the epochs (set, or the smoke's: no budget share), the overrides,
    # smoke, cache and threads
    args.overrides = [*args.overrides, "train.soft_labels=true"]
    return args


def elapsed_min() -> float:
    return (time.perf_counter() - T_START) / 60


def teacher_targets(
    teachers: list[str], split: Any, data_labels: list[str], args: argparse.Namespace, cfg: Any
) -> np.ndarray:
    """The teachers' soft vote on ``split``: (N, len(CANONICAL)) float32, rows summing to 1
    over ``data_labels``' columns (``ArraySplit.soft``'s layout)."""
    from ferlab.evaluation import evaluate_split
    from ferlab.labels import INDEX
    from ferlab.models import load_model

    vote = np.zeros((len(split), len(INDEX)), dtype=np.float64)
    tta = cfg.eval.tta if args.teacher_views == "tta" and cfg.eval.tta.enabled else None
    for run in teachers:
        model, meta = load_model(run)
        seen = (int(meta.image_size), int(meta.channels))
        if seen != (split.images.shape[1], split.images.shape[3]):
            raise SystemExit(
                f"teacher {run}: it reads {seen[0]}x{seen[0]}x{seen[1]} images, the student's "
                f"recipe {split.images.shape[1]}x{split.images.shape[1]}x{split.images.shape[3]}; "
                "give teachers of the student's geometry (or --set the student's model to theirs)"
            )
        r = evaluate_split(
            model, meta, split.images, split.labels, data_labels, tta=tta,
            batch_size=cfg.eval.batch_size, bootstrap=0, seed=cfg.seed,
            temperature=float(meta.temperature) * args.kd_temp,
        )  # fmt: skip
        probs = r.calibrated_tta if tta is not None else r.calibrated_plain
        if probs is None or not r.kept_mask.all():
            raise SystemExit(f"teacher {run}: it does not score every training image")
        cols = [INDEX[n] for n in r.labels]
        vote[:, cols] += probs / len(teachers)
        C.log(f"teacher {run}: {len(split)} training images, {elapsed_min():.2f} min")
    return vote.astype(np.float32)


def soft_targets(vote: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` x the vote + (1 - ``alpha``) x each image's one-hot label (canonical indices)."""
    hard = np.zeros_like(vote)
    hard[np.arange(len(labels)), labels] = 1.0
    return (alpha * vote + (1.0 - alpha) * hard).astype(np.float32)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ferlab.data.loading import load_from_config
    from ferlab.device import cpu_threads
    from ferlab.layout import FIT_JSON, read_json
    from ferlab.record.planning import model_geometry
    from ferlab.service.fitting import fit_or_reuse
    from ferlab.training import is_complete

    fer_path = C.fer2013_path(args.data)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ferlab-distill-"))
    machine = C.machine_info(cpu_threads(args.threads))
    cfg = E.member_config(args, fer_path, args.seed)
    m = cfg.models[0]
    size, ch = model_geometry(cfg, m)
    data = load_from_config(cfg.datasets[0], cfg.data, image_size=size, channels=ch)
    train = data.splits["train"]
    # The run key names what was taught: a rerun with other teachers or mixing retrains.
    what = [args.teachers, args.alpha, args.kd_temp, args.teacher_views, args.epochs,
            args.config, args.overrides, args.seed]  # fmt: skip
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]
    run_dir = out / f"student-{key}"
    soft = None
    if not is_complete(run_dir):  # a finished student is reused without its teachers' pass
        C.log(f"teachers {args.teachers} on {len(train)} training images ({args.teacher_views})")
        vote = teacher_targets(args.teachers, train, list(data.labels), args, cfg)
        soft = soft_targets(vote, np.asarray(train.labels), args.alpha)
        data = replace(data, splits={**data.splits, "train": replace(train, soft=soft)})
    teacher_min = elapsed_min()
    student = fit_or_reuse(data, m, run_dir, f"distill-{key}", cfg)
    fit = read_json(student.run_dir / FIT_JSON)
    train_min = elapsed_min() - teacher_min
    C.log(f"student: {fit.get('epochs_run')} epochs in {train_min:.2f} min")
    members = [E.given_member(t, cfg) for t in args.teachers]
    members.append({"cfg": cfg, "weights": student.run_dir, "record": {
        "name": "student", "seed": args.seed, "run_dir": str(student.run_dir),
        "epochs_run": fit.get("epochs_run"), "best_epoch": fit.get("best_epoch"),
        "reused": student.reused, "minutes": round(train_min, 2),
    }})  # fmt: skip
    scored = E.score_members(members, ("val", "test"), args, fer_path)
    val, test = scored["val"], scored["test"]
    for mem, v, t in zip(members, val, test, strict=True):
        mem["record"]["val"], mem["record"]["test"] = E.both(v), E.both(t)
    n = len(args.teachers)
    vote_scores = None
    if n > 1:
        from ferlab.evaluation.ensemble import ensemble_results

        bootstrap = cfg.eval.bootstrap
        vote_scores = {
            "val": E.both(ensemble_results(val[:n], bootstrap=bootstrap)),
            "test": E.both(ensemble_results(test[:n], bootstrap=bootstrap)),
        }
    rec = members[-1]["record"]
    return {
        "benchmark": "distill",
        "smoke": args.smoke,
        "date": C.now_iso(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "recipe": args.config,
        "overrides": list(args.overrides),
        "teachers": args.teachers,
        "alpha": args.alpha,
        "kd_temp": args.kd_temp,
        "teacher_views": args.teacher_views,
        "epochs": args.epochs,
        "machine": machine,
        "minutes": {
            "teachers": round(teacher_min, 2),
            "student": round(train_min, 2),
            "total": round(elapsed_min(), 2),
        },
        # the mean of each training target's largest share (None: a reused student)
        "target_mean_max": None if soft is None else round(float(soft.max(axis=1).mean()), 4),
        "student": rec,
        "teacher_runs": [mem["record"] for mem in members[:n]],
        "teacher_vote": vote_scores,
        "headline_public": rec["val"]["tta"] or rec["val"]["plain"],
        "experiment": str(out),
    }


def table(res: dict[str, Any]) -> str:
    title = (
        f"student of {res['teachers']} (alpha {res['alpha']}, kd-temp {res['kd_temp']}, "
        f"{res['teacher_views']} views), {E.per_member(res['epochs'], None)} of {res['recipe']}"
    )
    rows = [(r["name"], r["val"], r["test"]) for r in res["teacher_runs"]]
    if res["teacher_vote"]:
        rows.append(("teachers' vote", res["teacher_vote"]["val"], res["teacher_vote"]["test"]))
    st = res["student"]
    return E.scores_table(title, [*rows, ("student", st["val"], st["test"])])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    C.emit(res, as_json=args.json, table=table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
