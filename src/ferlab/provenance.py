"""Which code produced a result: ferlab's version and a digest of the source that shapes it.

A run key and an evaluation key include ``code_digest``, so a change to the code that decides
what is learned or measured retrains and re-evaluates instead of reusing old numbers. The rule:

- ``train`` scope: every ``*.py`` file under ``ferlab/data``, ``ferlab/face``,
  ``ferlab/models``, ``ferlab/training``, and ``ferlab/labels.py`` and ``ferlab/calibration.py``
  (data decoding, face cropping and splitting, architectures, the training loop, augmentation,
  sampling, loss, the temperature fitted after training);
- ``eval`` scope: the ``train`` files plus ``ferlab/evaluation`` (TTA, metrics, ensembles).

Config values are keyed by value (the resolved sections are hashed), so ``config.py`` itself
is not part of the digest; neither are reporting, the CLI nor the pipeline's bookkeeping,
which do not change a number. Each digest is the sha256 of the sorted (relative path, content)
pairs and is computed once per process.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

from ferlab import __version__

PACKAGE = Path(__file__).resolve().parent
Scope = Literal["train", "eval"]
_SCOPES: dict[str, tuple[str, ...]] = {
    "train": ("data", "face", "models", "training", "labels.py", "calibration.py"),
    "eval": ("data", "face", "models", "training", "labels.py", "calibration.py", "evaluation"),
}


def source_files(scope: Scope) -> list[Path]:
    """The source files whose content makes up ``scope``'s digest, sorted."""
    files: list[Path] = []
    for part in _SCOPES[scope]:
        path = PACKAGE / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return sorted(files)


@cache
def code_digest(scope: Scope) -> str:
    """The hex sha256 of ``scope``'s source files (first 16 digits)."""
    h = hashlib.sha256()
    for f in source_files(scope):
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stamp(scope: Scope) -> dict[str, Any]:
    """What to record beside a result: version, code digest and when it was made."""
    return {
        "ferlab_version": __version__,
        "code_digest": code_digest(scope),
        "created": datetime.now().isoformat(timespec="seconds"),
    }
