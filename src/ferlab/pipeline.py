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
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ferlab import __version__
from ferlab.config import (
    DatasetConfig,
    ExperimentConfig,
    ModelConfig,
    check_names,
    dump_config,
)
from ferlab.data.base import DatasetError, LoadedDataset, dataset_traits
from ferlab.evaluation.analysis import collect_summary
from ferlab.layout import ENSEMBLE, MEGA, METRICS, PROBS, SPLITS, Layout, write_json
from ferlab.provenance import code_digest, library_versions, stamp
from ferlab.record import (
    EvalStatus,
    PairStatus,
    Plan,
    PlannedEval,
    PlannedPair,
    check_writable,
    experiment_lock,
    planned_metrics,
    produced_by_text,
    run_lock,
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

log = logging.getLogger("ferlab")


@dataclass
class ExperimentResult:
    exp_dir: Path
    plan: Plan | None = None
    pairs: list[PairStatus] = field(default_factory=list)
    report: Path | None = None
    summary_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[PairStatus]:
        return [p for p in self.pairs if p.status == "failed"]

    @property
    def weights(self) -> Path:
        """The run folder (weights + metadata) of the only trained pair, as ``ferlab.train``
        makes; with several pairs use ``run_dir(dataset, model)``."""
        trained = [p for p in self.pairs if p.run_dir and p.status in ("trained", "reused")]
        if len(trained) != 1:
            raise ValueError(
                f"weights needs exactly one trained pair; this experiment has {len(trained)}: "
                "use run_dir(dataset, model)."
            )
        return Layout(self.exp_dir).resolve(str(trained[0].run_dir))

    def run_dir(self, dataset: str, model: str, seed: int | None = None) -> Path | None:
        """The run folder of a trained pair (None for failed pairs and ensembles); with several
        training seeds, of ``seed`` (default: the first seed)."""
        for p in self.pairs:
            if (p.dataset, p.model) != (dataset, model) or not p.run_dir:
                continue
            if seed is None or p.seed == seed:
                return Layout(self.exp_dir).resolve(p.run_dir)
        return None


def experiment_dir(cfg: ExperimentConfig, out: str | Path | None = None) -> Path:
    return Path(out).expanduser() if out else Path(cfg.output_dir).expanduser() / cfg.name


@contextmanager
def experiment_logging(layout: Layout, *, console: bool = True) -> Iterator[Path]:
    """Log to a timestamped file in the experiment's logs (and the console) while the block runs."""
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    path = layout.log_file(f"{datetime.now():%Y%m%d_%H%M%S}")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(fmt)
    handlers: list[logging.Handler] = [file_handler]
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(stream)
    old_level = log.level
    log.setLevel(logging.INFO)
    for h in handlers:
        log.addHandler(h)
    try:
        yield path
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)


def environment_info() -> dict[str, Any]:
    import torch

    from ferlab.device import describe_device

    commit = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "ferlab": __version__,
        "code_digest_train": code_digest("train"),
        "code_digest_eval": code_digest("eval"),
        "torch": torch.__version__,
        "versions": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": describe_device(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


