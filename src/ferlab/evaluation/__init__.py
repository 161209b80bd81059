"""Evaluation: batched TTA prediction, metrics with bootstrap CIs, label-set intersection and
soft-voting ensembles (the cross-dataset matrix is read back from files by ferlab.reporting)."""

from ferlab.evaluation.ensemble import (
    ensemble_from_dirs,
    ensemble_results,
    soft_vote,
)
from ferlab.evaluation.evaluate import (
    Alignment,
    EvalResult,
    align_labels,
    evaluate,
    evaluate_split,
    flat_metrics,
    load_result,
    write_predictions,
)
from ferlab.evaluation.metrics import bootstrap_ci, compute_metrics, confusion_matrix
from ferlab.evaluation.tta import (
    n_views,
    predict_probs,
    tta_views,
)

__all__ = [
    "Alignment",
    "EvalResult",
    "align_labels",
    "bootstrap_ci",
    "compute_metrics",
    "confusion_matrix",
    "ensemble_from_dirs",
    "ensemble_results",
    "evaluate",
    "evaluate_split",
    "flat_metrics",
    "load_result",
    "n_views",
    "predict_probs",
    "soft_vote",
    "tta_views",
    "write_predictions",
]
