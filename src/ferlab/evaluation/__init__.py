"""Evaluation: batched TTA prediction, metrics with bootstrap CIs, label-set intersection,
soft-voting ensembles, paired comparisons (``compare``) and the numbers of an experiment's
tables (``analysis``, read back from its record and formatted by ferlab.reporting).

Names are imported on first use (as in ``ferlab``), so ``ferlab.evaluation.analysis`` and
``ferlab.evaluation.compare`` (numpy only) import without torch, which prediction needs.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ferlab._lazy import lazy_getattr

_EXPORTS = {
    "ensemble_from_dirs": "ferlab.evaluation.ensemble",
    "ensemble_results": "ferlab.evaluation.ensemble",
    "soft_vote": "ferlab.evaluation.ensemble",
    "Alignment": "ferlab.evaluation.evaluate",
    "EvalResult": "ferlab.evaluation.evaluate",
    "align_labels": "ferlab.evaluation.evaluate",
    "evaluate": "ferlab.evaluation.evaluate",
    "evaluate_split": "ferlab.evaluation.evaluate",
    "flat_metrics": "ferlab.evaluation.evaluate",
    "load_result": "ferlab.evaluation.evaluate",
    "write_predictions": "ferlab.evaluation.evaluate",
    "bootstrap_ci": "ferlab.evaluation.metrics",
    "compute_metrics": "ferlab.evaluation.metrics",
    "confusion_matrix": "ferlab.evaluation.metrics",
    "n_views": "ferlab.evaluation.tta",
    "predict_all": "ferlab.evaluation.tta",
    "tta_views": "ferlab.evaluation.tta",
}

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
    "predict_all",
    "soft_vote",
    "tta_views",
    "write_predictions",
]

if TYPE_CHECKING:
    from ferlab.evaluation.ensemble import ensemble_from_dirs, ensemble_results, soft_vote
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
    from ferlab.evaluation.tta import n_views, predict_all, tta_views


__getattr__ = lazy_getattr("ferlab.evaluation", globals(), _EXPORTS)


class _Package(types.ModuleType):
    """``ferlab.evaluation.evaluate`` names the function, as when every name was imported
    here: importing the submodule of the same name would otherwise bind the module instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "evaluate" and isinstance(value, types.ModuleType):
            value = value.evaluate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