class DataStore:
    """Datasets loaded once per (dataset, size, channels) for the whole experiment."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self._cache: dict[tuple[str, int, int], LoadedDataset] = {}

    def get(self, ds: DatasetConfig, size: int, channels: int) -> LoadedDataset:
        from ferlab.data.loading import load_from_config

        key = (ds.display, size, channels)  # display names are unique (config.check_names)
        if key not in self._cache:
            t0 = time.perf_counter()
            loaded = load_from_config(ds, self.cfg.data, size=size, channels=channels, log=log.info)
            sizes = ", ".join(f"{k} {len(v)}" for k, v in loaded.splits.items())
            log.info(
                "Loaded %s at %dx%dx%d in %.1f s: %s",
                ds.display,
                size,
                size,
                channels,
                time.perf_counter() - t0,
                sizes,
            )
            if loaded.bad_files:
                log.warning(
                    "%s: %d bad files skipped (first: %s: %s)",
                    ds.display,
                    len(loaded.bad_files),
                    loaded.bad_files[0].path,
                    loaded.bad_files[0].reason,
                )
            self._cache[key] = loaded
        return self._cache[key]

    def mega(self, size: int, channels: int) -> LoadedDataset:
        """The mega dataset over the trainable datasets (all, or those ``mega.datasets`` names)."""
        from ferlab.data.mega import build_mega

        key = (MEGA, size, channels)
        if key not in self._cache:
            wanted = set(self.cfg.mega.datasets)
            parts = [
                d
                for d in (self.get(ds, size, channels) for ds in self.cfg.datasets)
                if d.trainable and (not wanted or d.name in wanted)
            ]
            self._cache[key] = build_mega(
                parts, balance_sources=self.cfg.mega.balance_sources, seed=self.cfg.seed
            )
        return self._cache[key]


# -- data outputs ------------------------------------------------------------------------------
def write_data_outputs(cfg: ExperimentConfig, store: DataStore, layout: Layout) -> None:
    """Per dataset: data JSON, split key lists, class-distribution plots (balanced: trained only)."""
    from ferlab.data.duplicates import split_duplicates
    from ferlab.labels import CANONICAL
    from ferlab.reporting.distribution import plot_distribution
    from ferlab.training import class_counts_after_balancing

    size, ch = model_geometry(cfg, cfg.models[0])
    for entry in test_entries(cfg, store):
        data = entry.data(store, size, ch)
        per_class: dict[str, dict[str, int]] = {}
        for split_name, split in data.splits.items():
            counts = np.bincount(split.labels, minlength=len(CANONICAL))
            per_class[split_name] = {n: int(counts[CANONICAL.index(n)]) for n in data.labels}
        splits = {s: {"total": sum(c.values()), "per_class": c} for s, c in per_class.items()}
        write_json(
            layout.data_json(data.name),
            {
                "dataset": data.name,
                "labels": data.labels,
                "use": "train" if data.trainable else "test",
                "protocol": data.protocol,
                "fingerprint": data.fingerprint,
                "spec": data.spec,
                "splits": splits,
                "bad_files": len(data.bad_files),
                "bad_file_examples": [
                    {"path": b.path, "reason": b.reason} for b in data.bad_files[:20]
                ],
                "excluded": data.excluded,
                "ignored": dict(data.ignored),
                "duplicates": split_duplicates(data),
            },
        )
        write_json(layout.splits_json(data.name), data.split_keys())
        plot_distribution(
            per_class, layout.dist_original(data.name), f"{data.name}: class distribution"
        )
        if data.trainable:
            # What training really draws, per balance setting the models use (their own
            # train: overrides included), through the split's cells (mega: source x class).
            train = data.splits["train"]
            balances = list(dict.fromkeys(cfg.train_for(m).balance for m in cfg.models))
            series = {}
            for balance in balances:
                drawn = class_counts_after_balancing(
                    train.labels, balance, cfg.seed, groups=train.groups
                )
                how = "source x class cells" if train.groups is not None else balance
                series[f"train, one epoch ({how})"] = {n: int(drawn.get(n, 0)) for n in data.labels}
            plot_distribution(
                series,
                layout.dist_balanced(data.name),
                f"{data.name}: training classes drawn per epoch",
            )


def write_leakage(cfg: ExperimentConfig, store: DataStore, layout: Layout, plan: Plan) -> None:
    """For every planned (train dataset, test set): how many test images the training data
    already holds (exact and near duplicates, in its train and val splits)."""
    from ferlab.data.duplicates import leakage

    size, ch = model_geometry(cfg, cfg.models[0])
    entries = {e.name: e for e in test_entries(cfg, store)}
    pairs = dict.fromkeys(
        (p.dataset, e.test) for p in plan.pairs if p.kind == "model" for e in p.evals
    )
    rows = []
    for train_name, test_name in pairs:
        train = entries[train_name].data(store, size, ch)
        test = entries[test_name].data(store, size, ch)
        rows.append(
            {"train_dataset": train_name, "test_dataset": test_name, **leakage(train, test)}
        )
    write_json(layout.leakage, {"pairs": rows})
    for r in rows:
        seen = r.get("near_in_either", 0)
        if seen:
            log.warning(
                "%s's test split: %d of %d images are (near-)identical to %s training or "
                "validation images; its scores there are inflated (see the report)",
                r["test_dataset"],
                seen,
                r["n_test"],
                r["train_dataset"],
            )


# -- training and evaluation -------------------------------------------------------------------
def evaluate_planned(
    model: Any,
    meta: Any,
    test: LoadedDataset,
    planned: PlannedEval,
    layout: Layout,
    *,
    cfg: ExperimentConfig,
    ids: dict[str, Any],
    force: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Score a model on ``test``'s test split (plain and TTA) into the planned folder.

    Returns the metrics and whether they were reused: a previous result counts only when it
    carries the planned key (same weights, test images, settings and code) and its arrays exist.
    """
    from ferlab.evaluation import evaluate, write_predictions

    out_dir = layout.resolve(planned.dir)
    old = None if force else planned_metrics(layout, planned)
    if old is not None and (out_dir / PROBS).is_file():
        return old, True
    split = test.splits["test"]
    result = evaluate(
        model,
        meta,
        split,
        test.labels,
        tta=cfg.eval.tta if cfg.eval.tta.enabled else None,
        batch_size=cfg.eval.batch_size,
        bootstrap=cfg.eval.bootstrap,
        seed=cfg.seed,
    )
    metrics = {
        **ids,
        "test_dataset": test.name,
        "eval_key": planned.key,
        "produced_by": stamp("eval"),
        **result.metrics,
    }
    write_predictions(out_dir, split.keys, result)
    write_json(out_dir / METRICS, metrics)
    return metrics, False


