"""The run cache: a completed run is reused only when everything that shaped it is the same.

The key hashes the dataset fingerprint, the model, the effective training config, the data
geometry, the seed, ferlab's full version and the digest of the training code
(``ferlab.provenance``). Hardware settings live in the ``runtime`` section and are not part of
it; display labels are left out. A run folder counts as complete only with its ``DONE``
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
from ferlab.layout import DONE, META, WEIGHTS
from ferlab.provenance import code_digest

# Model fields that only name the run or are already folded into the effective TrainConfig
# and the data geometry.
_MODEL_IGNORED = frozenset({"label", "train", "image_size", "channels"})


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pretrained_id(pretrained: bool | str) -> Any:
    """``True``/``False`` as is; a weights file (or a run folder's weights and ``meta.json``,
    whose labels decide whether the head is kept) by content, so a replaced file retrains."""
    if isinstance(pretrained, bool):
        return pretrained
    p = Path(pretrained).expanduser()
    files = [p] if p.is_file() else [p / WEIGHTS, p / META] if p.is_dir() else []
    return {
        "path": str(pretrained),
        "sha256": [_file_digest(f) if f.is_file() else None for f in files] or None,
    }


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
    blob = {
        "dataset": dataset_fingerprint,
        "model": model,
        "train": train_cfg.model_dump(mode="json"),
        "data": data_cfg_subset,
        "seed": seed,
        "ferlab": __version__,
        "code": code_digest("train"),
    }
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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


def clear_run(run_dir: Path) -> None:
    """Delete a run folder (``--force``): the marker first, so a half-deleted folder is never
    mistaken for complete."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    (run_dir / DONE).unlink(missing_ok=True)
    shutil.rmtree(run_dir)
