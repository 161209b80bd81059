"""``ferlab tune``: hyperparameter search with Optuna over the experiment file's ``tune:`` space.

Each trial samples the space (dotted config paths, as ``--set``), applies the values to the
experiment and trains the tuned (dataset, model) pair exactly as ``ferlab run`` would: the same
datasets (decode-once cache), the same run key and run folder, so a trial whose parameters
match a finished run returns at once, and ``ferlab run tune/best.yaml`` reuses the best
trial's weights. The objective is the best validation value of ``tune.metric`` in the run's
history; the test split is never read here (validation chooses; test is read once, by
``ferlab run``). Every epoch's validation value goes to the pruner through ``PruneOnVal``.

The study lives in ``tune/journal.log`` (Optuna's ``JournalStorage``, file backend), which
several workers on one machine or a shared file system can use at once; ``storage`` takes any
RDB URL (``sqlite:///...``, ``postgresql+psycopg://...``) for workers on many machines.
Rerunning continues the study up to ``trials`` finished trials (complete, pruned or failed).

Outputs (``ferlab.layout``): ``tune/trials.csv``, ``tune/best.yaml``, ``tune/history.png``,
``tune/intermediate.png`` and, when Optuna can compute them, ``tune/importances.json/.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import yaml

from ferlab.config import (
    ConfigError,
    ExperimentConfig,
    ParamSpec,
    TuneConfig,
    apply_overrides,
    config_hash,
    space_overrides,
    tune_targets,
    validate_config,
)
from ferlab.layout import HISTORY, Layout, atomic_write, write_json
from ferlab.pipeline import (
    DataStore,
    check_dataset_paths,
    check_output_folders,
    experiment_dir,
    experiment_logging,
    set_threads,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("ferlab")

INSTALL_HINT = "ferlab tune needs Optuna: pip install 'ferlab[tune]' (or pip install 'optuna>=4')"
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")  # what counts towards tune.trials
TRIALS_COLUMNS = (
    "number",
    "state",
    "value",
    "params",
    "intermediate",
    "duration_s",
    "run_dir",
    "reused",
    "error",
)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    return optuna


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


# -- the pruning callback -----------------------------------------------------------------------
class PruneOnVal(pl.Callback):
    """Reports ``metric`` to the trial after every validation and stops a trial the pruner
    rejects (``optuna.TrialPruned`` propagates out of ``fit``; the run folder keeps no DONE).

    Steps are 1-based epochs, as in ``history.csv``. Ours rather than ``optuna-integration``'s,
    so that it uses the one Lightning namespace ferlab uses (``lightning.pytorch``).
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        if not math.isfinite(value):
            return
        epoch = trainer.current_epoch + 1
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            optuna = _optuna()
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({self.metric} {value:.4f})")


# -- sampling and objective ---------------------------------------------------------------------
def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """One value per dotted path of the space."""
    params: dict[str, Any] = {}
    for path, spec in space.items():
        if spec.float_range is not None:
            lo, hi = spec.float_range
            params[path] = trial.suggest_float(path, lo, hi, log=spec.log)
        elif spec.int_range is not None:
            ilo, ihi = spec.int_range
            params[path] = trial.suggest_int(path, ilo, ihi, log=spec.log)
        else:
            assert spec.choice is not None
            params[path] = trial.suggest_categorical(path, spec.choice)
    return params