@dataclass
class Trained:
    """A trained (or reused) pair: its model, metadata, folder and who produced it."""

    model: Any
    meta: Any
    run_dir: Path
    reused: bool
    produced: dict[str, Any]


def fit_or_reuse(
    data: LoadedDataset,
    m: ModelConfig,
    run_dir: Path,
    run_key: str,
    cfg: ExperimentConfig,
    *,
    seed: int | None = None,
    force: bool = False,
    callbacks: Sequence[Any] = (),
    name: str = "",
    where: str = "",
) -> Trained:
    """Train ``m`` on ``data`` into ``run_dir`` with training seed ``seed`` (default
    ``cfg.seed``; it must be the seed of ``run_key``), or load its completed run (the run cache).

    The one way a pair is trained, for ``ferlab run`` and ``ferlab tune`` (whose pruning
    callback comes in ``callbacks``). One trainer per run folder (``record.run_lock``): a
    tuning worker, or a ``ferlab run`` beside the workers, that wants a run another process is
    training waits for it, then reuses it."""
    seed = cfg.seed if seed is None else seed
    with run_lock(run_dir):
        return _fit_or_reuse(data, m, run_dir, run_key, cfg, seed, force, callbacks, name, where)


def _fit_or_reuse(
    data: LoadedDataset,
    m: ModelConfig,
    run_dir: Path,
    run_key: str,
    cfg: ExperimentConfig,
    seed: int,
    force: bool,
    callbacks: Sequence[Any],
    name: str,
    where: str,
) -> Trained:
    from ferlab.models import load_model
    from ferlab.training import clear_run, fit, is_complete

    size, ch = model_geometry(cfg, m)
    name = name or f"{data.name} / {m.display}"
    where = where or str(run_dir)
    if force and run_dir.exists():
        clear_run(run_dir)
    if is_complete(run_dir):
        model, meta = load_model(run_dir)
        produced = dict((meta.extra or {}).get("provenance") or {})
        log.info(
            "[%s] reusing the completed run in %s (trained by %s)",
            name,
            where,
            produced_by_text(produced) or "an unrecorded version",
        )
        return Trained(model, meta, run_dir, True, produced)
    log.info("[%s] training into %s", name, where)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / SPLITS, data.split_keys())
    produced = stamp("train")
    result = fit(
        data,
        m,
        cfg.train_for(m),
        run_dir,
        runtime=cfg.runtime,
        seed=seed,
        image_size=size,
        channels=ch,
        log=log.info,
        # the evaluation's TTA views: what `predict --tta` and `evaluate --tta` run by default
        extra_meta={
            "run_key": run_key,
            "data": data.spec,
            "provenance": produced,
            "tta": cfg.eval.tta.model_dump(mode="json"),
        },
        callbacks=callbacks,
    )
    return Trained(result.model, result.meta, run_dir, False, produced)


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
        log.info("ferlab %s: experiment %r in %s", __version__, cfg.name, layout.root)
        log.info("Log file: %s", log_path)
        dump_config(cfg, layout.config)
        write_json(layout.environment, environment_info())
        return _run(cfg, layout, force=force, on_pair_done=on_pair_done)


