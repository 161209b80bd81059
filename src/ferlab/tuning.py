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

Workers coordinate through the study: a short lock file (``tune/.ask.lock``) is held from "is
there room for another trial" to "the trial exists", so workers on one file system together
run exactly ``trials`` trials; each trial's sampler is seeded by the experiment seed and the
trial number, so workers started at the same moment draw different values and a study run
twice draws the same ones; a worker locks only the run folder it trains (``record.run_lock``),
and one that samples a run another worker is training waits and reuses it. A worker that dies
mid-trial (a kill -9, a lost machine) leaves a RUNNING trial: the next worker fails it (at once
when its process is gone from this host; after ``HEARTBEAT_GRACE_S`` without a heartbeat
otherwise; RDB storages also use Optuna's own heartbeat) and, with ``retries``, enqueues the
same parameters again; a failed trial that was retried does not count towards ``trials``.

Outputs (``ferlab.layout``): ``tune/trials.csv``, ``tune/best.yaml``, ``tune/history.png``,
``tune/intermediate.png`` and, when Optuna can compute them, ``tune/importances.json/.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import yaml

from ferlab.config import (
    ConfigError,
    ExperimentConfig,
    ParamSpec,
    TrainConfig,
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
from ferlab.provenance import stamp
from ferlab.record import hold_lock, pid_alive
from ferlab.record.planning import model_geometry, pair_run_key

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
    "worker",
    "retry_of",
    "error",
)
HEARTBEAT_S = 30.0  # a running trial's heartbeat (user attribute) is refreshed this often
HEARTBEAT_GRACE_S = 600.0  # a RUNNING trial silent this long, from another host, is lost


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
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        try:
            with _heartbeat(trial):
                return self._run(trial)
        except _optuna().TrialPruned as e:
            log.info("[trial %d] %s", trial.number, e)
            raise
        except Exception as e:  # recorded as failed; the study goes on (optimize's catch)
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            log.error("[trial %d] failed: %s: %s", trial.number, type(e).__name__, e)
            raise

    def _run(self, trial: optuna.Trial) -> float:
        from ferlab.models.pretrained import check_pretrained
        from ferlab.pipeline import fit_or_reuse
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
        # fit_or_reuse locks the run folder: another worker training this very run is waited
        # for, then reused.
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


@contextmanager
def _heartbeat(trial: optuna.Trial, every: float | None = None) -> Iterator[None]:
    """Refresh the trial's ``heartbeat`` user attribute while the block runs, so workers on
    other hosts can tell a lost trial from a long one (the journal file has no heartbeat)."""
    every = HEARTBEAT_S if every is None else every
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                trial.set_user_attr("heartbeat", time.time())
            except Exception:  # the trial finished meanwhile, or the storage is gone
                return
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name=f"ferlab-tune-heartbeat-{trial.number}")
    thread.daemon = True
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- workers sharing a study ----------------------------------------------------------------------
def _is_lost(t: optuna.trial.FrozenTrial, now: float, grace: float) -> str | None:
    """Why a RUNNING trial has no live worker any more, or None when it may be alive."""
    worker = t.user_attrs.get("worker") or {}
    if worker.get("host") == socket.gethostname() and isinstance(worker.get("pid"), int):
        if not pid_alive(worker["pid"]):
            return f"its worker (process {worker['pid']} on this host) is gone"
        return None
    last = t.user_attrs.get("heartbeat")
    if last is None and t.datetime_start is not None:
        last = t.datetime_start.timestamp()
    if isinstance(last, int | float) and now - last > grace:
        return f"no heartbeat from its worker for {now - last:.0f} s"
    return None


def fail_lost_trials(
    study: optuna.Study, retries: int = 0, grace: float | None = None
) -> list[int]:
    """Fail the RUNNING trials whose worker died; with ``retries``, enqueue their parameters
    again (at most ``retries`` times per original trial). Returns the failed trial numbers."""
    optuna = _optuna()
    grace = HEARTBEAT_GRACE_S if grace is None else grace
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        why = _is_lost(t, now, grace)
        if why is None:
            continue
        try:
            optuna.trial.Trial(study, t._trial_id).set_user_attr("error", f"lost: {why}")
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except Exception:  # another worker failed it first
            continue
        failed.append(t.number)
        log.warning("[trial %d] failed: %s", t.number, why)
        _retry(study, t, retries)
    return failed