def apply_params(cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """The experiment with sampled values applied as ``--set`` overrides, validated again."""
    raw = cfg.model_dump(mode="json", by_alias=True, exclude_none=False)
    return validate_config(apply_overrides(raw, space_overrides(params)))


def best_of(history: list[dict[str, float]], metric: str, maximize: bool) -> float | None:
    """The best finite value of ``metric`` over a run's epochs (None when there is none)."""
    values = [r[metric] for r in history if metric in r and math.isfinite(r[metric])]
    if not values:
        return None
    return max(values) if maximize else min(values)


class _Objective:
    """Trains one trial's (dataset, model) pair through the run cache; returns the objective."""

    def __init__(self, cfg: ExperimentConfig, layout: Layout) -> None:
        assert cfg.tune is not None
        self.cfg = cfg
        self.tune: TuneConfig = cfg.tune
        self.layout = layout
        self.ds_index, self.model_index = tune_targets(cfg)
        self._stores: dict[str, DataStore] = {}

    def store(self, cfg: ExperimentConfig) -> DataStore:
        """One DataStore per data settings, so a tuned ``data.*`` or dataset field reloads."""
        key = config_hash(
            {
                "data": cfg.data.model_dump(mode="json"),
                "ds": cfg.datasets[self.ds_index].model_dump(mode="json"),
            }
        )
        if key not in self._stores:
            self._stores[key] = DataStore(cfg)
        return self._stores[key]

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except _optuna().TrialPruned:
            raise
        except Exception as e:  # recorded as failed; the study goes on (optimize's catch)
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            log.error("[trial %d] failed: %s: %s", trial.number, type(e).__name__, e)
            raise

    def _run(self, trial: optuna.Trial) -> float:
        from ferlab.models.pretrained import check_pretrained
        from ferlab.pipeline import fit_or_reuse, pair_run_key
        from ferlab.training import read_history

        t0 = time.perf_counter()
        params = suggest(trial, self.tune.space)
        cfg = apply_params(self.cfg, params)
        ds, m = cfg.datasets[self.ds_index], cfg.models[self.model_index]
        check_pretrained(m)
        data = self.store(cfg).get(ds, m.image_size, m.channels)
        if not data.trainable:
            raise ConfigError(f"tune.dataset {ds.display!r} has no train split: it cannot be tuned")
        key = pair_run_key(data, m, cfg)
        run_dir = self.layout.run_dir(ds.display, m.display, key)
        trial.set_user_attr("run_dir", self.layout.relative(run_dir))
        trial.set_user_attr("run_key", key)
        log.info("[trial %d] %s", trial.number, params)
        done = fit_or_reuse(
            data,
            m,
            run_dir,
            key,
            cfg,
            callbacks=[PruneOnVal(trial, self.tune.metric)],
            name=f"trial {trial.number}",
            where=self.layout.relative(run_dir),
        )
        trial.set_user_attr("reused", done.reused)
        history = read_history(run_dir / HISTORY)
        if done.reused:
            # The intermediate values too, so the plots and the pruner see the whole study.
            for row in history:
                v = row.get(self.tune.metric, float("nan"))
                if math.isfinite(v):
                    trial.report(v, step=int(row["epoch"]))
        value = best_of(history, self.tune.metric, self.tune.maximize)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        if value is None:
            raise ValueError(
                f"the run in {run_dir} has no finite {self.tune.metric} in its history"
            )
        log.info("[trial %d] %s = %.4f", trial.number, self.tune.metric, value)
        return value


# -- storage and study --------------------------------------------------------------------------
def open_storage(storage: str | None, layout: Layout) -> tuple[Any, str]:
    """The study storage and how to name it: the journal file in ``tune/`` by default, or any
    RDB URL; an unreachable URL is an error before any training."""
    optuna = _optuna()
    if storage is None:
        from optuna.storages.journal import JournalFileBackend

        layout.tune_dir.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(layout.tune_journal))
        return optuna.storages.JournalStorage(backend), str(layout.tune_journal)
    try:
        # Heartbeats: a worker that dies mid-trial has its trial marked failed after the grace
        # period, and the study stays usable.
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
    except Exception as e:
        raise ConfigError(
            f"cannot open the study storage {storage!r}: {type(e).__name__}: {e}. Give an "
            "RDB URL that is reachable from here (sqlite:///tune.db, postgresql+psycopg://user@"
            "host/db, mysql://...), or leave out --storage for the journal file in tune/."
        ) from e
    return rdb, storage


def make_sampler(tune: TuneConfig, seed: int) -> Any:
    optuna = _optuna()
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "cmaes":
        import importlib.util

        if importlib.util.find_spec("cmaes") is None:
            raise ConfigError("tune.sampler cmaes needs the cmaes package: pip install cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed)
    if tune.sampler == "grid":
        grid: dict[str, list[Any]] = {}
        for path, spec in tune.space.items():
            if spec.int_range is not None:
                grid[path] = list(range(spec.int_range[0], spec.int_range[1] + 1))
            else:
                grid[path] = list(spec.samples())
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(tune: TuneConfig, max_epochs: int) -> Any:
    optuna = _optuna()
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1))
    return optuna.pruners.NopPruner()


def _check_study(study: optuna.Study, tune: TuneConfig) -> None:
    """An existing study must optimise the same metric in the same direction."""
    attrs = study.user_attrs
    old_metric = attrs.get("metric")
    old_dir = study.direction.name.lower()
    if (old_metric is not None and old_metric != tune.metric) or old_dir != tune.direction:
        raise ConfigError(
            f"study {study.study_name!r} already exists with metric {old_metric} "
            f"({old_dir}); this experiment asks for {tune.metric} ({tune.direction}). Use "
            "another --study name, or the study's metric and direction."
        )
    if old_metric is None:
        study.set_user_attr("metric", tune.metric)