def check_output_folders(cfg: ExperimentConfig, layout: Layout) -> None:
    """The experiment and cache folders can be written: said before any long work."""
    check_writable(layout.root, "experiment folder")
    check_writable(Path(cfg.data.cache_dir).expanduser(), "dataset cache folder (data.cache_dir)")


def set_threads(cfg: ExperimentConfig) -> None:
    """``runtime.threads`` for the whole run, evaluation included: a CPU sum over another
    thread count differs in its last bits, and a rerun that reuses a finished training must
    evaluate exactly as the run that trained it did."""
    import torch

    from ferlab.device import cpu_threads

    torch.set_num_threads(cpu_threads(cfg.runtime.threads))


def check_dataset_paths(cfg: ExperimentConfig) -> None:
    """Every dataset root exists, or an error that says how to give the path (before any work).

    The shipped experiment files name ``../shared/datasets/...``, which exists only beside
    ferlab's own repository: a user's copy lives elsewhere.
    """
    missing = [
        (i, ds)
        for i, ds in enumerate(cfg.datasets)
        if not dataset_traits(ds.name).generated and not Path(ds.path).expanduser().exists()
    ]
    if not missing:
        return
    lines = [
        f"  datasets[{i}] ({ds.name}): {ds.path!r} does not exist (from {Path.cwd()}). Point it "
        f"at your copy: --set datasets.{i}.path=/data/{ds.name}"
        for i, ds in missing
    ]
    first = missing[0][1]
    raise DatasetError(
        "Dataset folder(s) not found:\n"
        + "\n".join(lines)
        + f"\nOr train on one dataset directly: ferlab train --data {first.name}:/data/{first.name}"
    )


def _validate_datasets(cfg: ExperimentConfig, store: DataStore) -> None:
    """Check every pretrained weights file and index and decode every dataset up front: bad
    input fails before any training."""
    from ferlab.models.pretrained import check_pretrained

    for m in cfg.models:
        check_pretrained(m)
    for m in cfg.models:
        size, ch = model_geometry(cfg, m)
        for ds in cfg.datasets:
            store.get(ds, size, ch)
        if cfg.mega.enabled:
            store.mega(size, ch)


