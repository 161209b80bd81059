"""A seed ensemble inside a time budget: K runs of one recipe, each given 1/K of the training
time, soft-voted on PublicTest (which judges the pilot) and PrivateTest (read once).

    python bench/ensemble.py --budget-min 60 --members 3     # round three's ensemble pilot
    python bench/ensemble.py --epochs 56 --with default --seeds 1 2   # the same compute, any CPU
    python bench/ensemble.py --smoke                          # two members of a few batches

Each member is the recipe itself (``ferlab.pipeline.run_experiment``, as ``bench/accuracy.py``
runs it) with ``seed=k`` and ``train.time_budget_min`` = (``--budget-min`` - ``--reserve-min``)
/ K, in its own experiment folder ``OUT/seed<k>``: PublicTest chooses each member's epoch and
temperature as the recipe does, and the experiment reads PrivateTest once for each member (its
own headline, kept for the record). Then every member is scored on PublicTest and PrivateTest
in one pass each (plain and the recipe's TTA), and ``ferlab.evaluation.ensemble_results``
averages their probabilities (equal weights, uncalibrated: a soft vote chooses nothing). The
ensembles of the first k members (k = 2 .. K, trained in k shares of the budget) are reported
too; the headline is all K with the recipe's TTA, and ``minutes.headline`` is when it was
ready, from this process's start. ``--reserve-min`` (8 by default) is kept back for the decoding,
each member's kernel probe and PrivateTest read, and the scoring.

The pilot's verdict is PublicTest's: the K-member ensemble's plain PublicTest accuracy beside a
single run's best-epoch PublicTest accuracy (``val_best`` in ``bench/accuracy.py``'s record).

A time budget buys a different number of epochs on every machine (the CPUs here differ by more
than 2x), so a budgeted pilot is only comparable with a single run measured on the same machine.
``--epochs N`` is the machine-free form: every member trains exactly N epochs (the budget off),
so three members of 56 epochs are compared with a single run of about 168. ``--seeds`` names the
members' seeds, and ``--with RUN`` (repeatable; a run folder or ``default``, the shipped model)
adds a model trained before as a member, listed first, scored like the others.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as C
import accuracy as A

T_START = time.perf_counter()
SMOKE = A.SMOKE  # one epoch of 3 batches, no budget, no bootstrap
SMOKE_IMAGES = 512  # the smoke scores this many images of each split, evenly spaced


def add_recipe_args(ap: argparse.ArgumentParser, who: str, *, out: str, smoke: str) -> None:
    """The options ``member_config`` reads (the recipe, its overrides, threads, data, cache),
    and ``--out``, ``--smoke``, ``--json``; ``who`` trains with them."""
    ap.add_argument("--config", default="fer2013_cpu_quick", help=f"recipe of {who}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help=f"config override for {who} (repeatable)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument(
        "--data", default=None, help="FER2013 root (default ../shared/datasets/fer2013)"
    )
    ap.add_argument("--cache-dir", default=None, help="dataset cache (default: the config's)")
    ap.add_argument("--out", default=None, help=out)
    ap.add_argument("--smoke", action="store_true", help=smoke)
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget-min", type=float, default=60.0, help="wall-clock bound, minutes")
    ap.add_argument("--members", type=int, default=3, help="ensemble size K (seeds 0..K-1)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="the trained members' seeds (instead of 0..K-1; none: --with only)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=None,
                    help="every member trains exactly this many epochs (no time budget)")  # fmt: skip
    ap.add_argument("--with", dest="with_runs", action="append", default=[], metavar="RUN",
                    help="a trained run folder or 'default' joins as a member (repeatable)")  # fmt: skip
    ap.add_argument(
        "--reserve-min", type=float, default=8.0,
        help="minutes kept back from the budget for decoding, the probes and the scoring",
    )  # fmt: skip
    add_recipe_args(ap, "every member", out="folder of the members' experiments",
                    smoke="two members of 3 batches (a CI check)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.smoke:
        args.members = 2
    if args.seeds is None:
        args.seeds = list(range(args.members))
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds {args.seeds}: a seed given twice would train the same member twice")
    args.members = len(args.seeds) + len(args.with_runs)
    if args.members < 2:
        ap.error(
            f"{args.members} member: an ensemble needs at least 2 (--members, --seeds, --with)"
        )
    if args.budget_min - args.reserve_min <= 0:
        ap.error(f"--budget-min {args.budget_min} leaves no training time after --reserve-min")
    return args


def elapsed_min() -> float:
    return (time.perf_counter() - T_START) / 60


def member_budget_min(args: argparse.Namespace) -> float | None:
    """Each trained member's share of the training time (the recipe's ``train.time_budget_min``);
    None with ``--epochs``, in the smoke, and when every member was trained before."""
    if args.epochs is not None or args.smoke or not args.seeds:
        return None
    return round((args.budget_min - args.reserve_min) / len(args.seeds), 2)


def member_config(args: argparse.Namespace, fer_path: Path, seed: int | None = None) -> Any:
    """The recipe as every member runs it (``seed``: a trained member's; None: the recipe's)."""
    from ferlab.config import load_config

    overrides = [f"datasets=[{{name: fer2013, path: '{fer_path}'}}]", *args.overrides]
    if seed is not None:
        overrides.append(f"seed={seed}")
    share = member_budget_min(args)
    if args.epochs is not None:
        overrides += ["train.time_budget_min=null", f"train.epochs={args.epochs}"]
    elif share is not None:  # None: every member trained before, the recipe's budget stays
        overrides.append(f"train.time_budget_min={share}")
    if args.smoke:
        overrides += SMOKE
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    if args.threads:
        overrides.append(f"runtime.threads={args.threads}")
    overrides += ["runtime.progress=false", "eval.cross_dataset=false", "eval.ensembles=false"]
    return load_config(args.config, overrides)


def train_member(args: argparse.Namespace, seed: int, out: Path, fer_path: Path) -> dict[str, Any]:
    """One member: the recipe with this seed and its share of the budget (or ``--epochs``), as
    an experiment."""
    from ferlab.layout import FIT_JSON, read_json
    from ferlab.pipeline import run_experiment

    cfg = member_config(args, fer_path, seed)
    t0 = elapsed_min()
    res = run_experiment(cfg, out=out, console=False)
    if res.failed:
        raise SystemExit(f"member seed {seed} failed: {res.failed[0].error}")
    row = next(r for r in res.summary_rows if r["dataset"] == "fer2013")
    fit = read_json(res.run_dir / FIT_JSON)
    C.log(f"member seed {seed}: {fit.get('epochs_run')} epochs in {elapsed_min() - t0:.2f} min")
    return {
        "cfg": cfg,
        "weights": res.run_dir,
        "record": {
            "name": f"seed {seed}",
            "seed": seed,
            "experiment": str(out),
            "run_dir": str(res.run_dir),
            "minutes": round(elapsed_min() - t0, 2),
            "time_budget": fit.get("time_budget"),
            "epochs_planned": fit.get("planned_epochs"),
            "epochs_run": fit.get("epochs_run"),
            "best_epoch": fit.get("best_epoch"),
            "val_best": fit.get("best"),
            # the experiment's own PrivateTest read (the member alone, recipe TTA)
            "test_alone": A.from_row(row, "tta_" if row.get("tta_accuracy") is not None else ""),
        },
    }


def given_member(run: str, cfg: Any) -> dict[str, Any]:
    """A model trained before (a run folder or ``default``), scored with the recipe's TTA."""
    from ferlab.layout import FIT_JSON, read_json
    from ferlab.models import read_meta

    fit = Path(run) / FIT_JSON
    if fit.is_file():  # a run folder: its training record
        got = read_json(fit)
        trained = {"epochs": got.get("epochs_run"), "best_epoch": got.get("best_epoch")}
    else:  # the shipped model says how it was trained
        trained = (read_meta(run).extra or {}).get("default_model") or {}
    return {
        "cfg": cfg,
        "weights": run,
        "record": {
            "name": run,
            "seed": trained.get("seed"),
            "run_dir": run,
            "epochs_run": trained.get("epochs"),
            "best_epoch": trained.get("best_epoch"),
        },
    }


