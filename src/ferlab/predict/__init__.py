"""``ferlab predict``: classify every face in photos, folders and videos.

    ferlab predict --weights RUN_OR_FILE INPUT... [--detector haar|mtcnn|none] [--out DIR] ...

The work is in submodules: ``run`` (``predict``, ``iter_predictions``, ``PredictSummary``),
``engine`` (the streaming read / detect / crop / classify loop), ``backends`` (PyTorch weights
or an exported ``.onnx``), ``media`` (inputs, images, video frames) and ``outputs`` (rows,
per-video emotion shares, annotated copies).

Kept light at import time (the CLI imports it to build its parser): detectors, OpenCV and torch
are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferlab.predict.run import PredictSummary


def predict(weights: Any, inputs: Any, **options: Any) -> PredictSummary:
    """Find and classify every face in ``inputs``; see ``ferlab.predict.run.predict``."""
    from ferlab.predict.run import predict as _predict

    return _predict(weights, inputs, **options)


def iter_predictions(weights: Any, inputs: Any, **options: Any) -> Any:
    """The rows of ``predict`` one by one; see ``ferlab.predict.run.iter_predictions``."""
    from ferlab.predict.run import iter_predictions as _iter

    return _iter(weights, inputs, **options)


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
    """The ``ferlab predict`` arguments (the parser itself is built by ``ferlab.cli``)."""
    p.add_argument(
        "--weights",
        required=True,
        metavar="RUN_OR_FILE",
        help="run folder (or an experiment folder holding one run), its weights.safetensors, "
        "or an .onnx file written by ferlab export",
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
        "run's data.face_crop detector, haar when it trained without one)",
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
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (the default when stderr is not a terminal)",
    )


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"ferlab: warning: {message}", file=sys.stderr)


def main_from_args(args: argparse.Namespace) -> int:
    """Run ``ferlab predict``; 0 when it ran (even with some unreadable files)."""
    from ferlab.predict.run import PredictWarning, check_options
    from ferlab.predict.run import predict as _predict

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