def _finished(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED_STATES)


# -- the command --------------------------------------------------------------------------------
def tune(
    cfg: ExperimentConfig,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    out: str | Path | None = None,
    console: bool = True,
    pruner: Any = None,
    sampler: Any = None,
) -> TuneResult:
    """Run (or continue) the study of ``cfg.tune`` up to ``trials`` finished trials in total.

    ``timeout`` (minutes) stops starting new trials; ``storage`` is an RDB URL (default: the
    journal file ``tune/journal.log``); ``study`` names the study (default: the experiment's
    name). ``pruner``/``sampler`` take Optuna objects instead of ``tune.pruner``/``sampler``.
    Returns every trial of the study, the best one, and the files written.
    """
    if cfg.tune is None:
        raise ConfigError(
            "the experiment has no `tune:` section: add one, e.g.\n  tune:\n    metric: "
            "val_balanced_accuracy\n    trials: 20\n    space:\n      train.lr: {float: "
            "[1.0e-4, 1.0e-2], log: true}"
        )
    optuna = _optuna()
    tune_cfg = cfg.tune
    total = trials if trials is not None else tune_cfg.trials
    if total < 1:
        raise ConfigError(f"--trials must be at least 1; got {total}")
    check_dataset_paths(cfg)
    set_threads(cfg)
    layout = Layout(experiment_dir(cfg, out))
    check_output_folders(cfg, layout)
    objective = _Objective(cfg, layout)  # checks tune.dataset / tune.model
    st, storage_name = open_storage(storage, layout)
    name = study or cfg.name
    with experiment_logging(layout, console=console):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Bad data fail here, before the study starts.
        ds, m = cfg.datasets[objective.ds_index], cfg.models[objective.model_index]
        objective.store(cfg).get(ds, m.image_size, m.channels)
        direction = tune_cfg.direction or "maximize"
        s = optuna.create_study(
            study_name=name,
            storage=st,
            direction=direction,
            load_if_exists=True,
            sampler=sampler,  # placeholder; replaced below once the study size is known
            pruner=pruner or make_pruner(tune_cfg, cfg.train_for(m).epochs),
        )
        _check_study(s, tune_cfg)
        done = _finished(s)
        if sampler is None:
            # Seeded by the experiment seed and the study's progress: a study run in one go is
            # reproducible, and a continued one does not redraw its first trials.
            s.sampler = make_sampler(tune_cfg, cfg.seed + done)
        left = total - done
        log.info(
            "ferlab tune: study %r in %s: %d of %d trials finished; %s",
            name,
            storage_name,
            done,
            total,
            f"running up to {left} more" if left > 0 else "nothing to do",
        )
        if left > 0:
            stop = optuna.study.MaxTrialsCallback(
                total, states=tuple(getattr(optuna.trial.TrialState, n) for n in FINISHED_STATES)
            )
            s.optimize(
                objective,
                n_trials=left,
                timeout=None if timeout is None else timeout * 60.0,
                catch=(Exception,),
                callbacks=[stop, lambda study, trial: write_trials(layout, study)],
                gc_after_trial=True,
            )
        result = write_outputs(cfg, layout, s, storage_name)
        log.info(
            "ferlab tune: %d complete, %d pruned, %d failed; best %s",
            result.count("COMPLETE"),
            result.count("PRUNED"),
            result.count("FAIL"),
            "none"
            if result.best_number is None
            else f"trial {result.best_number}: {tune_cfg.metric} {result.best_value:.4f} {result.best_params}",
        )
        if result.best_yaml:
            log.info(
                "Best configuration: %s (its test score: ferlab run %s --out %s)",
                result.best_yaml,
                result.best_yaml,
                layout.root,
            )
        return result


# -- outputs ------------------------------------------------------------------------------------
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
                "error": t.user_attrs.get("error", "") if t.state.name == "FAIL" else "",
            }
        )
    return rows


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
    optuna = _optuna()
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
    for n in result.notes:
        log.info("%s", n)
    return result


@contextmanager
def _figure(path: Path, figsize: tuple[float, float]) -> Iterator[Any]:
    """A matplotlib figure saved to ``path`` and closed by the report's one PNG writer."""
    from ferlab.reporting import plots

    fig, ax = plots.plt.subplots(figsize=figsize)
    try:
        yield ax
    except BaseException:
        plots.plt.close(fig)
        raise
    plots._save(fig, path)


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