def _retry(study: optuna.Study, t: optuna.trial.FrozenTrial, retries: int) -> None:
    """Enqueue a lost trial's parameters again, unless its lineage has used its retries."""
    depth = int(t.user_attrs.get("retry_depth", 0))
    if depth >= retries or not t.params:
        return
    study.enqueue_trial(
        dict(t.params),
        user_attrs={"retry_of": t.number, "retry_depth": depth + 1},
        skip_if_exists=False,
    )
    log.info("[trial %d] retried as a new trial (retry %d of %d)", t.number, depth + 1, retries)


def _counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Finished trials towards ``tune.trials``: a failed trial that was retried is replaced."""
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    return sum(1 for t in trials if t.state.name in FINISHED_STATES and t.number not in retried)


def _trial_seeded(make: Callable[[int], Any], seed: int) -> Any:
    """A sampler re-made for every trial with seed ``seed + trial number``: workers started at
    the same moment draw different values, and a study run again draws the same ones. Its
    ``before_trial`` (called once the trial exists) also opens the workers' ask gate."""
    base: Any = _optuna().samplers.BaseSampler  # Optuna checks isinstance(BaseSampler)

    class TrialSeededSampler(base):
        def __init__(self) -> None:
            self.inner = make(seed)
            self.on_trial_created: Callable[[], None] = lambda: None

        def before_trial(self, study: Any, trial: Any) -> None:
            self.inner = make(seed + trial.number)
            try:
                self.inner.before_trial(study, trial)
            finally:
                self.on_trial_created()

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self.inner.sample_independent(study, trial, name, dist)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return TrialSeededSampler()


# -- storage and study --------------------------------------------------------------------------
def open_storage(storage: str | None, layout: Layout, retries: int = 0) -> tuple[Any, str]:
    """The study storage and how to name it: the journal file in ``tune/`` by default, or any
    RDB URL; an unreachable URL is an error before any training."""
    optuna = _optuna()
    if storage is None:
        from optuna.storages.journal import JournalFileBackend

        layout.tune_dir.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(layout.tune_journal))
        return optuna.storages.JournalStorage(backend), str(layout.tune_journal)
    import inspect

    params = inspect.signature(optuna.storages.RDBStorage).parameters
    stale = (  # renamed in Optuna 4.9
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in params
        else "failed_trial_callback"
    )
    attempts = 5
    for attempt in range(attempts):
        try:
            # Heartbeats: a worker that dies mid-trial has its trial marked failed after the
            # grace period, and the study stays usable.
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    storage,
                    heartbeat_interval=60,
                    grace_period=180,
                    **{stale: lambda study, t: _retry(study, t, retries)},
                )
            break
        except Exception as e:
            # Workers starting at once on a new database race to create Optuna's tables:
            # the loser sees an integrity error and finds the tables on its next try.
            if type(e).__name__ == "IntegrityError" and attempt < attempts - 1:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(
                f"cannot open the study storage {storage!r}: {type(e).__name__}: {e}. Give an "
                "RDB URL that is reachable from here (sqlite:///tune.db, postgresql+psycopg://"
                "user@host/db, mysql://...), or leave out --storage for the journal file in "
                "tune/."
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


def protected_epochs(tune: TuneConfig, train: TrainConfig) -> int:
    """The epochs of a trial no pruner judges: ``tune.pruner_warmup_epochs``, default the
    schedule's warm-up (rounded up) plus one epoch."""
    if tune.pruner_warmup_epochs is not None:
        return tune.pruner_warmup_epochs
    return math.ceil(train.warmup_epochs) + 1


def make_pruner(tune: TuneConfig, train: TrainConfig) -> Any:
    """The study's pruner. Steps are 1-based epochs (``PruneOnVal``); Optuna's median pruner
    judges a step only from ``n_warmup_steps`` on, so it is the first unprotected epoch."""
    optuna = _optuna()
    first = protected_epochs(tune, train) + 1
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=first
        )
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=max(train.epochs, first)
        )
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


