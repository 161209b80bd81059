"""``ferlab predict``: classify every face in photos, folders and videos.

    ferlab predict --weights RUN_OR_FILE INPUT... [--detector haar|mtcnn|none] [--out DIR] ...

The work is in submodules: ``run`` (``predict``, ``iter_predictions``, ``PredictSummary``),
``engine`` (the streaming read / detect / crop / classify loop), ``backends`` (PyTorch weights
or an exported ``.onnx``), ``media`` (inputs, images, video frames) and ``outputs`` (rows,
per-video emotion shares, annotated copies).

Kept light at import time: detectors, OpenCV and torch are imported inside the functions that
use them. The command line (its options and their parsing) is ``ferlab.cli``'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferlab.predict.run import PredictSummary


def predict(weights: Any, inputs: Any, **options: Any) -> PredictSummary:
    """Find and classify every face in ``inputs``; see ``ferlab.predict.run.predict``."""
    from ferlab.predict.run import predict as _predict  # lazy: PIL, jinja2, torch

    return _predict(weights, inputs, **options)


def iter_predictions(weights: Any, inputs: Any, **options: Any) -> Any:
    """The rows of ``predict`` one by one; see ``ferlab.predict.run.iter_predictions``."""
    from ferlab.predict.run import iter_predictions as _iter  # lazy: PIL, jinja2, torch

    return _iter(weights, inputs, **options)
