"""``ferlab tune``: run (or continue) a study up to its number of finished trials."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferlab.config import (
    ConfigError,
    ExperimentConfig,
)
from ferlab.layout import Layout
from ferlab.service.session import (
    check_dataset_paths,
    check_output_folders,
    experiment_dir,
    experiment_logging,
    set_threads,
)
from ferlab.tuning.objective import Objective, check_model_choices
from ferlab.tuning.outputs import TuneResult, write_outputs, write_trials
from ferlab.tuning.study import (
    AskGate,
    check_study,
    counted_trials,
    fail_lost_trials,
    make_pruner,
    make_sampler,
    open_storage,
    require_optuna,
    trial_seeded_sampler,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("ferlab")


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
    optuna = require_optuna()
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
    objective = Objective(cfg, layout)  # checks tune.dataset / tune.model
    st, storage_name = open_storage(storage, layout, retries)
    name = study or cfg.name
    with experiment_logging(layout, console=console):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Bad data fail here, before the study starts.
        ds, m = cfg.datasets[objective.ds_index], cfg.models[objective.model_index]
        objective.store(cfg).get(ds, m.image_size, m.channels)
        gate = AskGate(layout)
        sampler = sampler or trial_seeded_sampler(
            lambda seed: make_sampler(tune_cfg, seed), cfg.seed
        )
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
            check_study(s, tune_cfg)
        done = counted_trials(s.get_trials(deepcopy=False))
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
                if counted_trials(trials_now) + running >= total:
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
