"""The experiment runner behind ``ferlab run``: datasets x models, evaluation, ensembles, report.

Every result is written to files in the experiment folder first, and the summary, the
cross-dataset matrix and the HTML report are read back from those files, so a report can be
rebuilt without retraining and a rerun finishes only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
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
    config_hash,
    dump_config,
)
from ferlab.data.base import DatasetError, LoadedDataset
from ferlab.evaluation.evaluate import write_metrics_json

log = logging.getLogger("ferlab")

EVAL_FORMAT = 1  # bump when metrics.json changes meaning, so cached evaluations are redone


@dataclass
class PairStatus:
    dataset: str
    model: str
    status: str  # ok | reused | failed
    error: str | None = None
    run_dir: str | None = None


@dataclass
class ExperimentResult:
    exp_dir: Path
    pairs: list[PairStatus] = field(default_factory=list)
    report: Path | None = None
    summary_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[PairStatus]:
        return [p for p in self.pairs if p.status == "failed"]


def experiment_dir(cfg: ExperimentConfig, out: str | Path | None = None) -> Path:
    return Path(out).expanduser() if out else Path(cfg.output_dir).expanduser() / cfg.name


@contextmanager
def experiment_logging(exp_dir: Path, *, console: bool = True) -> Iterator[Path]:
    """Log to a timestamped file in ``exp_dir/logs`` (and the console) while the block runs."""
    logs = exp_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"execution_log_{datetime.now():%Y%m%d_%H%M%S}.txt"
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

    from ferlab.training.device import describe_device

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
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": describe_device(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def _resolve_path(ds: DatasetConfig) -> str:
    if ds.name == "synthetic":
        return ds.path
    return str(Path(ds.path).expanduser())


class DataStore:
    """Datasets loaded once per (dataset, size, channels) for the whole experiment."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self._cache: dict[tuple[str, int, int], LoadedDataset] = {}

    def get(self, ds: DatasetConfig, size: int, channels: int) -> LoadedDataset:
        from ferlab.data.loading import load_dataset

        key = (ds.display, size, channels)
        if key not in self._cache:
            d = self.cfg.data
            t0 = time.perf_counter()
            loaded = load_dataset(
                ds.name,
                _resolve_path(ds),
                size=size,
                channels=channels,
                cache_dir=d.cache_dir,
                on_bad_file=d.on_bad_file,
                split_seed=d.split_seed,
                val_fraction=d.val_fraction,
                test_fraction=d.test_fraction,
                options=dict(ds.options),
                log=log.info,
                display=ds.display,
            )
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
        from ferlab.data.mega import build_mega

        key = ("mega", size, channels)
        if key not in self._cache:
            wanted = set(self.cfg.mega.datasets)
            parts = [
                self.get(ds, size, channels)
                for ds in self.cfg.datasets
                if not wanted or ds.display in wanted
            ]
            self._cache[key] = build_mega(
                parts, balance_sources=self.cfg.mega.balance_sources, seed=self.cfg.seed
            )
        return self._cache[key]


def model_geometry(cfg: ExperimentConfig, m: ModelConfig) -> tuple[int, int]:
    return m.image_size or cfg.data.image_size, m.channels or cfg.data.channels


def _dataset_entries(cfg: ExperimentConfig) -> list[DatasetConfig | None]:
    """The training datasets; ``None`` stands for the mega dataset."""
    entries: list[DatasetConfig | None] = list(cfg.datasets)
    if cfg.mega.enabled:
        entries.append(None)
    return entries


def _get_data(store: DataStore, entry: DatasetConfig | None, size: int, ch: int) -> LoadedDataset:
    return store.mega(size, ch) if entry is None else store.get(entry, size, ch)


