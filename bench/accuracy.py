"""Accuracy per CPU-minute: train ferlab's default CPU model on FER2013 within a time budget and
score PrivateTest with and without TTA.

    python bench/accuracy.py --budget-min 60                     # the issue's race
    python bench/accuracy.py --budget-min 60 --model ferlab_vgg --set train.lr=0.004
    python bench/accuracy.py --budget-min 1 --limit-train 512 --limit-eval 256   # smoke

Protocol: FER2013 Training -> train, PublicTest -> val (early stopping and best-epoch choice),
PrivateTest -> test, read once at the end. The recipe is the shipped ``fer2013_cpu.yaml``
(``--config``, ``--set key=value`` overrides) and the training is ``ferlab.training.fit`` itself.

How the budget is kept: ``fit`` has no wall-clock stop, and the one-cycle schedule must know its
length up front anyway (a hard stop would cut its annealing phase, where most of the accuracy is
won). So, after loading the data, the script measures this machine's training rate on ferlab's own
path (``_common.ferlab_train_rate``: a few seconds) and its inference rate on the val split, and
sets ``train.epochs`` so that data loading + probe + all epochs (train + validation) + the final
test evaluation fit in ``--budget-min`` times ``--safety``. ``--epochs N`` skips the estimate.
Early stopping may end the run sooner. The minutes reported are wall-clock minutes of this
process from its start (dataset cache build included when the cache was cold: it is reported
separately as ``data_min``), plus the process's CPU minutes.

Test metrics (accuracy, balanced accuracy, macro-F1, with bootstrap 95% CIs): plain (identity
view), hflip TTA (2 views) and hflip + five crops (7 views), each averaging probabilities.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _common as C

T_START = time.perf_counter()
TARGET_TTA_ACCURACY = 0.69


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget-min", type=float, default=60.0, help="wall-clock budget, minutes")
    ap.add_argument("--model", default=None, help="model name (default: the default CPU model)")
    ap.add_argument("--epochs", type=int, default=None, help="fixed epoch count (no estimate)")
    ap.add_argument("--config", default="fer2013_cpu", help="recipe: shipped config or YAML path")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. train.lr=0.004 (repeatable)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument(
        "--data", default=None, help="FER2013 root (default ../shared/datasets/fer2013)"
    )
    ap.add_argument("--cache-dir", default=None, help="dataset cache (default: the config's)")
    ap.add_argument("--out", default=None, help="run folder parent (default: a temporary folder)")
    ap.add_argument("--safety", type=float, default=0.92, help="fraction of the budget planned")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    ap.add_argument("--limit-train", type=int, default=None, help="smoke: first N train images")
    ap.add_argument("--limit-eval", type=int, default=None, help="smoke: first N val/test images")
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    return ap.parse_args(argv)


def elapsed_s() -> float:
    return time.perf_counter() - T_START


# -- data ------------------------------------------------------------------------------------------
def subset(split: Any, n: int | None, seed: int) -> Any:
    """A seeded random subset of ``n`` images (all when ``n`` is None), in a stable order."""
    import numpy as np

    from ferlab.data.base import ArraySplit

    if n is None or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return ArraySplit(
        images=np.ascontiguousarray(split.images[idx]),
        labels=np.asarray(split.labels)[idx],
        keys=[split.keys[i] for i in idx],
        soft=None if split.soft is None else np.asarray(split.soft)[idx],
    )


def load_data(cfg: Any, args: argparse.Namespace) -> Any:
    from ferlab.data.loading import load_dataset

    d, m = cfg.data, cfg.models[0]
    ds = load_dataset(
        "fer2013",
        str(C.fer2013_path(args.data)),
        size=m.image_size,
        channels=m.channels,
        cache_dir=args.cache_dir or d.cache_dir,
        on_bad_file=d.on_bad_file,
        log=C.log,
    )
    if args.limit_train or args.limit_eval:
        ds.splits = {
            "train": subset(ds.splits["train"], args.limit_train, cfg.seed),
            "val": subset(ds.splits["val"], args.limit_eval, cfg.seed),
            "test": subset(ds.splits["test"], args.limit_eval, cfg.seed),
        }
    return ds


# -- budget ----------------------------------------------------------------------------------------
def infer_rate(model_name: str, kwargs: dict[str, Any], ds: Any, size: int, ch: int) -> float:
    """Images/s of a plain (1-view) ``predict_views`` pass on (part of) the val split."""
    import torch

    from ferlab.evaluation.tta import predict_views
    from ferlab.models import create_model, default_norm

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=len(ds.labels), in_chans=ch, image_size=size,
                         **kwargs)  # fmt: skip
    mean, std = default_norm(ch, model)
    meta = SimpleNamespace(labels=list(ds.labels), image_size=size, channels=ch, mean=mean, std=std)
    images = ds.splits["val"].images[:1024]
    predict_views(model, images[:64], meta, None, 256)  # warm-up
    _, _, ips = predict_views(model, images, meta, None, 256)
    return float(ips)


def plan_epochs(
    cfg: Any, mcfg: Any, train_cfg: Any, runtime: Any, ds: Any, args: argparse.Namespace
) -> tuple[int, dict[str, Any]]:
    """Epochs that fit the budget, from ferlab's measured training and inference rates."""
    size, ch = mcfg.image_size, mcfg.channels
    small = len(ds.splits["train"]) < 5000
    C.log("probing this machine's training rate on ferlab's path ...")
    probe = C.ferlab_train_rate(
        ds, mcfg.name, dict(mcfg.kwargs), train_cfg, C.bench_runtime(runtime.threads, runtime),
        image_size=size, channels=ch,
        windows=2, window_s=1.0 if small else 4.0, warmup_s=1.0 if small else 3.0,
        warmup_steps=1 if small else C.MIN_WARMUP_STEPS, max_steps=100_000,
    )  # fmt: skip
    train_ips = float(probe["ips"] or 1.0)
    eval_ips = infer_rate(mcfg.name, dict(mcfg.kwargs), ds, size, ch)
    n_train, n_val, n_test = (len(ds.splits[s]) for s in ("train", "val", "test"))
    epoch_s = n_train / train_ips + n_val / eval_ips + 1.0  # + checkpoint write, epoch hooks
    test_s = n_test * (2 + 7) / eval_ips  # the two TTA passes (views cost like images)
    left = args.budget_min * 60 * args.safety - elapsed_s() - test_s
    epochs = max(1, math.floor(left / epoch_s))
    plan = {
        "train_ips_probe": round(train_ips, 1),
        "eval_ips_probe": round(eval_ips, 1),
        "epoch_s_estimate": round(epoch_s, 1),
        "test_eval_s_estimate": round(test_s, 1),
        "seconds_left_for_training": round(left, 1),
        "epochs": epochs,
    }
    C.log(f"plan: {plan}")
    return epochs, plan


