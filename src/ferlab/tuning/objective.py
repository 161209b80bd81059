"""One trial: sample the space, apply it to the experiment, train the tuned pair through the
run service (``fit_or_reuse``), report every epoch's validation value to the pruner, and
return the best one."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl

from ferlab.config import (
    ConfigError,
    ExperimentConfig,
    ParamSpec,
    TuneConfig,
    config_hash,
    space_overrides,
    tune_targets,
    with_overrides,
)
from ferlab.layout import HISTORY, Layout
from ferlab.models import create_model
from ferlab.models.pretrained import check_pretrained
from ferlab.record.planning import model_geometry, pair_run_key
from ferlab.service.fitting import fit_or_reuse
from ferlab.service.store import DataStore
from ferlab.training import read_history
from ferlab.tuning.study import require_optuna

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("ferlab")


HEARTBEAT_S = 30.0  # a running trial's heartbeat (user attribute) is refreshed this often


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
            optuna = require_optuna()
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
    return with_overrides(cfg, space_overrides(params))


def best_of(history: list[dict[str, float]], metric: str, maximize: bool) -> float | None:
    """The best finite value of ``metric`` over a run's epochs (None when there is none)."""
    values = [r[metric] for r in history if metric in r and math.isfinite(r[metric])]
    if not values:
        return None
    return max(values) if maximize else min(values)


class Objective:
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
        except require_optuna().TrialPruned as e:
            log.info("[trial %d] %s", trial.number, e)
            raise
        except Exception as e:  # recorded as failed; the study goes on (optimize's catch)
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            log.error("[trial %d] failed: %s: %s", trial.number, type(e).__name__, e)
            raise

    def _run(self, trial: optuna.Trial) -> float:
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


def check_model_choices(cfg: ExperimentConfig) -> None:
    """Every model a ``tune.space`` choice can make is built once (untrained, no weights
    loaded), so an unknown name or kwargs that do not fit an architecture fail before the
    study starts, naming the field and the value."""
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
                create_model(m.name, num_classes=7, channels=ch, image_size=size, **m.kwargs)
            except Exception as e:
                raise ConfigError(
                    "Invalid experiment configuration:\n  tune.space."
                    f"{path}: the choice {value!r} does not make a model: {type(e).__name__}: {e}"
                ) from e