def write_data_outputs(
    cfg: ExperimentConfig, store: DataStore, exp_dir: Path
) -> dict[str, dict[str, Any]]:
    """Per dataset: a data JSON and class-distribution plots before and after balancing."""
    from ferlab.labels import CANONICAL
    from ferlab.reporting.distribution import plot_distribution
    from ferlab.training import class_counts_after_balancing

    out = exp_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    size, ch = cfg.data.image_size, cfg.data.channels
    for entry in _dataset_entries(cfg):
        data = _get_data(store, entry, size, ch)
        per_class: dict[str, dict[str, int]] = {}
        for split_name, split in data.splits.items():
            counts = np.bincount(split.labels, minlength=len(CANONICAL))
            per_class[split_name] = {n: int(counts[CANONICAL.index(n)]) for n in data.labels}
        splits = {s: {"total": sum(c.values()), "per_class": c} for s, c in per_class.items()}
        summary = {
            "dataset": data.name,
            "labels": data.labels,
            "protocol": data.protocol,
            "fingerprint": data.fingerprint,
            "splits": splits,
            "bad_files": len(data.bad_files),
            "bad_file_examples": [
                {"path": b.path, "reason": b.reason} for b in data.bad_files[:20]
            ],
            "excluded": data.excluded,
        }
        write_metrics_json(out / f"{data.name}_data.json", summary)
        plot_distribution(
            per_class,
            out / f"{data.name}_dist_original.png",
            f"{data.name}: class distribution",
        )
        balanced = class_counts_after_balancing(
            data.splits["train"].labels, cfg.train.balance, cfg.seed
        )
        plot_distribution(
            {f"train ({cfg.train.balance})": {n: int(balanced.get(n, 0)) for n in data.labels}},
            out / f"{data.name}_dist_balanced.png",
            f"{data.name}: training classes after balancing ({cfg.train.balance})",
        )
        summaries[data.name] = summary
    return summaries


def _eval_dir(exp_dir: Path, train_name: str, model_name: str, test_name: str) -> Path:
    return exp_dir / "eval" / f"{train_name}__{model_name}" / f"on_{test_name}"


def _eval_key(run_key: str, test: LoadedDataset, cfg: ExperimentConfig) -> str:
    return config_hash(
        {
            "run": run_key,
            "test": test.fingerprint,
            "eval": cfg.eval.model_dump(mode="json"),
            "seed": cfg.seed,
            "format": EVAL_FORMAT,
        }
    )


