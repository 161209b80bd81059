"""The ``ferlab`` command: a thin layer over functions a user can import.

ferlab run [EXPERIMENT] [--data NAME:PATH ...] [--set key=value ...] [--seeds K] [--out DIR] [--force]
ferlab train --data NAME:PATH --model NAME [--set key=value ...]
ferlab evaluate --weights RUN_OR_FILE --data NAME:PATH [--split test|val|train|all] [--tta] [--json]
ferlab data inspect NAME:PATH [--json] [--out DIR]
ferlab tune EXPERIMENT [--trials N] [--timeout MIN] [--storage URL] [--study NAME] [--retry-failed N]
ferlab predict --weights RUN_OR_FILE INPUT... [--detector haar|mtcnn|none] [--out DIR] ...
ferlab export --weights RUN_OR_FILE --format onnx [--opset N] [--dynamic-batch] [--out FILE]
ferlab report DIR
ferlab models [PATTERN]    ferlab datasets
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferlab import __version__
from ferlab.config import ConfigError, load_config
from ferlab.data.base import DatasetError, list_datasets, parse_spec
from ferlab.defaults import CACHE_DIR
from ferlab.export import (  # light: torch and onnx load on use
    INPUT_NAME,
    MIN_OPSET,
    ONNX_NAME,
    export_onnx,
    sidecar_path,
)
from ferlab.labels import UnknownLabelError
from ferlab.layout import ReportInputError
from ferlab.overrides import parse_override
from ferlab.record import ExperimentLockedError, NotWritableError

EXIT_BAD_INPUT = 2
EXIT_FAILED_PAIRS = 3


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=5 --set models.0.train.batch_size=32 "
        "(values are parsed as YAML; repeatable)",
    )


def _add_output_options(p: argparse.ArgumentParser, default_out: str, force: str = "") -> None:
    """--out, --force (when the command retrains) and --no-progress."""
    p.add_argument("--out", help=f"experiment folder (default: {default_out})")
    if force:
        p.add_argument("--force", action="store_true", help=force)
    _add_no_progress(p)


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (the default when the output is not a terminal)",
    )


def _add_adapter_option(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"adapter option, e.g. --option margin=0.1{note}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferlab",
        description="Train, evaluate and compare facial-emotion-recognition models across datasets.",
    )
    parser.add_argument("--version", action="version", version=f"ferlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="train every model on every dataset, evaluate, cross-evaluate, report",
        description="Run an experiment file: every (dataset, model) pair is trained (or reused "
        "from the run cache), evaluated with and without TTA on its own test split and on every "
        "other dataset's, then ensembles and the HTML report. With no file, runs the built-in "
        "demo (configs/default.yaml on synthetic data).",
    )
    p.add_argument(
        "experiment",
        nargs="?",
        default=None,
        help="experiment YAML file, or a shipped name: default, fer2013_cpu, seed_gpu, tune_demo",
    )
    _add_set(p)
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME:PATH",
        help="point the file's dataset NAME (its label, else its adapter) at PATH, e.g. "
        "ferlab run fer2013_cpu --data fer2013:/data/fer2013; a NAME the file lacks is added "
        "(repeatable)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="K",
        help="train every pair with K seeds: seed, seed+1, ..., seed+K-1 (seed from the file or "
        "--set seed=N; replaces the file's seeds: list); the report gives mean and standard "
        "deviation across seeds beside one run's bootstrap interval",
    )
    _add_output_options(p, "<output_dir>/<name>", force="retrain and re-evaluate everything")

    p = sub.add_parser(
        "train",
        help="train one model on one dataset (with evaluation on its test split)",
        description="Train one model on one dataset with the default training settings, early "
        "stopping on the validation split, and save weights (safetensors + meta.json). Running "
        "the same command again returns at once from the run cache; a changed setting retrains.",
    )
    p.add_argument("--data", required=True, metavar="NAME:PATH", help="e.g. fer2013:/data/fer2013")
    p.add_argument("--model", default=None, help="model name (default: the compact CPU net)")
    p.add_argument("--config", default=None, help="base experiment file for the other settings")
    _add_set(p)
    _add_output_options(p, "runs/train_<dataset>", force="retrain even if a matching run exists")

    p = sub.add_parser(
        "evaluate",
        help="evaluate saved weights on any dataset",
        description="Evaluate saved weights (a run folder or a weights.safetensors with its "
        "meta.json) on a dataset's split. On the dataset a run was trained on, the run's own "
        "split settings and adapter options are used, so 'test' is its held-out split; scoring "
        "images the run trained or validated on is refused unless --allow-overlap. Classes "
        "the model and dataset do not share are left out and listed.",
    )
    p.add_argument(
        "--weights", required=True, help="run folder, weights file, or default (ferlab's model)"
    )
    p.add_argument("--data", required=True, metavar="NAME:PATH")
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="split to score; 'all' scores every image of the dataset (an external test set)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="also score with test-time augmentation: the run's own views (its eval.tta)",
    )
    p.add_argument(
        "--tta-crops",
        type=int,
        default=None,
        choices=[0, 5, 10],
        help="instead of the run's views: the flip and N crops (0, 5 or 10)",
    )
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score images the run trained or validated on anyway (the output records it)",
    )
    _add_adapter_option(p, " (added to the run's recorded options)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cache-dir", default=CACHE_DIR)
    p.add_argument("--batch-size", type=int, default=256)

    p = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    q = dsub.add_parser(
        "inspect",
        help="counts, imbalance, bad files and duplicates of a dataset",
        description="Index a dataset, decode it once into the cache, and report counts per "
        "split and class, class imbalance, bad files, and exact duplicates (within and across "
        "splits and classes). Writes a class-distribution PNG.",
    )
    q.add_argument("spec", metavar="NAME:PATH", help="e.g. fer2013:../shared/datasets/fer2013")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--out", default=None, help="folder for the PNG and JSON (default: none)")
    q.add_argument("--cache-dir", default=CACHE_DIR)
    q.add_argument("--no-decode", action="store_true", help="skip decoding (no image checks)")
    q.add_argument(
        "--on-bad-file",
        choices=["skip", "error"],
        default="skip",
        help="skip: list bad files in the report (default); error: stop with the list",
    )
    _add_adapter_option(q)

    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Optuna over the experiment's tune: space",
        description="Tune one (dataset, model) pair of an experiment with Optuna: each trial "
        "applies sampled values of the tune: space (dotted config paths, as --set) and trains "
        "through the run cache, scored on the validation split (the test split is never read). "
        "The study is kept in <experiment>/tune/journal.log (or --storage), so rerunning "
        "continues it up to the trial count and several workers can share it. Writes "
        "tune/trials.csv, tune/best.yaml (for ferlab run) and plots.",
    )
    p.add_argument(
        "experiment", help="experiment YAML file with a tune: section, or the shipped tune_demo"
    )
    p.add_argument("--trials", type=int, default=None, help="total trials (default tune.trials)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="MIN",
        help="start no trial after MIN minutes",
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="RDB URL shared by workers on many machines (sqlite:///tune.db, "
        "postgresql+psycopg://...); default: the journal file in <experiment>/tune/",
    )
    p.add_argument("--study", default=None, help="study name (default: the experiment's name)")
    p.add_argument(
        "--retry-failed",
        type=int,
        default=0,
        metavar="N",
        help="run a trial whose worker died (kill -9, lost machine) again, up to N times",
    )
    # Refused with a message (not argparse's "unrecognized arguments"): see cmd_tune.
    p.add_argument("--seeds", type=int, default=None, help=argparse.SUPPRESS)
    _add_set(p)
    _add_output_options(p, "<output_dir>/<name>")

    add_predict_arguments(
        sub.add_parser(
            "predict",
            help="classify the faces in photos, folders and videos with trained weights",
            description="Find every face in images, folders (recursive) and videos, classify "
            "it with trained weights (a run folder, a weights file or an exported .onnx file) "
            "and write one row per face (JSON lines or CSV), optionally annotated copies.",
        )
    )
    add_export_arguments(
        sub.add_parser(
            "export",
            help="export trained weights to ONNX, with their metadata beside them",
            description="Export a run's weights to ONNX (normalisation and calibrated softmax "
            "inside the graph) and write its metadata (labels, input size, channels, mean/std, "
            "temperature) beside it.",
        )
    )

    p = sub.add_parser(
        "report",
        help="rebuild the summary tables, plots and report.html of an experiment folder",
        description="Rebuild summary.csv/.md, the cross-dataset heatmap, the plots and "
        "report.html from the files of an experiment folder, without retraining.",
    )
    p.add_argument("dir", help="experiment folder")

    p = sub.add_parser("models", help="list model names", description="List model names.")
    p.add_argument("pattern", nargs="?", default="ferlab_*", help="glob, e.g. 'convnext*' or '*'")

    sub.add_parser("datasets", help="list dataset adapters", description="List dataset adapters.")
    return parser


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in items:
        path, value = parse_override(item)
        opts[".".join(path)] = value
    return opts


def cmd_run(args: argparse.Namespace) -> int:
    from ferlab.api import run  # lazy: PIL

    result = run(
        args.experiment,
        overrides=args.overrides,
        seeds=args.seeds,
        data=args.data,
        out=args.out,
        force=args.force,
        progress=False if args.no_progress else None,
    )
    return EXIT_FAILED_PAIRS if result.failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    from ferlab.api import train  # lazy: PIL

    result = train(
        args.data,
        args.model,
        config=args.config,
        overrides=args.overrides,
        out=args.out,
        force=args.force,
        progress=False if args.no_progress else None,
    )
    for p in result.pairs:
        where = result.run_dir_of(p.dataset, p.model)
        print(f"{p.dataset} / {p.model}: {p.status}  weights: {where}")
    return EXIT_FAILED_PAIRS if result.failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ferlab.api import evaluate  # lazy: PIL

    result = evaluate(
        args.weights,
        args.data,
        split=args.split,
        tta=args.tta,
        tta_crops=args.tta_crops,
        options=_parse_options(args.option),
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        allow_overlap=args.allow_overlap,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{args.weights} on {args.data} ({args.split}, TTA {'on' if args.tta else 'off'})")
    print(result.format())
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from ferlab.data.inspect import (  # lazy: PIL
        format_inspection,
        inspect_dataset,
        write_inspection_outputs,
    )

    name, path = parse_spec(args.spec)
    report = inspect_dataset(
        name,
        path,
        options=_parse_options(args.option),
        cache_dir=args.cache_dir,
        with_cache=not args.no_decode,
        on_bad_file=args.on_bad_file,
    )
    written = write_inspection_outputs(report, Path(args.out)) if args.out else []
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_inspection(report))
        for w in written:
            print(f"wrote {w}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ferlab.tuning import tune  # lazy: PIL, lightning, matplotlib, torch, torchvision

    if args.seeds is not None:
        raise ConfigError(
            "ferlab tune does not take --seeds: each trial trains once, with the experiment's "
            "seed, and is scored on the validation split. Tune, then measure the spread over "
            "seeds with ferlab run <experiment>/tune/best.yaml --seeds K."
        )
    overrides = list(args.overrides) + (["runtime.progress=false"] if args.no_progress else [])
    cfg = load_config(args.experiment, overrides)
    if len(cfg.seed_list) > 1 or cfg.seed_list != [cfg.seed]:
        print(
            f"ferlab tune: note: seeds {cfg.seed_list} are ignored here; every trial trains "
            f"once with seed {cfg.seed}. tune/best.yaml keeps them, so ferlab run on it trains "
            "the best configuration with each seed.",
            file=sys.stderr,
        )
    result = tune(
        cfg,
        trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        study=args.study,
        out=args.out,
        retries=args.retry_failed,
    )
    print(
        f"study {result.study_name!r}: {result.count('COMPLETE')} complete, "
        f"{result.count('PRUNED')} pruned, {result.count('FAIL')} failed"
    )
    if result.best_yaml is not None:
        print(
            f"best: trial {result.best_number}, value {result.best_value:.4f}, {result.best_params}"
        )
        print(
            f"best configuration: {result.best_yaml} (its test score: ferlab run "
            f"{result.best_yaml} --out {result.exp_dir})"
        )
    return 0


# -- predict and export ----------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2, got {value}")
    return value


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """The ``ferlab predict`` arguments."""
    p.add_argument(
        "--weights",
        default="default",
        metavar="RUN_OR_FILE",
        help="run folder (or an experiment folder holding one run), its weights.safetensors, "
        "an .onnx file written by ferlab export, or default: the model shipped with ferlab "
        "(the default)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (recursive; OS litter ignored) and video files "
        "(mp4, avi, mov, mkv, ...)",
    )
    p.add_argument(
        "--detector",
        choices=["haar", "mtcnn", "none"],
        default=None,
        help="face detector; none: each image is one face (pre-cropped faces) (default: the "
        "run's data.face_crop detector; for a run trained without one, mtcnn where "
        "facenet-pytorch is installed, else haar)",
    )
    p.add_argument(
        "--min-face",
        type=_positive_int,
        default=20,
        metavar="PX",
        help="smallest face side to detect, in pixels (default: 20)",
    )
    p.add_argument(
        "--margin",
        type=_margin,
        default=None,
        metavar="F",
        help="grow each face box by this share of its size on each side (default: the run's "
        "data.face_margin, 0 for a run trained without data.face_crop: tight, as FER2013)",
    )
    p.add_argument(
        "--align",
        action="store_true",
        help="rotate each face so the eyes are level before cropping (needs mtcnn's landmarks)",
    )
    p.add_argument(
        "--frame-step",
        type=_positive_int,
        default=1,
        metavar="N",
        help="read every N-th video frame (default: 1, every frame)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="average the probabilities of the views the run's evaluation used (its eval.tta; "
        "the mirror image for weights that do not record it), as ferlab evaluate --tta does",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="B",
        help="faces classified per batch (default: 64)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for predictions.jsonl/.csv, summary.json, per-video emotion shares and "
        "annotated copies (default: JSON lines on stdout)",
    )
    p.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default="jsonl",
        help="row format in --out (default: jsonl)",
    )
    p.add_argument(
        "--annotate",
        action="store_true",
        help="write copies of the images and videos with boxes and labels drawn (needs --out)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default=None,
        help="torch (default for weights), or onnxruntime (default for an .onnx file; with a "
        "run folder it uses <run>/model.onnx from ferlab export)",
    )
    _add_no_progress(p)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"ferlab: warning: {message}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``ferlab predict``; 0 when it ran (even with some unreadable files)."""
    from ferlab.predict.run import PredictWarning, check_options  # lazy: PIL, jinja2, torch
    from ferlab.predict.run import predict as _predict  # lazy: PIL, jinja2, torch

    check_options(
        detector=args.detector,
        min_face=args.min_face,
        margin=args.margin,
        frame_step=args.frame_step,
        batch_size=args.batch_size,
        fmt=args.format,
        out=args.out,
        annotate=args.annotate,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always", PredictWarning)
        warnings.showwarning = _show_warning  # restored by catch_warnings
        summary = _predict(
            args.weights,
            args.inputs,
            detector=args.detector,
            min_face=args.min_face,
            margin=args.margin,
            align=args.align,
            frame_step=args.frame_step,
            tta=args.tta,
            batch_size=args.batch_size,
            out=args.out,
            format=args.format,
            annotate=args.annotate,
            backend=args.backend,
            progress=False if args.no_progress else None,
        )
    # With no --out the rows are on stdout: the summary goes to stderr, out of their way.
    print(summary.format(), file=sys.stderr if args.out is None else sys.stdout)
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The ``ferlab export`` arguments."""
    p.add_argument(
        "--weights", required=True, help="run folder, weights file, or default (ferlab's model)"
    )
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        metavar="N",
        help=f"ONNX operator set (>= {MIN_OPSET}; default: the exporter's)",
    )
    p.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="accept any batch size (default: batch size 1 only)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help=f"the .onnx file to write (default: <run folder>/{ONNX_NAME}); its metadata goes "
        "beside it as <same name>.json",
    )


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``ferlab export`` from parsed arguments; returns the exit code."""
    out = export_onnx(
        args.weights, out=args.out, opset=args.opset, dynamic_batch=bool(args.dynamic_batch)
    )
    sidecar = sidecar_path(out)
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    batch = "any batch size" if meta["dynamic_batch"] else "batch size 1"
    print(
        f"wrote {out} (opset {meta['opset']}, {batch}, input {INPUT_NAME} "
        f"{meta['input']['shape']}, temperature {meta['temperature']:.4g}) and {sidecar}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ferlab.evaluation.analysis import collect_summary  # lazy: numpy, not for --help
    from ferlab.report import build_report  # lazy: matplotlib
    from ferlab.reporting import format_console_table  # lazy: matplotlib

    exp = Path(args.dir)
    if not exp.is_dir():
        raise ConfigError(f"Experiment folder {str(exp)!r} does not exist.")
    path = build_report(exp)  # from the recorded plan: the same report the run wrote
    print(format_console_table(collect_summary(exp)))
    print(f"Report: {path.resolve()}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ferlab.models import list_models  # lazy: torch

    for name in list_models(args.pattern):
        print(name)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    for name in list_datasets():
        print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "data" and args.data_command is None:
        parser.parse_args(["data", "--help"])
    handlers = {
        "run": cmd_run,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "data": cmd_data_inspect,
        "tune": cmd_tune,
        "predict": cmd_predict,
        "export": cmd_export,
        "report": cmd_report,
        "models": cmd_models,
        "datasets": cmd_datasets,
    }
    try:
        return handlers[args.command](args)
    except _user_errors() as e:  # evaluated only when something was raised: no import cost
        print(f"ferlab: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _user_errors() -> tuple[type[BaseException], ...]:
    """Bad input and refused situations: one ``ferlab: error:`` line, exit code 2."""
    from ferlab.models.errors import WeightsError  # lazy: torch

    return (
        ConfigError,
        DatasetError,
        UnknownLabelError,
        ReportInputError,
        WeightsError,
        ExperimentLockedError,
        NotWritableError,
        FileNotFoundError,
    )


if __name__ == "__main__":
    sys.exit(main())