def score_members(
    members: list[dict[str, Any]], splits: tuple[str, ...], args: argparse.Namespace, fer_path: Path
) -> dict[str, list[Any]]:
    """Every member's EvalResult on each FER2013 split (plain and the recipe's TTA, one pass),
    every member on the first split before any on the next. Each model is loaded once, and the
    dataset once per input geometry."""
    from ferlab.data.loading import load_dataset
    from ferlab.evaluation import evaluate_split
    from ferlab.models import load_model

    models = [load_model(m["weights"]) for m in members]
    decoded: dict[tuple[int, int], Any] = {}  # (size, channels) -> the dataset at that geometry
    out: dict[str, list[Any]] = {split: [] for split in splits}
    for split in splits:
        for m, (model, meta) in zip(members, models, strict=True):
            cfg = m["cfg"]
            geometry = (int(meta.image_size), int(meta.channels))
            if geometry not in decoded:
                decoded[geometry] = load_dataset(
                    f"fer2013:{fer_path}", image_size=geometry[0], channels=geometry[1],
                    cache_dir=args.cache_dir or cfg.data.cache_dir,
                )  # fmt: skip
            fer = decoded[geometry]
            s = fer.splits[split]
            # the split is in class order: the smoke's images are spread over all of it
            rows = (
                np.linspace(0, len(s) - 1, SMOKE_IMAGES).astype(int) if args.smoke else slice(None)
            )
            r = evaluate_split(
                model, meta, s.images[rows], s.labels[rows], fer.labels,
                tta=cfg.eval.tta if cfg.eval.tta.enabled else None,
                batch_size=cfg.eval.batch_size, bootstrap=cfg.eval.bootstrap, seed=cfg.seed,
            )  # fmt: skip
            out[split].append(r)
    return out


