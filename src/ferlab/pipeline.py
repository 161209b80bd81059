"""The experiment runner behind ``ferlab run``: plan, train, evaluate, ensembles, report.

A run first loads (and so validates) every dataset, then records its plan in ``plan.json``:
every (train dataset, model) pair with its run key, every (pair, test set) evaluation with
its evaluation key, and the ensembles; with several training seeds (``seeds:``) each pair and
ensemble once per seed, each seed's evaluations in their own folders. Training and evaluation
then fill exactly the planned
folders, each result is written to files first, and the summary, cross-dataset matrix and
HTML report are read back from the planned entries only (``ferlab.record``), so a report can
be rebuilt without retraining and never shows a number this plan did not produce.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferlab.config import ExperimentConfig, ModelConfig, check_names
from ferlab.data.base import DatasetError
from ferlab.evaluation.analysis import collect_summary
from ferlab.layout import WEIGHTS, Layout
from ferlab.record import (
    EvalStatus,
    PairStatus,
    Plan,
    PlannedPair,
    experiment_lock,
    produced_by_text,
    write_plan,
    write_status,
)
from ferlab.record.planning import (
    Entry,
    drop_stale_evaluations,
    make_plan,
    model_geometry,
    test_entries,
)
from ferlab.service.fitting import fit_or_reuse
from ferlab.service.outputs import write_data_outputs, write_leakage
from ferlab.service.scoring import eval_failed, evaluate_planned, run_ensemble
from ferlab.service.session import (
    check_dataset_paths,
    check_output_folders,
    experiment_dir,
    experiment_logging,
    record_start,
    set_threads,
)
from ferlab.service.store import DataStore, check_inputs

log = logging.getLogger("ferlab")


@dataclass
class ExperimentResult:
    """What a run left: its folder, plan, one status per planned pair, the report and the
    summary rows; ``run_dir``/``weights`` name the trained pair of a one-pair run."""

    exp_dir: Path
    plan: Plan | None = None
    pairs: list[PairStatus] = field(default_factory=list)
    report: Path | None = None
    summary_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[PairStatus]:
        return [p for p in self.pairs if p.status == "failed"]

    @property
    def run_dir(self) -> Path:
        """The run folder (weights, ``meta.json``, history) of the only trained pair, as
        ``ferlab.train`` makes; with several pairs use ``run_dir_of(dataset, model)``."""
        trained = [p for p in self.pairs if p.run_dir and p.status in ("trained", "reused")]
        if len(trained) != 1:
            raise ValueError(
                f"run_dir needs exactly one trained pair; this experiment has {len(trained)}: "
                "use run_dir_of(dataset, model)."
            )
        return Layout(self.exp_dir).resolve(str(trained[0].run_dir))

    @property
    def weights(self) -> Path:
        """The weights file (safetensors) of the only trained pair; ``meta.json`` is beside it."""
        return self.run_dir / WEIGHTS

    def run_dir_of(self, dataset: str, model: str, seed: int | None = None) -> Path | None:
        """The run folder of a trained pair (None for failed pairs and ensembles); with several
        training seeds, of ``seed`` (default: the first seed)."""
        for p in self.pairs:
            if (p.dataset, p.model) != (dataset, model) or not p.run_dir:
                continue
            if seed is None or p.seed == seed:
                return Layout(self.exp_dir).resolve(p.run_dir)
        return None


def run_experiment(
    cfg: ExperimentConfig,
    *,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    console: bool = True,
    on_pair_done: Callable[[PairStatus], None] | None = None,
) -> ExperimentResult:
    """Plan, train and evaluate every (dataset, model) pair, then ensembles and the report.

    ``progress`` overrides ``cfg.runtime.progress``; ``force`` retrains and re-evaluates.
    """
    from ferlab.report import build_report  # lazy: matplotlib

    check_names(cfg)  # a config built in code has not been through load_config's checks
    if progress is not None:
        cfg = cfg.model_copy(
            update={"runtime": cfg.runtime.model_copy(update={"progress": progress})}
        )
    check_dataset_paths(cfg)
    set_threads(cfg)
    layout = Layout(experiment_dir(cfg, out))
    check_output_folders(cfg, layout)
    with experiment_lock(layout), experiment_logging(layout, console=console) as log_path:
        record_start(cfg, layout, log_path)
        store = DataStore(cfg)
        check_inputs(cfg, store)  # every dataset decoded, every weights file checked
        plan = make_plan(cfg, store, layout)
        statuses = record_plan(plan, layout)
        write_data_outputs(cfg, store, layout)
        write_leakage(cfg, store, layout, plan)
        entries = {e.name: e for e in test_entries(cfg, store)}
        models = {m.display: m for m in cfg.models}
        for pair, status in zip(plan.pairs, statuses, strict=True):
            if pair.kind == "ensemble":
                run_ensemble(pair, status, plan, statuses, layout, cfg)
            else:
                run_pair(pair, status, entries, models, store, layout, cfg, force=force)
            write_status(layout, statuses)
            if on_pair_done:
                on_pair_done(status)
        result = ExperimentResult(exp_dir=layout.root, plan=plan, pairs=statuses)
        result.report = build_report(layout.root)
        result.summary_rows = collect_summary(layout.root)
        log_summary(result, plan)
        return result


def record_plan(plan: Plan, layout: Layout) -> list[PairStatus]:
    """Write ``plan.json`` and a pending ``status.json`` (evaluations of another plan removed)."""
    removed = drop_stale_evaluations(layout, plan)
    if removed:
        log.info("Removed %d evaluation folder(s) left by another plan", removed)
    write_plan(layout, plan)
    statuses = [
        PairStatus(dataset=p.dataset, model=p.model, run_dir=p.run_dir, seed=p.seed)
        for p in plan.pairs
    ]
    write_status(layout, statuses)
    if plan.multi_seed:
        log.info(
            "Training every pair with %d seeds (%s); the report gives mean and std across them",
            len(plan.seeds),
            ", ".join(str(s) for s in plan.seeds),
        )
    for ds in plan.datasets:
        if ds.use == "test":
            log.info("%s: evaluation only (no train split, or use: test)", ds.name)
    return statuses


def run_pair(
    pair: PlannedPair,
    status: PairStatus,
    entries: dict[str, Entry],
    models: dict[str, ModelConfig],
    store: DataStore,
    layout: Layout,
    cfg: ExperimentConfig,
    *,
    force: bool,
) -> None:
    m = models[pair.model]
    size, ch = model_geometry(cfg, m)
    name = pair.label
    try:
        data = entries[pair.dataset].data(store, size, ch)
        assert pair.run_dir is not None and pair.run_key is not None
        done = fit_or_reuse(
            data,
            m,
            layout.resolve(pair.run_dir),
            pair.run_key,
            cfg,
            seed=pair.seed,
            force=force,
            name=name,
            where=pair.run_dir,
        )
        model, meta, reused, produced = done.model, done.meta, done.reused, done.produced
        status.status = "reused" if reused else "trained"
        status.produced_by = produced
    except (KeyboardInterrupt, SystemExit, DatasetError):
        raise
    except Exception as e:  # one failed pair must not stop the others
        from ferlab.models.errors import WeightsError  # lazy: ferlab.models imports torch

        status.status = "failed"
        status.error = f"{type(e).__name__}: {e}"
        trace = "" if isinstance(e, WeightsError) else "\n" + traceback.format_exc()
        log.error("[%s] failed: %s%s", name, e, trace)
        return
    ids: dict[str, Any] = {
        "train_dataset": pair.dataset,
        "model": pair.model,
        "run_key": pair.run_key,
    }
    if pair.seed is not None:
        ids["seed"] = pair.seed
    for planned in pair.evals:
        test = entries[planned.test].data(store, size, ch)
        try:
            metrics, again = evaluate_planned(
                model, meta, test, planned, layout, cfg=cfg, ids=ids, force=force
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            eval_failed(status, planned.test, name, e)
            continue
        status.evals.append(
            EvalStatus(
                planned.test,
                "reused" if again else "computed",
                None,
                metrics.get("produced_by") or {},
            )
        )
        best = metrics.get("tta") or metrics["plain"]
        log.info(
            "[%s] on %s: accuracy %.2f%%%s, balanced %.2f%%, macro-F1 %.2f%%%s",
            name,
            planned.test,
            100 * best["accuracy"],
            f" (TTA, {metrics.get('tta_views')} views)" if metrics.get("tta") else " (no TTA)",
            100 * best["balanced_accuracy"],
            100 * best["macro_f1"],
            f" (reused: evaluated by {produced_by_text(metrics.get('produced_by'))})"
            if again
            else "",
        )


def log_summary(result: ExperimentResult, plan: Plan) -> None:
    """The console summary table, the failed pairs and where the report is."""
    from ferlab.reporting import format_console_table  # lazy: matplotlib

    log.info(
        "\nSummary (own test split; TTA columns use the configured views%s)\n%s",
        f"; mean ± std across seeds {', '.join(str(s) for s in plan.seeds)}"
        if plan.multi_seed
        else "",
        format_console_table(result.summary_rows),
    )
    if result.failed:
        log.warning(
            "%d of %d pairs failed: %s. Rerun the same command to retry them.",
            len(result.failed),
            len(result.pairs),
            ", ".join(
                f"{p.dataset}/{p.model}" + ("" if p.seed is None else f" (seed {p.seed})")
                for p in result.failed
            ),
        )
    if result.report is not None:
        log.info("Report: %s", result.report.resolve())
