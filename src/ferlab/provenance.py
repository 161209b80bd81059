"""Which code produced a result: ferlab's version and a digest of the source that shapes it.

A run key and an evaluation key include ``code_digest``, so a change to the code that decides
what is learned or measured retrains and re-evaluates instead of reusing old numbers. The rule:

- ``train`` scope: every ``*.py`` file under ``ferlab/data``, ``ferlab/face``,
  ``ferlab/models``, ``ferlab/training``, and ``ferlab/labels.py`` and ``ferlab/calibration.py``
  (data decoding, face cropping and splitting, architectures, the training loop, augmentation,
  sampling, loss, the temperature fitted after training);
- ``eval`` scope: the ``train`` files plus ``ferlab/evaluation`` (TTA, metrics, ensembles)
  and ``ferlab/record/planning.py`` (which evaluations a run plans, and which TTA is the headline),
  less ``evaluation/analysis.py``, which computes the report's tables from recorded results;
- ``decode`` scope: the code that turns a file into pixels (``data/decode.py``,
  ``data/facecrop.py``, ``face/``): part of every decode-cache fingerprint, so an edit there
  decodes again instead of serving pixels the new code would not make.

Config values are keyed by value (the resolved sections are hashed), so ``config.py`` itself
is not part of the digest; neither are reporting, the CLI nor the pipeline's bookkeeping,
which do not change a number. Each digest is the sha256 of the sorted (relative path, content)
pairs and is computed once per process.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from ferlab import __version__

PACKAGE = Path(__file__).resolve().parent
Scope = Literal["train", "eval", "decode"]
_TRAIN = ("data", "face", "models", "training", "labels.py", "calibration.py")
_SCOPES: dict[str, tuple[str, ...]] = {
    "train": _TRAIN,
    "eval": (*_TRAIN, "evaluation", "record/planning.py"),
    "decode": ("data/decode.py", "data/facecrop.py", "face"),
}
# Under a scope's folders but not measuring anything: the report's numbers, read back from files.
_NOT_IN_DIGEST = ("evaluation/analysis.py",)


def source_files(scope: Scope) -> list[Path]:
    """The source files whose content makes up ``scope``'s digest, sorted."""
    files: list[Path] = []
    for part in _SCOPES[scope]:
        path = PACKAGE / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return sorted(f for f in files if f.relative_to(PACKAGE).as_posix() not in _NOT_IN_DIGEST)


@cache
def code_digest(scope: Scope) -> str:
    """The hex sha256 of ``scope``'s source files (first 16 digits)."""
    h = hashlib.sha256()
    for f in source_files(scope):
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# The libraries whose version can change a number ferlab reports (kernels, resizing, decoding,
# architectures), each by the distributions that provide it; the first one installed counts.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "timm": ("timm",),
    "pillow": ("pillow",),
    "opencv": (
        "opencv-python-headless",
        "opencv-python",
        "opencv-contrib-python-headless",
        "opencv-contrib-python",
    ),
    "numpy": ("numpy",),
}


@cache
def library_versions() -> dict[str, str | None]:
    """The installed version of each of ``LIBRARIES`` (``None``: not installed)."""
    out: dict[str, str | None] = {}
    for name, dists in LIBRARIES.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def version_changes(recorded: dict[str, Any] | None) -> list[str]:
    """``["torch 2.13.0 (now 2.14.1)", ...]``: the libraries a recorded stamp names with
    another version than the one installed now (a stamp without versions names none)."""
    then = (recorded or {}).get("versions") or {}
    now = library_versions()
    return [
        f"{name} {then[name] or 'absent'} (now {now.get(name) or 'absent'})"
        for name in sorted(then)
        if name in now and then[name] != now[name]
    ]


def stamp(scope: Scope) -> dict[str, Any]:
    """What to record beside a result: version, code digest, library versions, and when."""
    return {
        "ferlab_version": __version__,
        "code_digest": code_digest(scope),
        "versions": library_versions(),
        "created": datetime.now().isoformat(timespec="seconds"),
    }
