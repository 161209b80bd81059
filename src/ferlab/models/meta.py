"""A trained model's metadata: ``meta.json`` beside its weights (and a copy in their header).

The metadata says everything needed to rebuild and run a model without a config file:
architecture and its kwargs, output labels in order, input size, channels, normalisation and
the softmax temperature fitted on the validation split (``ferlab.calibration``).
It is read from files a user may have edited or been sent, so every field is checked and any
failure is a ``WeightsMetadataError`` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ferlab import __version__
from ferlab.labels import CANONICAL
from ferlab.layout import META, WEIGHTS
from ferlab.models.errors import (
    WeightsMetadataError,
    WeightsNotFoundError,
    one_line,
    unreadable_safetensors,
)

META_FORMAT = "ferlab-model/1"
HEADER_KEY = "ferlab_meta"  # the metadata is also stored in the safetensors header
SAVE_HINT = "ferlab.models.save_model writes both"
# create_model's own arguments: an architecture kwarg of these names would override them
RESERVED_KWARGS = frozenset(
    {"name", "num_classes", "channels", "in_chans", "pretrained", "image_size", "labels"}
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ModelMeta:
    """How to rebuild a trained model and feed it: saved beside its weights as ``meta.json``.

    ``labels`` are canonical emotion names in output order (unit i is ``labels[i]``);
    ``mean``/``std`` are per channel, applied to pixels scaled to [0, 1]. ``temperature`` is
    the scalar T of the calibrated probabilities ``softmax(logits / T)``, fitted on the
    validation split after training (1.0: uncalibrated, and what metadata written before
    temperatures existed reads as). It never changes the predicted class.
    """

    architecture: str
    labels: list[str]
    image_size: int = 48
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    kwargs: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    ferlab_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arch = self.architecture
        if not (isinstance(arch, str) and arch and arch.isprintable() and len(arch) <= 200):
            raise ValueError(f"architecture must be a model name, got {one_line(repr(arch), 200)}")
        if not isinstance(self.labels, list | tuple) or not all(
            isinstance(n, str) for n in self.labels
        ):
            raise ValueError(f"labels must be a list of emotion names, got {self.labels!r}")
        self.labels = list(self.labels)
        unknown = [n for n in self.labels if n not in CANONICAL]
        if unknown or not self.labels:
            raise ValueError(
                f"ModelMeta.labels must be canonical emotion names ({', '.join(CANONICAL)}); "
                f"got {self.labels!r}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels name a class twice: {self.labels!r}")
        if not (_is_int(self.channels) and _is_int(self.image_size)):
            raise ValueError(
                f"channels and image_size must be integers, got {self.channels!r}, "
                f"{self.image_size!r}"
            )
        if self.channels < 1 or self.image_size < 1:
            raise ValueError(
                f"channels and image_size must be >= 1, got {self.channels}, {self.image_size}"
            )
        if isinstance(self.mean, str | bytes | dict) or isinstance(self.std, str | bytes | dict):
            raise ValueError(f"mean and std must be lists, got {self.mean!r}, {self.std!r}")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} need one value per channel ({self.channels})"
            )
        if any(not s > 0 for s in self.std):  # `not >` also refuses NaN
            raise ValueError(f"std values must be > 0, got {self.std}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(
                f"temperature must be a finite number > 0 (1.0 for uncalibrated), got {t!r}"
            )
        self.temperature = float(t)
        if not isinstance(self.kwargs, dict) or not isinstance(self.extra, dict):
            raise ValueError(
                f"kwargs and extra must be mappings, got {type(self.kwargs).__name__}, "
                f"{type(self.extra).__name__}"
            )
        reserved = sorted(RESERVED_KWARGS & set(self.kwargs))
        if reserved:  # e.g. kwargs.pretrained would make loading read another file
            raise ValueError(
                f"kwargs may not set {reserved}: create_model takes them from the other fields"
            )
        # extra.data is how ferlab.evaluate reloads the run's dataset: a mapping, as written
        data = self.extra.get("data")
        if data is not None and not (
            isinstance(data, dict) and isinstance(data.get("options") or {}, dict)
        ):
            raise ValueError(
                one_line(f"extra.data must be the dataset spec (a mapping), got {data!r}", 200)
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists) tagged with the metadata format."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return {"format": META_FORMAT, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Rebuild from ``to_dict``'s output; unknown keys (a newer ferlab) are ignored with a warning."""
        if not isinstance(data, dict):
            raise ValueError(f"model metadata must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", META_FORMAT)
        if not str(fmt).startswith("ferlab-model/"):
            raise ValueError(
                f"not ferlab model metadata (format {fmt!r}, expected {META_FORMAT!r})"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"model metadata: ignoring unknown keys {unknown}", stacklevel=2)
        missing = [n for n in ("architecture", "labels") if n not in data]
        if missing:
            raise ValueError(f"model metadata lacks {missing}; it cannot rebuild the model")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        return cls.from_dict(json.loads(text))