# -- evaluation ------------------------------------------------------------------------------------
def score(result: Any, ds: Any, cfg: Any, bootstrap: int) -> dict[str, Any]:
    from ferlab.config import TTAConfig
    from ferlab.evaluation import evaluate_split

    test = ds.splits["test"]
    frac = cfg.eval.tta.crop_fraction
    out: dict[str, Any] = {}
    for name, tta in (
        ("hflip", TTAConfig(hflip=True)),
        ("hflip_crops5", TTAConfig(hflip=True, crops=5, crop_fraction=frac)),
    ):
        r = evaluate_split(
            result.model, result.meta, test.images, test.labels, ds.labels,
            tta=tta, batch_size=cfg.eval.batch_size, bootstrap=bootstrap, seed=cfg.seed,
        )  # fmt: skip
        if "plain" not in out:
            out["plain"] = brief(r.metrics["plain"])
        out[name] = brief(r.metrics["tta"])
        out[name]["views"] = r.metrics["tta_views"]
    return out


def brief(m: dict[str, Any]) -> dict[str, Any]:
    keep = ("n", "accuracy", "balanced_accuracy", "macro_f1", "ci")
    return {k: m[k] for k in keep if k in m}


# -- main ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ferlab.config import load_config
    from ferlab.device import cpu_threads
    from ferlab.models import DEFAULT_CPU_MODEL
    from ferlab.training import fit

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"models=[{{name: {args.model}}}]")
    cfg = load_config(args.config, overrides)
    mcfg = cfg.models[0]
    if not args.model and args.config == "fer2013_cpu" and mcfg.name != DEFAULT_CPU_MODEL:
        C.log(f"note: {args.config} trains {mcfg.name}; DEFAULT_CPU_MODEL is {DEFAULT_CPU_MODEL}")
    threads = cpu_threads(args.threads if args.threads else cfg.runtime.threads)
    torch.set_num_threads(threads)
    runtime = cfg.runtime.model_copy(update={"threads": threads, "progress": False})
    train_cfg = cfg.train_for(mcfg)
    size, ch = mcfg.image_size, mcfg.channels

    t0 = elapsed_s()
    ds = load_data(cfg, args)
    data_s = elapsed_s() - t0
    C.log(
        f"data ready in {data_s:.1f} s: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items())
    )

    t0 = elapsed_s()
    if args.epochs:
        epochs, plan = args.epochs, {"epochs": args.epochs, "fixed": True}
    else:
        epochs, plan = plan_epochs(cfg, mcfg, train_cfg, runtime, ds, args)
    probe_s = elapsed_s() - t0
    train_cfg = train_cfg.model_copy(update={"epochs": epochs})

    parent = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ferlab-accuracy-"))
    run_dir = parent / f"{mcfg.display}-e{epochs}-{time.strftime('%Y%m%d-%H%M%S')}"
    C.log(f"training {mcfg.name} for up to {epochs} epochs into {run_dir}")
    t0 = elapsed_s()
    result = fit(
        ds, mcfg, train_cfg, run_dir, seed=cfg.seed, image_size=size, channels=ch,
        runtime=runtime, log=C.log,
    )  # fmt: skip
    fit_s = elapsed_s() - t0

    t0 = elapsed_s()
    metrics = score(result, ds, cfg, args.bootstrap)
    eval_s = elapsed_s() - t0
    total_min = elapsed_s() / 60
    best = metrics["hflip_crops5"]["accuracy"]
    best_flip = metrics["hflip"]["accuracy"]
    smoke = bool(args.limit_train or args.limit_eval)
    return {
        "benchmark": "accuracy",
        "smoke": smoke,
        "date": C.now_iso(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": mcfg.name,
        "model_kwargs": dict(mcfg.kwargs),
        "params": sum(p.numel() for p in result.model.parameters()),
        "recipe": args.config,
        "overrides": overrides,
        "train_config": train_cfg.model_dump(mode="json"),
        "runtime": runtime.model_dump(mode="json"),
        "machine": C.machine_info(threads),
        "budget_min": args.budget_min,
        "plan": plan,
        "epochs_planned": epochs,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,  # 1-based, as logged
        "stopped_early": result.stopped_early,
        "minutes": {
            "data": round(data_s / 60, 2),
            "probe": round(probe_s / 60, 2),
            "fit": round(fit_s / 60, 2),
            "eval": round(eval_s / 60, 2),
            "total": round(total_min, 2),
        },
        "cpu_minutes": round(time.process_time() / 60, 2),
        "within_budget": total_min <= args.budget_min,
        "test": metrics,
        "val_best": result.history[result.best_epoch - 1] if result.best_epoch >= 1 else None,
        "target": {
            "tta_accuracy >= 0.69": {
                "value": round(max(best, best_flip), 4),
                "met": max(best, best_flip) >= TARGET_TTA_ACCURACY and total_min <= args.budget_min,
            }
        },
        "run_dir": str(run_dir),
    }


def table(res: dict[str, Any]) -> str:
    lines = [
        f"{res['model']} on FER2013 PrivateTest, {res['epochs_run']} epochs "
        f"(best {res['best_epoch']}), {res['minutes']['total']} min of {res['budget_min']}",
        "",
        "| views | accuracy | balanced acc. | macro-F1 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, m in res["test"].items():
        lines.append(
            f"| {name} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | {m['macro_f1']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    C.emit(res, as_json=args.json, table=table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