# -- the command --------------------------------------------------------------------------------
def tune(
    cfg: ExperimentConfig,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    out: str | Path | None = None,
    retries: int = 0,
    console: bool = True,
    pruner: Any = None,
    sampler: Any = None,
) -> TuneResult:
    """Run (or continue) the study of ``cfg.tune`` up to ``trials`` finished trials in total.

    ``timeout`` (minutes) stops starting new trials; ``storage`` is an RDB URL (default: the
    journal file ``tune/journal.log``); ``study`` names the study (default: the experiment's
    name); ``retries``: how often a trial whose worker died is run again. ``pruner``/``sampler``
    take Optuna objects instead of ``tune.pruner``/``sampler``. Returns every trial of the
    study, the best one, and the files written.
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
    if retries < 0:
        raise ConfigError(f"--retry-failed must be 0 or more; got {retries}")
    check_dataset_paths(cfg)
    check_model_choices(cfg)
    set_threads(cfg)
    layout = Layout(experiment_dir(cfg, out))
    check_output_folders(cfg, layout)
    objective = _Objective(cfg, layout)  # checks tune.dataset / tune.model
    st, storage_name = open_storage(storage, layout, retries)
    name = study or cfg.name
    with experiment_logging(layout, console=console):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Bad data fail here, before the study starts.
        ds, m = cfg.datasets[objective.ds_index], cfg.models[objective.model_index]
        objective.store(cfg).get(ds, m.image_size, m.channels)
        gate = _Gate(layout)
        sampler = sampler or _trial_seeded(lambda seed: make_sampler(tune_cfg, seed), cfg.seed)
        if hasattr(sampler, "on_trial_created"):
            sampler.on_trial_created = gate.open
        with gate.closed():  # two workers creating the study at once
            s = optuna.create_study(
                study_name=name,
                storage=st,
                direction=tune_cfg.direction or "maximize",
                load_if_exists=True,
                sampler=sampler,
                pruner=pruner or make_pruner(tune_cfg, cfg.train_for(m)),
            )
            _check_study(s, tune_cfg)
        done = _counted(s.get_trials(deepcopy=False))
        log.info(
            "ferlab tune: study %r in %s: %d of %d trials finished; %s",
            name,
            storage_name,
            done,
            total,
            f"running up to {total - done} more" if done < total else "nothing to do",
        )
        deadline = None if timeout is None else time.monotonic() + timeout * 60.0
        while deadline is None or time.monotonic() < deadline:
            with gate.closed():  # opened by the sampler once this worker's trial exists
                fail_lost_trials(s, retries)
                trials_now = s.get_trials(deepcopy=False)
                running = sum(1 for t in trials_now if t.state.name == "RUNNING")
                if _counted(trials_now) + running >= total:
                    break
                s.optimize(
                    objective,
                    n_trials=1,
                    catch=(Exception,),
                    callbacks=[lambda study, trial: write_trials(layout, study)],
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


class _Gate:
    """The workers' lock from "is there room for another trial" to "the trial exists"
    (``tune/.ask.lock``): workers sharing a file system run exactly ``trials`` trials."""

    def __init__(self, layout: Layout) -> None:
        self.path = layout.tune_dir / ".ask.lock"
        self._stack = ExitStack()

    @contextmanager
    def closed(self) -> Iterator[None]:
        self._stack.enter_context(
            hold_lock(
                self.path,
                lambda who: (
                    f"the study's ask lock {self.path} is held by {who}; delete it if "
                    "that worker is gone"
                ),
                wait_s=600.0,
            )
        )
        try:
            yield
        finally:
            self.open()

    def open(self) -> None:
        self._stack.close()


def check_model_choices(cfg: ExperimentConfig) -> None:
    """Every model a ``tune.space`` choice can make is built once (untrained, no weights
    loaded), so an unknown name or kwargs that do not fit an architecture fail before the
    study starts, naming the field and the value."""
    from ferlab.models import create_model

    assert cfg.tune is not None
    for path, spec in cfg.tune.space.items():
        parts = path.split(".")
        if parts[0] != "models" or spec.choice is None:
            continue
        for value in spec.choice:
            c = apply_params(cfg, {path: value})
            m = c.models[int(parts[1])] if len(parts) > 1 and parts[1].isdigit() else None
            if m is None:
                continue
            size, ch = model_geometry(c, m)
            try:
                create_model(m.name, num_classes=7, in_chans=ch, image_size=size, **m.kwargs)
            except Exception as e:
                raise ConfigError(
                    "Invalid experiment configuration:\n  tune.space."
                    f"{path}: the choice {value!r} does not make a model: {type(e).__name__}: {e}"
                ) from e


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
    from ferlab.reporting import plots

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
