"""The study and the workers sharing it: storage (journal file or RDB URL), seeded sampler,
pruner, the ask gate that lets workers run exactly ``trials`` trials, and the hand-over of
trials whose worker died."""

from __future__ import annotations

import logging
import math
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from ferlab.config import (
    ConfigError,
    TrainConfig,
    TuneConfig,
)
from ferlab.layout import Layout
from ferlab.record import hold_lock, pid_alive

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("ferlab")


INSTALL_HINT = "ferlab tune needs Optuna: pip install 'ferlab[tune]' (or pip install 'optuna>=4')"
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")  # what counts towards tune.trials
HEARTBEAT_GRACE_S = 600.0  # a RUNNING trial silent this long, from another host, is lost


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    return optuna


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
    optuna = require_optuna()
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


def counted_trials(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Finished trials towards ``tune.trials``: a failed trial that was retried is replaced."""
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    return sum(1 for t in trials if t.state.name in FINISHED_STATES and t.number not in retried)


def trial_seeded_sampler(make: Callable[[int], Any], seed: int) -> Any:
    """A sampler re-made for every trial with seed ``seed + trial number``: workers started at
    the same moment draw different values, and a study run again draws the same ones. Its
    ``before_trial`` (called once the trial exists) also opens the workers' ask gate."""
    base: Any = require_optuna().samplers.BaseSampler  # Optuna checks isinstance(BaseSampler)

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
    optuna = require_optuna()
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
    optuna = require_optuna()
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
    optuna = require_optuna()
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


def check_study(study: optuna.Study, tune: TuneConfig) -> None:
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


class AskGate:
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