def evaluate_pair(
    model: Any,
    meta: Any,
    test: LoadedDataset,
    out_dir: Path,
    *,
    cfg: ExperimentConfig,
    ids: dict[str, Any],
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate a model on ``test``'s test split (with and without TTA) and write the files.

    Reuses a previous evaluation when its key (weights, test data, eval settings) matches.
    """
    from ferlab.evaluation import evaluate, write_predictions

    metrics_path = out_dir / "metrics.json"
    key = _eval_key(ids["run_key"], test, cfg)
    if metrics_path.exists() and not force:
        old = json.loads(metrics_path.read_text())
        if old.get("eval_key") == key and (out_dir / "probs.npz").exists():
            return dict(old)
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
    metrics = {**ids, "test_dataset": test.name, "eval_key": key, **result.metrics}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(out_dir, split.keys, result)
    write_metrics_json(metrics_path, metrics)
    return metrics


def _fit_or_reuse(
    data: LoadedDataset,
    m: ModelConfig,
    cfg: ExperimentConfig,
    exp_dir: Path,
    *,
    force: bool,
    progress: bool,
) -> tuple[Any, Any, str, Path, bool]:
    from ferlab.models import load_model
    from ferlab.training import clear_run, fit, is_complete, run_key

    size, ch = model_geometry(cfg, m)
    tcfg = cfg.train_for(m)
    key = run_key(data.fingerprint, m, tcfg, {"image_size": size, "channels": ch}, cfg.seed)
    run_dir = exp_dir / "runs" / data.name / f"{m.display}-{key[:8]}"
    if force and run_dir.exists():
        clear_run(run_dir)
    if is_complete(run_dir):
        log.info("[%s / %s] reusing the completed run in %s", data.name, m.display, run_dir)
        model, meta = load_model(run_dir)
        return model, meta, key, run_dir, True
    log.info("[%s / %s] training into %s", data.name, m.display, run_dir)
    result = fit(
        data,
        m,
        tcfg,
        run_dir,
        seed=cfg.seed,
        image_size=size,
        channels=ch,
        log=log.info,
        progress=progress,
    )
    return result.model, result.meta, key, run_dir, False


def run_experiment(
    cfg: ExperimentConfig,
    *,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    console: bool = True,
    on_pair_done: Callable[[PairStatus], None] | None = None,
) -> ExperimentResult:
    """Train and evaluate every (dataset, model) pair, then ensembles and the report."""
    exp_dir = experiment_dir(cfg, out)
    exp_dir.mkdir(parents=True, exist_ok=True)
    with experiment_logging(exp_dir, console=console) as log_path:
        log.info("ferlab %s: experiment %r in %s", __version__, cfg.name, exp_dir)
        log.info("Log file: %s", log_path)
        dump_config(cfg, exp_dir / "config.yaml")
        write_metrics_json(exp_dir / "environment.json", environment_info())
        return _run(cfg, exp_dir, force=force, progress=progress, on_pair_done=on_pair_done)


def _validate_datasets(cfg: ExperimentConfig, store: DataStore) -> None:
    """Index and decode every dataset up front: bad input fails before any training."""
    for m in cfg.models:
        size, ch = model_geometry(cfg, m)
        for ds in cfg.datasets:
            store.get(ds, size, ch)


def _run(
    cfg: ExperimentConfig,
    exp_dir: Path,
    *,
    force: bool,
    progress: bool,
    on_pair_done: Callable[[PairStatus], None] | None,
) -> ExperimentResult:
    from ferlab.evaluation import ensemble_from_files
    from ferlab.reporting import build_report, format_console_table

    result = ExperimentResult(exp_dir=exp_dir)
    store = DataStore(cfg)
    _validate_datasets(cfg, store)
    write_data_outputs(cfg, store, exp_dir)

    for entry in _dataset_entries(cfg):
        for m in cfg.models:
            size, ch = model_geometry(cfg, m)
            train_name = "mega" if entry is None else entry.display
            status = PairStatus(dataset=train_name, model=m.display, status="ok")
            try:
                data = _get_data(store, entry, size, ch)
                model, meta, key, run_dir, reused = _fit_or_reuse(
                    data, m, cfg, exp_dir, force=force, progress=progress
                )
                status.run_dir = str(run_dir)
                status.status = "reused" if reused else "ok"
                ids = {"train_dataset": data.name, "model": m.display, "run_key": key}
                tests = [data]
                if cfg.eval.cross_dataset:
                    tests += [
                        _get_data(store, other, size, ch)
                        for other in _dataset_entries(cfg)
                        if (other is None) != (entry is None)
                        or (other is not None and entry is not None and other != entry)
                    ]
                for test in tests:
                    metrics = evaluate_pair(
                        model,
                        meta,
                        test,
                        _eval_dir(exp_dir, data.name, m.display, test.name),
                        cfg=cfg,
                        ids=ids,
                        force=force,
                    )
                    best = metrics.get("tta") or metrics["plain"]
                    log.info(
                        "[%s / %s] on %s: accuracy %.2f%% (TTA), balanced %.2f%%, macro-F1 %.2f%%",
                        data.name,
                        m.display,
                        test.name,
                        100 * best["accuracy"],
                        100 * best["balanced_accuracy"],
                        100 * best["macro_f1"],
                    )
            except (KeyboardInterrupt, SystemExit):
                raise
            except DatasetError:
                raise
            except Exception as e:  # one failed pair must not stop the others
                status.status = "failed"
                status.error = f"{type(e).__name__}: {e}"
                log.error(
                    "[%s / %s] failed: %s\n%s", train_name, m.display, e, traceback.format_exc()
                )
            result.pairs.append(status)
            if on_pair_done:
                on_pair_done(status)

    if cfg.eval.ensembles and len(cfg.models) > 1:
        for entry in _dataset_entries(cfg):
            train_name = "mega" if entry is None else entry.display
            try:
                done = ensemble_from_files(
                    exp_dir, train_name, bootstrap=cfg.eval.bootstrap, seed=cfg.seed
                )
                if done:
                    log.info("[%s / ensemble] soft vote over %d models", train_name, done)
            except Exception as e:
                log.error("[%s / ensemble] failed: %s", train_name, e)

    write_metrics_json(exp_dir / "status.json", {"pairs": [p.__dict__ for p in result.pairs]})
    report = build_report(exp_dir)
    from ferlab.reporting import collect_summary

    result.summary_rows = collect_summary(exp_dir)
    result.report = report
    table = format_console_table(result.summary_rows)
    log.info("\nSummary (own test split; TTA columns use the configured views)\n%s", table)
    if result.failed:
        log.warning(
            "%d of %d pairs failed: %s. Rerun the same command to retry them.",
            len(result.failed),
            len(result.pairs),
            ", ".join(f"{p.dataset}/{p.model}" for p in result.failed),
        )
    log.info("Report: %s", report.resolve())
    return result
