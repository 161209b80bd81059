"""Evaluation: batched TTA prediction, metrics with bootstrap CIs, label-set intersection and
soft-voting ensembles (the cross-dataset matrix is read back from files by ferlab.reporting)."""

from ferlab.evaluation.ensemble import (
    ENSEMBLE_NAME,
    ensemble_from_files,
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
    write_metrics_json,
    write_predictions,
    write_predictions_csv,
)
from ferlab.evaluation.metrics import bootstrap_ci, compute_metrics, confusion_matrix
from ferlab.evaluation.tta import (
    auto_device,
    n_views,
    predict_probs,
    predict_views,
    predict_with_timing,
    tta_views,
    view_names,
)

__all__ = [
    "ENSEMBLE_NAME",
    "Alignment",
    "EvalResult",
    "align_labels",
    "auto_device",
    "bootstrap_ci",
    "compute_metrics",
    "confusion_matrix",
    "ensemble_from_files",
    "ensemble_results",
    "evaluate",
    "evaluate_split",
    "flat_metrics",
    "load_result",
    "n_views",
    "predict_probs",
    "predict_views",
    "predict_with_timing",
    "soft_vote",
    "tta_views",
    "view_names",
    "write_metrics_json",
    "write_predictions",
    "write_predictions_csv",
]
