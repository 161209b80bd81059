"""The experiment folder: every path and file name in it, and the one atomic writer.

Everything that writes or reads an experiment folder goes through ``Layout`` (paths) and
``atomic_write``/``write_json``/``read_json`` (files), so the layout is spelled once::

    <experiment>/
      config.yaml  environment.json  plan.json  status.json  logs/execution_log_<time>.txt
      data/<dataset>_data.json  <dataset>_splits.json  <dataset>_dist_original.png
           <dataset>_dist_balanced.png  leakage.json
      runs/<dataset>/<model>-<key8>/   weights.safetensors  meta.json  splits.json  history.csv
                                       fit.json  DONE  checkpoints/  logs/ (Lightning CSV/TB)
      eval/<dataset>__<model>/on_<test dataset>/  metrics.json  predictions.csv  probs.npz
                                                 reliability.png
      plots/<dataset>_<model>_cm_TTA.png  <dataset>_<model>_cm.png  <dataset>_<model>_curves.png
      cross_dataset_evaluation.png  cross_dataset_evaluation_balanced_accuracy.png
      cross_dataset.csv  summary.csv  summary.md  comparisons.csv  report.html
      tune/journal.log  study.json  trials.csv  best.yaml  importances.json  history.png  intermediate.png
           importances.png   (``ferlab tune``; its trials are ordinary run folders in runs/)

    with several training seeds (``seeds:``, ``ferlab run --seeds K``), per seed <k>:
      runs/<dataset>/<model>-<key8>/             (the run key covers the seed: one folder each)
      eval/<dataset>__<model>/seed<k>/on_<test dataset>/   (the same files as above)
      plots/<dataset>_<model>_seed<k>_cm.png ...           (the first seed's, shown in the report)
      per_seed.csv  across_seeds.csv             (every seed's numbers; mean and std per test set)

Names in paths are ``safe_name`` of the display names; the experiment's ``plan.json`` holds
the display names and the folders they map to, so nothing ever parses a folder name back.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATES_DIR = Path(__file__).parent / "templates"  # the HTML pages: report, gallery

# -- file names inside a run folder (written by ferlab.training.fit and ferlab.models) ---------
WEIGHTS = "weights.safetensors"
META = "meta.json"
SPLITS = "splits.json"  # the keys of every split the run was trained and validated on
HISTORY = "history.csv"
FIT_JSON = "fit.json"
DONE = "DONE"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
TRAIN_LOGS = "logs"  # Lightning's CSV (and TensorBoard) loggers

# -- file names inside an evaluation folder ----------------------------------------------------
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
PROBS = "probs.npz"
RELIABILITY = "reliability.png"  # reliability diagram (ferlab.reporting), rebuilt from metrics.json
LOCK_NAME = ".lock"  # an experiment folder's (one ferlab run) or a run folder's (one trainer)

# -- file names inside tune/ (written by ferlab.tuning) --------------------------------------------
TUNE_JOURNAL = "journal.log"  # Optuna's JournalStorage file: the study, shared by workers
TUNE_TRIALS = "trials.csv"
TUNE_BEST = "best.yaml"  # the experiment file with the best trial's parameters
TUNE_IMPORTANCES = "importances.json"
TUNE_STUDY = "study.json"  # the study's name, storage, metric, counts and best trial
TUNE_PLOTS = ("history", "intermediate", "importances")

# -- reserved display names --------------------------------------------------------------------
MEGA = "mega"  # the dataset that combines the training datasets
ENSEMBLE = "ensemble"  # the soft-voting ensemble of a dataset's models


class ReportInputError(ValueError):
    """A file in the experiment folder is unreadable or has the wrong shape."""


def safe_name(text: str) -> str:
    """A file-name-safe version of a dataset or model name (``tv:resnet50`` -> ``tv_resnet50``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")
    return cleaned or "unnamed"


def seed_name(seed: int) -> str:
    """The folder level (and plot-name part) of one training seed of several: ``seed3``."""
    return f"seed{int(seed)}"


# -- files -------------------------------------------------------------------------------------
def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half.

    The bytes go to a temporary file beside ``path`` (same filesystem), are fsynced, and the
    file is renamed over ``path``; a kill leaves at worst a hidden ``.*.tmp`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported everywhere (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def jsonable(obj: Any) -> Any:
    """numpy values -> Python; NaN and infinities -> None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (numpy values converted, NaN as null)."""
    text = json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, text)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; the error names the file and how to regenerate it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportInputError(
            f"cannot read {path}: {e}. The file is damaged; delete it and rerun `ferlab run` "
            "on the same experiment to regenerate it."
        ) from e


# -- the experiment folder ---------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Every path of one experiment folder. Dataset and model arguments are display names."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    # top level
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        """Held by the one ``ferlab run`` working in this folder (PID, host, start time)."""
        return self.root / LOCK_NAME

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log_file(self, stamp: str) -> Path:
        return self.logs_dir / f"execution_log_{stamp}.txt"

    def log_files(self) -> list[Path]:
        """The execution logs, oldest first."""
        return sorted(self.logs_dir.glob("execution_log_*.txt"))

    @property
    def summary_csv(self) -> Path:
        return self.root / "summary.csv"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def comparisons_csv(self) -> Path:
        """Paired comparisons of the models trained on one dataset (``evaluation.analysis``)."""
        return self.root / "comparisons.csv"

    @property
    def per_seed_csv(self) -> Path:
        """Several training seeds: one row per (pair, seed, test set) (``evaluation.analysis``)."""
        return self.root / "per_seed.csv"

    @property
    def across_seeds_csv(self) -> Path:
        """Several training seeds: mean and std across seeds per (pair, test set)."""
        return self.root / "across_seeds.csv"

    @property
    def cross_csv(self) -> Path:
        return self.root / "cross_dataset.csv"

    def cross_png(self, metric: str) -> Path:
        """The seed's ``cross_dataset_evaluation.png`` for accuracy; one more per other metric."""
        if metric == "accuracy":
            return self.root / "cross_dataset_evaluation.png"
        return self.root / f"cross_dataset_evaluation_{metric}.png"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # data
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def data_json(self, dataset: str) -> Path:
        return self.data_dir / f"{safe_name(dataset)}_data.json"

    @property
    def leakage(self) -> Path:
        """Per (train dataset, test set): test images training or model selection already saw."""
        return self.data_dir / "leakage.json"

    def splits_json(self, dataset: str) -> Path:
        return self.data_dir / f"{safe_name(dataset)}_splits.json"

    def dist_original(self, dataset: str) -> Path:
        return self.data_dir / f"{safe_name(dataset)}_dist_original.png"

    def dist_balanced(self, dataset: str) -> Path:
        return self.data_dir / f"{safe_name(dataset)}_dist_balanced.png"

    # runs and evaluations
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, dataset: str, model: str, key: str) -> Path:
        """A training run's folder. The run key covers the training seed, so each seed of a
        pair has its own folder, and a seed's run is the same folder (reused) whether the
        experiment trains it alone or beside other seeds."""
        return self.runs_dir / safe_name(dataset) / f"{safe_name(model)}-{key[:8]}"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, dataset: str, model: str, test: str, seed: int | None = None) -> Path:
        """A pair's evaluation on ``test``; ``seed``: one seed's of several (its own level)."""
        pair = self.eval_root / f"{safe_name(dataset)}__{safe_name(model)}"
        if seed is not None:
            pair = pair / seed_name(seed)
        return pair / f"on_{safe_name(test)}"

    # plots
    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def pair_plot(self, dataset: str, model: str, kind: str, seed: int | None = None) -> Path:
        """``kind``: ``cm`` (plain), ``cm_tta`` (the seed's ``_cm_TTA.png``) or ``curves``;
        ``seed``: one training seed's of several."""
        suffix = {"cm": "cm", "cm_tta": "cm_TTA", "curves": "curves"}[kind]
        name = f"{safe_name(dataset)}_{safe_name(model)}"
        if seed is not None:
            name += f"_{seed_name(seed)}"
        return self.plots_dir / f"{name}_{suffix}.png"

    # tuning (ferlab tune)
    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"

    @property
    def tune_journal(self) -> Path:
        return self.tune_dir / TUNE_JOURNAL

    @property
    def tune_trials(self) -> Path:
        return self.tune_dir / TUNE_TRIALS

    @property
    def tune_best(self) -> Path:
        return self.tune_dir / TUNE_BEST

    @property
    def tune_importances(self) -> Path:
        return self.tune_dir / TUNE_IMPORTANCES

    @property
    def tune_study(self) -> Path:
        return self.tune_dir / TUNE_STUDY

    def tune_plot(self, kind: str) -> Path:
        """``kind``: ``history`` (objective per trial), ``intermediate`` (per-epoch values,
        pruned vs completed) or ``importances``."""
        if kind not in TUNE_PLOTS:
            raise ValueError(f"unknown tuning plot {kind!r}; known: {', '.join(TUNE_PLOTS)}")
        return self.tune_dir / f"{kind}.png"

    # what is on disk (for the "not in this plan" list: never read for numbers)
    def run_dirs_on_disk(self) -> list[Path]:
        return sorted(p for p in self.runs_dir.glob("*/*") if p.is_dir())

    def eval_dirs_on_disk(self) -> list[Path]:
        found = [*self.eval_root.glob("*/on_*"), *self.eval_root.glob("*/seed*/on_*")]
        return sorted(p for p in found if p.is_dir())

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the experiment folder (so a moved folder still works)."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    def resolve(self, relative: str | Path) -> Path:
        """A path recorded relative to the experiment folder, made absolute again."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def looks_like_experiment(self) -> bool:
        return any(p.exists() for p in (self.config, self.plan, self.status, self.runs_dir))