DEFAULT = "default"  # what --weights / load_model call the model shipped inside the package
SHIPPED = Path(__file__).resolve().parent / "default"  # its run folder (weights + meta.json)


def resolve_weights(path: str | os.PathLike[str]) -> Path:
    """The folder or file that ``path`` names: the word ``"default"`` is the model shipped inside
    ferlab (a folder of that name in the working directory is ``./default``), anything else a
    path (``~`` expanded)."""
    if isinstance(path, str) and path == DEFAULT:
        if not (SHIPPED / WEIGHTS).is_file():
            raise WeightsNotFoundError(
                f"This ferlab build ships no default model ({SHIPPED} holds no {WEIGHTS}). "
                "Pass --weights RUN_FOLDER (a folder written by ferlab run or ferlab train), or "
                "train the default recipe yourself: ferlab run fer2013_cpu_quick."
            )
        return SHIPPED
    return Path(path).expanduser()


def locate(path: Path) -> tuple[Path, Path]:
    """(weights file, meta.json) for a run folder, a weights file or a meta.json."""
    if path.is_dir():
        return path / WEIGHTS, path / META
    if path.name == META:
        return path.parent / WEIGHTS, path
    return path, path.parent / META


def _parse(text: str, where: str, weights: Path) -> ModelMeta:
    try:
        return ModelMeta.from_json(text)
    except (ValueError, TypeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise WeightsMetadataError(
            f"{where} is not valid ferlab model metadata ({one_line(e)}). It must be the "
            f"meta.json saved with {weights.name} ({SAVE_HINT}); copy it again from the run "
            "folder, or fix the named field."
        ) from e


def _header_meta(weights: Path) -> str | None:
    """The metadata JSON in a safetensors header, or None (reads the header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable_safetensors(weights, e) from e
    value = header.get(HEADER_KEY)
    return value if isinstance(value, str) else None


def find_meta(path: str | Path) -> ModelMeta | None:
    """The metadata of a run folder or weights file: its ``meta.json``, else the metadata in
    a safetensors header, else None. Metadata that is there but invalid is an error."""
    weights, meta_path = locate(resolve_weights(path))
    if meta_path.is_file():
        try:
            text = meta_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise WeightsMetadataError(
                f"{meta_path} cannot be read as UTF-8 text ({one_line(e)}); copy the run's "
                "meta.json again."
            ) from e
        return _parse(text, str(meta_path), weights)
    if weights.suffix == ".safetensors" and weights.is_file():
        header = _header_meta(weights)
        if header is not None:
            return _parse(header, f"the {HEADER_KEY!r} header of {weights}", weights)
    return None


def read_meta(path: str | Path) -> ModelMeta:
    """The metadata for a run folder or weights file (``meta.json``, else the safetensors header)."""
    meta = find_meta(path)
    if meta is None:
        weights, meta_path = locate(Path(path))
        raise WeightsMetadataError(
            f"No model metadata for {weights}: expected {meta_path} beside it ({SAVE_HINT}), "
            "naming the architecture and labels needed to rebuild the model. Pass the run "
            "folder, or copy its meta.json beside the weights."
        )
    return meta
