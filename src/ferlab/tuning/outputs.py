"""What a study leaves in ``tune/``: ``trials.csv``, ``best.yaml``, ``study.json``,
``importances.json`` and the plots, rebuilt from the study so any worker can write them."""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ferlab.config import (
    ExperimentConfig,
    TuneConfig,
)
from ferlab.layout import Layout, atomic_write, write_json
from ferlab.provenance import stamp
from ferlab.reporting import plots
from ferlab.tuning.objective import apply_params
from ferlab.tuning.study import require_optuna

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("ferlab")


TRIALS_COLUMNS = (
    "number",
    "state",
    "value",
    "params",
    "intermediate",
    "duration_s",
    "run_dir",
    "reused",
    "worker",
    "retry_of",
    "error",
)


@dataclass
class TuneResult:
    """What a ``tune`` call left in the study (all workers' trials, not only this call's)."""

    exp_dir: Path
    study_name: str
    storage: str
    trials: list[dict[str, Any]] = field(default_factory=list)  # the rows of trials.csv
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_yaml: Path | None = None
    outputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t["state"] == state)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": json.dumps(t.params, sort_keys=True),
                "intermediate": json.dumps(
                    {str(k): v for k, v in sorted(t.intermediate_values.items())}
                ),
                "duration_s": None if t.duration is None else round(t.duration.total_seconds(), 3),
                "run_dir": t.user_attrs.get("run_dir", ""),
                "reused": t.user_attrs.get("reused", ""),
                "worker": _worker_text(t.user_attrs.get("worker")),
                "retry_of": t.user_attrs.get("retry_of", ""),
                "error": t.user_attrs.get("error", "") if t.state.name == "FAIL" else "",
            }
        )
    return rows


def _worker_text(worker: Any) -> str:
    return f"{worker.get('host')}:{worker.get('pid')}" if isinstance(worker, dict) else ""


def write_trials(layout: Layout, study: optuna.Study) -> list[dict[str, Any]]:
    """``tune/trials.csv``: one row per trial of the study, every worker's (atomic)."""
    rows = trial_rows(study)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TRIALS_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r[k] is None else r[k] for k in TRIALS_COLUMNS})
    atomic_write(layout.tune_trials, buf.getvalue())
    return rows


def write_best(cfg: ExperimentConfig, params: dict[str, Any], path: Path, note: str) -> Path:
    """A complete experiment file with ``params`` applied, loadable by ``ferlab run``."""
    best = apply_params(cfg, params)
    text = yaml.safe_dump(best.model_dump(mode="json", by_alias=True), sort_keys=False)
    return atomic_write(path, note + text)


def write_outputs(
    cfg: ExperimentConfig, layout: Layout, study: optuna.Study, storage_name: str
) -> TuneResult:
    """trials.csv, best.yaml and the plots, from the study (so any worker can rebuild them)."""
    optuna = require_optuna()
    assert cfg.tune is not None
    rows = write_trials(layout, study)
    result = TuneResult(
        exp_dir=layout.root, study_name=study.study_name, storage=storage_name, trials=rows
    )
    result.outputs.append(layout.tune_trials)
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if completed:
        best = study.best_trial
        result.best_number, result.best_value = best.number, best.value
        result.best_params = dict(best.params)
        note = (
            f"# ferlab tune: the best of study {study.study_name!r} (trial {best.number}, "
            f"{cfg.tune.metric} {best.value:.4f} on the validation split).\n"
            f"# Its test score comes only from: ferlab run {layout.tune_best} --out {layout.root}\n"
        )
        result.best_yaml = write_best(cfg, result.best_params, layout.tune_best, note)
        result.outputs.append(layout.tune_best)
    result.outputs += _plot_history(layout, rows, cfg.tune)
    result.outputs += _plot_intermediate(layout, rows, cfg.tune)
    if len(completed) >= 2:
        try:
            with warnings.catch_warnings():  # "importances will be equal": a tiny study
                warnings.simplefilter("ignore", UserWarning)
                imp = optuna.importance.get_param_importances(study)
        except Exception as e:  # too few distinct values, a single-valued space...
            result.notes.append(f"parameter importances skipped: {type(e).__name__}: {e}")
        else:
            write_json(layout.tune_importances, {k: float(v) for k, v in imp.items()})
            result.outputs += [layout.tune_importances, *_plot_importances(layout, imp)]
    else:
        result.notes.append("parameter importances skipped: they need at least 2 completed trials")
    best_run = next((r["run_dir"] for r in rows if r["number"] == result.best_number), "")
    write_json(
        layout.tune_study,
        {
            "study": study.study_name,
            "storage": storage_name,
            "metric": cfg.tune.metric,
            "direction": cfg.tune.direction or "maximize",
            "counts": {s: result.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
            "best": None
            if result.best_number is None
            else {
                "number": result.best_number,
                "value": result.best_value,
                "params": result.best_params,
                "run_dir": best_run,
            },
            "written": stamp("train"),
            "notes": result.notes,
        },
    )
    result.outputs.append(layout.tune_study)
    for n in result.notes:
        log.info("%s", n)
    return result


@contextmanager
def _figure(path: Path, figsize: tuple[float, float]) -> Iterator[Any]:
    """A matplotlib figure saved to ``path`` and closed by the report's one PNG writer."""
    fig, ax = plots.plt.subplots(figsize=figsize)
    try:
        yield ax
    except BaseException:
        plots.plt.close(fig)
        raise
    plots.save_figure(fig, path)


def _plot_history(layout: Layout, rows: list[dict[str, Any]], tune_cfg: TuneConfig) -> list[Path]:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    with _figure(layout.tune_plot("history"), figsize=(6, 4)) as ax:
        xs = [r["number"] for r in done]
        ys = [r["value"] for r in done]
        ax.scatter(xs, ys, s=18, label="completed trial")
        best: list[float] = []
        for y in ys:
            best.append(y if not best else (max if tune_cfg.maximize else min)(best[-1], y))
        if xs:
            ax.step(xs, best, where="post", color="C3", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(tune_cfg.metric)
        ax.set_title("Optimisation history")
        ax.legend(loc="best")
    return [layout.tune_plot("history")]


def _plot_intermediate(
    layout: Layout, rows: list[dict[str, Any]], tune_cfg: TuneConfig
) -> list[Path]:
    colours = {"COMPLETE": "C0", "PRUNED": "C1", "FAIL": "C3"}
    with _figure(layout.tune_plot("intermediate"), figsize=(6, 4)) as ax:
        seen: set[str] = set()
        for r in rows:
            inter = json.loads(r["intermediate"]) if isinstance(r["intermediate"], str) else {}
            if not inter:
                continue
            steps = sorted(int(k) for k in inter)
            state = r["state"]
            ax.plot(
                steps,
                [inter[str(k)] for k in steps],
                marker="o",
                ms=3,
                color=colours.get(state, "C7"),
                alpha=0.8,
                label=state.lower() if state not in seen else None,
            )
            seen.add(state)
        ax.set_xlabel("epoch")
        ax.set_ylabel(tune_cfg.metric)
        ax.set_title("Intermediate values: pruned vs completed trials")
        if seen:
            ax.legend(loc="best")
    return [layout.tune_plot("intermediate")]


def _plot_importances(layout: Layout, imp: dict[str, float]) -> list[Path]:
    names = list(imp)[::-1]
    with _figure(layout.tune_plot("importances"), figsize=(6, 1 + 0.4 * len(names))) as ax:
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance (Optuna's default evaluator)")
        ax.set_title("Parameter importances")
    return [layout.tune_plot("importances")]