def _run(
    cfg: ExperimentConfig,
    layout: Layout,
    *,
    force: bool,
    on_pair_done: Callable[[PairStatus], None] | None,
) -> ExperimentResult:
    from ferlab.reporting import build_report, format_console_table  # lazy: matplotlib

    store = DataStore(cfg)
    _validate_datasets(cfg, store)
    plan = make_plan(cfg, store, layout)
    removed = drop_stale_evaluations(layout, plan)
    if removed:
        log.info("Removed %d evaluation folder(s) left by another plan", removed)
    write_plan(layout, plan)
    statuses = [
        PairStatus(dataset=p.dataset, model=p.model, run_dir=p.run_dir, seed=p.seed)
        for p in plan.pairs
    ]
    write_status(layout, statuses)
    write_data_outputs(cfg, store, layout)
    write_leakage(cfg, store, layout, plan)
    if plan.multi_seed:
        log.info(
            "Training every pair with %d seeds (%s); the report gives mean and std across them",
            len(plan.seeds),
            ", ".join(str(s) for s in plan.seeds),
        )
    for ds in plan.datasets:
        if ds.use == "test":
            log.info("%s: evaluation only (no train split, or use: test)", ds.name)

    entries = {e.name: e for e in test_entries(cfg, store)}
    models = {m.display: m for m in cfg.models}
    for pair, status in zip(plan.pairs, statuses, strict=True):
        if pair.kind == "ensemble":
            _run_ensemble(pair, status, plan, statuses, layout, cfg)
        else:
            _run_pair(pair, status, entries, models, store, layout, cfg, force=force)
        write_status(layout, statuses)
        if on_pair_done:
            on_pair_done(status)

    result = ExperimentResult(exp_dir=layout.root, plan=plan, pairs=statuses)
    result.report = build_report(layout.root)
    result.summary_rows = collect_summary(layout.root)
    table = format_console_table(result.summary_rows)
    log.info(
        "\nSummary (own test split; TTA columns use the configured views%s)\n%s",
        f"; mean ± std across seeds {', '.join(str(s) for s in plan.seeds)}"
        if plan.multi_seed
        else "",
        table,
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
    log.info("Report: %s", result.report.resolve())
    return result


def _run_pair(
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
    name = pair_label(pair)
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
        from ferlab.models.errors import WeightsError

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
            status.evals.append(EvalStatus(planned.test, "failed", f"{type(e).__name__}: {e}"))
            log.error("[%s] on %s failed: %s", name, planned.test, e)
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


def pair_label(pair: PlannedPair) -> str:
    """How the log names a planned pair: ``lab / ferlab_vgg``, ``lab / ferlab_vgg / seed 1``."""
    label = f"{pair.dataset} / {pair.model}"
    return label if pair.seed is None else f"{label} / seed {pair.seed}"


def _run_ensemble(
    pair: PlannedPair,
    status: PairStatus,
    plan: Plan,
    statuses: list[PairStatus],
    layout: Layout,
    cfg: ExperimentConfig,
) -> None:
    """Soft-vote the planned members' saved evaluations; every member must have succeeded.
    With several training seeds an ensemble combines the models of its own seed."""
    from ferlab.evaluation import ensemble_from_dirs

    name = pair_label(pair)
    mine = (pair.dataset, pair.seed)
    member_status = {s.model: s for s in statuses if (s.dataset, s.seed) == mine}
    broken = [m for m in pair.members if not member_status[m].ok]
    if broken:  # not a failure of its own: the planned ensemble needs every member
        status.status = "skipped"
        status.error = (
            f"member(s) {', '.join(broken)} failed; the ensemble needs all of {pair.members}"
        )
        log.warning("[%s] not built: %s", name, status.error)
        return
    plan_pairs = {p.model: p for p in plan.pairs if (p.dataset, p.seed) == mine}
    for planned in pair.evals:
        member_evals = {m: plan_pairs[m].eval_on(planned.test) for m in pair.members}
        missing = [
            m for m, e in member_evals.items() if e is None or planned_metrics(layout, e) is None
        ]
        if missing:
            status.evals.append(
                EvalStatus(planned.test, "failed", f"no current evaluation of {', '.join(missing)}")
            )
            continue
        old = planned_metrics(layout, planned)
        if old is not None:  # the same members' evaluations, the same settings
            status.evals.append(
                EvalStatus(planned.test, "reused", None, old.get("produced_by") or {})
            )
            continue
        try:
            ids: dict[str, Any] = {
                "train_dataset": pair.dataset,
                "model": ENSEMBLE,
                "test_dataset": planned.test,
                "eval_key": planned.key,
                "produced_by": stamp("eval"),
            }
            if pair.seed is not None:
                ids["seed"] = pair.seed
            ensemble_from_dirs(
                {m: layout.resolve(e.dir) for m, e in member_evals.items() if e},
                layout.resolve(planned.dir),
                ids=ids,
                bootstrap=cfg.eval.bootstrap,
                seed=cfg.seed,
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            status.evals.append(EvalStatus(planned.test, "failed", f"{type(e).__name__}: {e}"))
            log.error("[%s] on %s failed: %s", name, planned.test, e)
            continue
        status.evals.append(EvalStatus(planned.test, "computed", None, stamp("eval")))
    failed = [e for e in status.evals if e.status == "failed"]
    if failed or not status.evals:
        status.status = "failed"
        status.error = "; ".join(f"{e.test}: {e.error}" for e in failed) or "nothing to ensemble"
        return
    if all(e.status == "reused" for e in status.evals):
        status.status, status.produced_by = "reused", status.evals[0].produced_by
    else:
        status.status = "computed"
    log.info("[%s] soft vote over %d models", name, len(pair.members))