def both(result: Any) -> dict[str, Any]:
    """The plain and TTA metrics of an EvalResult, briefly."""
    return {"plain": A.brief(result.metrics["plain"]), "tta": A.brief(result.metrics["tta"])}


def ensembles(results: list[Any], bootstrap: int) -> dict[str, Any]:
    """Soft votes of the first k members, k = 2 .. K (plain and TTA metrics)."""
    from ferlab.evaluation.ensemble import ensemble_results

    out: dict[str, Any] = {}
    for k in range(2, len(results) + 1):
        out[f"first_{k}"] = both(ensemble_results(results[:k], bootstrap=bootstrap))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ferlab.device import cpu_threads
    from ferlab.evaluation.tta import n_views

    fer_path = C.fer2013_path(args.data)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ferlab-ensemble-"))
    machine = C.machine_info(cpu_threads(args.threads))  # load average at the start
    each = per_member(args.epochs, member_budget_min(args))
    C.log(f"seeds {args.seeds} of {args.config}, {each} each, with {args.with_runs}, in {out}")
    trained = [train_member(args, k, out / f"seed{k}", fer_path) for k in args.seeds]
    train_min = elapsed_min()
    cfg = trained[0]["cfg"] if trained else member_config(args, fer_path)
    members = [given_member(run, cfg) for run in args.with_runs] + trained
    bootstrap = cfg.eval.bootstrap
    scored = score_members(members, ("val", "test"), args, fer_path)
    val, test = scored["val"], scored["test"]
    val_ens, test_ens = ensembles(val, bootstrap), ensembles(test, bootstrap)
    headline_min = elapsed_min()
    for m, v, t in zip(members, val, test, strict=True):
        m["record"]["val"], m["record"]["test"] = both(v), both(t)
    full = f"first_{args.members}"
    return {
        "benchmark": "ensemble",
        "smoke": args.smoke,
        "date": C.now_iso(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "recipe": args.config,
        "overrides": list(args.overrides),
        "members": args.members,
        "seeds": args.seeds,
        "with": args.with_runs,
        "member_budget_min": member_budget_min(args),
        "member_epochs": args.epochs,
        "machine": machine,
        "budget_min": args.budget_min,
        "tta": cfg.eval.tta.model_dump(mode="json"),
        "tta_views_per_member": n_views(cfg.eval.tta),
        "minutes": {
            "members_trained": round(train_min, 2),
            "headline": round(headline_min, 2),
        },
        "within_budget": headline_min <= args.budget_min,
        "member_runs": [m["record"] for m in members],
        "public_test": {"split": "PublicTest", "ensembles": val_ens},
        "private_test": {"split": "PrivateTest", "ensembles": test_ens},
        "headline": test_ens[full]["tta"] or test_ens[full]["plain"],
        "cpu_minutes": round(time.process_time() / 60, 2),
        "experiment": str(out),
    }


def per_member(epochs: int | None, budget_min: float | None) -> str:
    """What each trained member was given, in words."""
    if epochs is not None:
        return f"{epochs} epochs"
    return f"{budget_min} min" if budget_min is not None else "the smoke's batches"


def scores_table(title: str, rows: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    """A Markdown table of accuracy, plain and with the TTA, on PublicTest and PrivateTest: one
    row per ``(name, val, test)``, where ``val``/``test`` are ``both()``'s records."""

    def acc(m: dict[str, Any] | None) -> str:
        return "-" if not m else f"{m['accuracy']:.4f}"

    lines = [
        title,
        "",
        "| what | PublicTest plain | PublicTest TTA | PrivateTest plain | PrivateTest TTA |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, v, t in rows:
        lines.append(
            f"| {name} | {acc(v['plain'])} | {acc(v['tta'])} | {acc(t['plain'])} | "
            f"{acc(t['tta'])} |"
        )
    return "\n".join(lines)


def table(res: dict[str, Any]) -> str:
    each = per_member(res["member_epochs"], res["member_budget_min"])
    title = (
        f"{res['members']} members of {res['recipe']} (seeds {res['seeds']}, {each} each; with "
        f"{res['with']}), headline after {res['minutes']['headline']} min of {res['budget_min']}"
    )
    rows = [
        (f"{r['name']} ({r['epochs_run']} epochs, best {r['best_epoch']})", r["val"], r["test"])
        for r in res["member_runs"]
    ]
    rows += [
        (f"ensemble {name}", v, res["private_test"]["ensembles"][name])
        for name, v in res["public_test"]["ensembles"].items()
    ]
    return scores_table(title, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    C.emit(res, as_json=args.json, table=table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
