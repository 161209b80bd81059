"""The run cache: a completed run is reused only when everything that shaped it is the same.

The key hashes the dataset fingerprint, the model, the effective training config, the data
geometry, the seed and ferlab's major version. Fields that cannot change the result (thread
count, display labels) are left out. A run folder counts as complete only with its ``DONE``
marker, which ``fit`` writes atomically after the weights and metadata; a run killed at any
point has no ``DONE`` and is resumed or retrained, never reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ferlab import __version__
from ferlab.config import ModelConfig, TrainConfig

DONE = "DONE"
WEIGHTS = "weights.safetensors"
META = "meta.json"
# Training fields that do not change what is learned.
_TRAIN_IGNORED = frozenset({"threads"})
# Model fields that only name the run or are already folded into the effective TrainConfig
# and the data geometry.
_MODEL_IGNORED = frozenset({"label", "train", "batch_size", "image_size", "channels"})


def major_version(version: str = __version__) -> str:
    return version.split(".", 1)[0]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pretrained_id(pretrained: bool | str) -> Any:
    """``True``/``False`` as is; a weights file by its content, so a replaced file retrains."""
    if isinstance(pretrained, bool):
        return pretrained
    p = Path(pretrained).expanduser()
    return {"path": str(pretrained), "sha256": _file_digest(p) if p.is_file() else None}


def run_key(
    dataset_fingerprint: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data_cfg_subset: dict[str, Any],
    seed: int,
) -> str:
    """The hex sha256 identifying a training run (the folder name uses its first 8 digits)."""
    model = {k: v for k, v in model_cfg.model_dump(mode="json").items() if k not in _MODEL_IGNORED}
    model["pretrained"] = _pretrained_id(model_cfg.pretrained)
    train = {k: v for k, v in train_cfg.model_dump(mode="json").items() if k not in _TRAIN_IGNORED}
    blob = {
        "dataset": dataset_fingerprint,
        "model": model,
        "train": train,
        "data": data_cfg_subset,
        "seed": seed,
        "ferlab_major": major_version(),
    }
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_dir_name(model_cfg: ModelConfig, key: str) -> str:
    return f"{model_cfg.display}-{key[:8]}"


def is_complete(run_dir: Path) -> bool:
    """True when ``run_dir`` holds ``DONE`` and weights + metadata that load."""
    run_dir = Path(run_dir)
    if not (run_dir / DONE).is_file():
        return False
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / META).is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(run_dir / WEIGHTS), framework="pt") as f:
            f.keys()
        json.loads((run_dir / META).read_text())
    except Exception:  # any unreadable file means: not reusable, train again
        return False
    return True


def find_completed_run(runs_dir: Path, model_cfg: ModelConfig, key: str) -> Path | None:
    """The completed run folder for ``key`` under ``runs_dir``, or None."""
    d = Path(runs_dir) / run_dir_name(model_cfg, key)
    return d if is_complete(d) else None


def clear_run(run_dir: Path) -> None:
    """Delete a run folder (``--force``): the marker first, so a half-deleted folder is never
    mistaken for complete."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    (run_dir / DONE).unlink(missing_ok=True)
    shutil.rmtree(run_dir)
