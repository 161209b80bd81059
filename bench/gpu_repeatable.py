"""Does a model get the same score after training in the same process as in a fresh one?

``ferlab run`` trains and then evaluates in one process; ``ferlab evaluate`` scores in a fresh
one. On CUDA, Lightning's ``Trainer(benchmark=True)`` (ferlab's on a GPU) leaves cuDNN's
autotuner on after training, so an evaluation after training may run other convolution
algorithms than a fresh process. ``ferlab.device.repeatable_inference`` turns the autotuner
off (and deterministic algorithms on) for every inference pass. This script scores one model
on one split with its TTA, in one process, three times:

fresh           before anything trained (``ferlab evaluate``'s situation)
after_training  after ``ferlab.train`` ran a tiny fit in this process (``ferlab run``'s)
without_block   the same, with ``repeatable_inference`` replaced by a block that does nothing
                (what ferlab did before it existed): the contrast

and reports each one's correct count, accuracy and confusion matrix, whether cuDNN's autotuner
was on after the fit, and whether each pass equals ``fresh``. On a CPU the three are the same
by construction (the wiring check).

``--run EXP`` checks a whole ``ferlab run`` instead: its evaluation of a model on its own test
set, written in the process that trained it (on CUDA, a model trained channels-last and put
back, ``ferlab.device.channels_last_for_training``), against ``ferlab evaluate`` of the same
weights in this fresh process: accuracy, log-loss and confusion matrix with the run's TTA.

    python bench/gpu_repeatable.py                      # the shipped model on FER2013 PrivateTest
    python bench/gpu_repeatable.py --weights RUN --data synthetic:wild --json
    python bench/gpu_repeatable.py --run runs/EXP --data synthetic:lab
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import _common as C


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--weights", default="default", help="a run folder, or default")
    ap.add_argument("--data", default=None, help="dataset spec (default: FER2013 beside the repo)")
    ap.add_argument("--split", default="test", help="the split to score (default: test)")
    ap.add_argument("--cache-dir", default=None, help="dataset cache (default: a temp folder)")
    ap.add_argument("--run", default=None, help="an experiment folder ferlab run wrote")
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    return ap.parse_args(argv)


def check_run(args: argparse.Namespace) -> int:
    """The run's own TTA evaluation (written after training, in its process) against a fresh
    ``ferlab evaluate`` of its weights here."""
    import json
    from pathlib import Path

    import torch

    import ferlab
    from ferlab.evaluation import flat_metrics
    from predict_agreement import planned_eval

    eval_dir, run_dir = planned_eval(Path(args.run), None)
    want = flat_metrics(json.loads((eval_dir / "metrics.json").read_text()), use_tta=True)
    with tempfile.TemporaryDirectory(prefix="ferlab-repeatable-") as tmp:
        got = ferlab.evaluate(
            run_dir, args.data, tta=True, cache_dir=args.cache_dir or f"{tmp}/cache", bootstrap=0
        ).to_dict()
    keys = ("n", "accuracy", "ece", "ece_calibrated", "confusion_matrix")
    same = {k: got[k] == want[k] for k in keys}
    result = {
        "benchmark": "gpu_repeatable",
        "date": C.now_iso(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "run": str(run_dir),
        "in_run": {k: want[k] for k in keys[:4]},
        "fresh": {k: got[k] for k in keys[:4]},
        "same": same,
    }
    C.emit(result, as_json=args.json)
    return 0 if all(same.values()) else 1


def score(args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    import ferlab

    r = ferlab.evaluate(
        args.weights, args.data, split=args.split, tta=True, cache_dir=cache_dir, bootstrap=0
    )
    return {
        "n": r.n,
        "correct": round(r.accuracy * r.n),
        "accuracy": round(100 * r.accuracy, 2),
        "confusion_matrix": r.confusion_matrix,
    }


def tiny_fit(tmp: str) -> None:
    """A real fit in this process: ferlab's trainer, on its synthetic data, one short epoch."""
    import ferlab

    ferlab.train(
        "synthetic:lab",
        out=f"{tmp}/fit",
        progress=False,
        console=False,
        overrides=[
            "train.epochs=1",
            "eval.bootstrap=0",
            f"data.cache_dir={tmp}/cache",
            "datasets.0.options={n_train: 70, n_val: 35, n_test: 35}",
        ],
    )


@contextlib.contextmanager
def _no_block(device: Any) -> Iterator[None]:
    yield


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run is not None:
        if args.data is None:
            raise SystemExit("--run needs --data: the dataset spec the run was trained on")
        return check_run(args)
    if args.data is None:
        args.data = f"fer2013:{C.fer2013_path(None)}"
    import torch

    import ferlab.device

    cudnn = torch.backends.cudnn
    with tempfile.TemporaryDirectory(prefix="ferlab-repeatable-") as tmp:
        cache = args.cache_dir or f"{tmp}/cache"
        C.log(f"fresh: {args.weights} on {args.data} ({args.split}, TTA)")
        passes = {"fresh": score(args, cache)}
        C.log("a tiny fit in this process")
        tiny_fit(tmp)
        autotuner_after_fit = bool(cudnn.benchmark)
        C.log(f"after training (cudnn.benchmark {autotuner_after_fit})")
        passes["after_training"] = score(args, cache)
        real = ferlab.device.repeatable_inference
        ferlab.device.repeatable_inference = _no_block  # type: ignore[assignment]
        try:
            C.log("after training, without repeatable_inference")
            passes["without_block"] = score(args, cache)
        finally:
            ferlab.device.repeatable_inference = real  # type: ignore[assignment]
    ref = passes["fresh"]
    for p in passes.values():
        p["same_as_fresh"] = p["correct"] == ref["correct"] and (
            p["confusion_matrix"] == ref["confusion_matrix"]
        )
    result = {
        "benchmark": "gpu_repeatable",
        "date": C.now_iso(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "weights": args.weights,
        "data": args.data,
        "split": args.split,
        "cudnn_benchmark_after_fit": autotuner_after_fit,
        "passes": passes,
    }
    rows = [
        f"| {k} | {p['correct']} / {p['n']} | {p['accuracy']:.2f}% | {p['same_as_fresh']} |"
        for k, p in passes.items()
    ]
    table = "\n".join(
        [
            "| pass | correct | accuracy (TTA) | same as fresh |",
            "| --- | ---: | ---: | --- |",
            *rows,
        ]
    )
    C.emit(result, as_json=args.json, table=table)
    return 0 if passes["after_training"]["same_as_fresh"] else 1


if __name__ == "__main__":
    sys.exit(main())
