"""The report's "Tuning" section: what ``ferlab tune`` left in ``tune/`` (no Optuna needed).

These are validation numbers of a study (``tune/study.json``, ``tune/trials.csv``), not results
of the experiment's plan: the section says which study and storage they come from, and a test
score of the tuned configuration is shown only where this plan trained it
(``ferlab run tune/best.yaml``), in the summary above it, read once.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from ferlab.layout import Layout, read_json
from ferlab.record import produced_by_text
from ferlab.record.reader import read_csv_rows
from ferlab.reporting.plots import data_uri

TOP_TRIALS = 10  # rows of the trials table


def _params_text(params: Any) -> str:
    if not isinstance(params, dict):
        return ""
    return ", ".join(
        f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items()
    )


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def tuning_section(layout: Layout, planned_run_dirs: Collection[str]) -> dict[str, Any] | None:
    """The study's summary, its best trials and plots, or None when ``tune/`` has no study.

    ``planned_run_dirs``: the run folders (relative, as in ``plan.json``) this report's plan
    trained; the best trial's folder among them means this report scores the tuned config.
    """
    if not layout.tune_study.is_file():
        return None
    study = read_json(layout.tune_study)
    rows = read_csv_rows(layout.tune_trials) if layout.tune_trials.is_file() else []
    maximize = study.get("direction", "maximize") == "maximize"
    scored = [
        r for r in rows if r.get("state") == "COMPLETE" and _float(r.get("value")) is not None
    ]
    scored.sort(key=lambda r: _float(r["value"]) or 0.0, reverse=maximize)
    best = study.get("best") or None
    in_plan = bool(best and best.get("run_dir") and best["run_dir"] in set(planned_run_dirs))
    trials = []
    for r in scored[:TOP_TRIALS]:
        try:
            params = json.loads(r.get("params") or "{}")
        except json.JSONDecodeError:
            params = {}
        trials.append(
            {
                "number": r.get("number", ""),
                "value": _float(r.get("value")),
                "params": _params_text(params),
                "duration_s": _float(r.get("duration_s")),
                "run_dir": r.get("run_dir", ""),
                "reused": r.get("reused") == "True",
            }
        )
    plots = {k: data_uri(layout.tune_plot(k)) for k in ("history", "intermediate", "importances")}
    return {
        "study": study.get("study", ""),
        "storage": study.get("storage", ""),
        "metric": study.get("metric", ""),
        "direction": study.get("direction", "maximize"),
        "counts": study.get("counts") or {},
        "best": None
        if not best
        else {**best, "params_text": _params_text(best.get("params")), "in_plan": in_plan},
        "best_yaml": layout.relative(layout.tune_best) if layout.tune_best.is_file() else None,
        "written": produced_by_text(study.get("written") or {}),
        "trials": trials,
        "plots": {k: v for k, v in plots.items() if v},
        "notes": list(study.get("notes") or []),
    }
