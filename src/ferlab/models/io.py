"""Trained models on disk: ``weights.safetensors`` + ``meta.json``, written atomically.

The metadata says everything needed to rebuild and run a model without a config file:
architecture and its kwargs, output labels in order, input size, channels and normalisation.
Files are data only: loading never runs code from them (no pickles), and every write goes
through ``ferlab.layout.atomic_write`` (a temporary file renamed into place), so a kill never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ferlab import __version__, layout
from ferlab.device import pick_device
from ferlab.labels import CANONICAL
from ferlab.layout import META, WEIGHTS
from ferlab.models.pretrained import WeightsMismatchError, read_state_file
from ferlab.models.registry import create_model

META_FORMAT = "ferlab-model/1"
_HEADER_KEY = "ferlab_meta"  # the metadata is also stored in the safetensors header


@dataclass
class ModelMeta:
    """How to rebuild a trained model and feed it: saved beside its weights as ``meta.json``.

    ``labels`` are canonical emotion names in output order (unit i is ``labels[i]``);
    ``mean``/``std`` are per channel, applied to pixels scaled to [0, 1].
    """

    architecture: str
    labels: list[str]
    image_size: int = 48
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    kwargs: dict[str, Any] = field(default_factory=dict)
    ferlab_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        unknown = [n for n in self.labels if n not in CANONICAL]
        if unknown or not self.labels:
            raise ValueError(
                f"ModelMeta.labels must be canonical emotion names ({', '.join(CANONICAL)}); "
                f"got {self.labels!r}"
            )
        if self.channels < 1 or self.image_size < 1:
            raise ValueError(
                f"channels and image_size must be >= 1, got {self.channels}, {self.image_size}"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} need one value per channel ({self.channels})"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists) tagged with the metadata format."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return {"format": META_FORMAT, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Rebuild from ``to_dict``'s output; unknown keys (a newer ferlab) are ignored with a warning."""
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


# ---------------------------------------------------------------- save / load


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as standalone contiguous CPU tensors (safetensors refuses shared
    storage, so tied or sliced tensors are copied)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        whole = storage.nbytes() == t.numel() * t.element_size()
        if storage.data_ptr() in seen or not whole:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def save_model(model: nn.Module, meta: ModelMeta, directory: str | Path) -> Path:
    """Write ``directory/weights.safetensors`` then ``directory/meta.json``; returns the weights path.

    The metadata is written last (and is also kept in the safetensors header), so a folder with
    a ``meta.json`` always has complete weights beside it.
    """
    directory = Path(directory)
    header = {"format": "pt", _HEADER_KEY: json.dumps(meta.to_dict())}
    blob = safetensors.torch.save(plain_state_dict(model), metadata=header)
    weights = layout.atomic_write(directory / WEIGHTS, blob)
    layout.atomic_write(directory / META, meta.to_json() + "\n")
    return weights


def _locate(path: Path) -> tuple[Path, Path]:
    """(weights file, meta.json) for a run folder, a weights file or a meta.json."""
    if path.is_dir():
        return path / WEIGHTS, path / META
    if path.name == META:
        return path.parent / WEIGHTS, path
    return path, path.parent / META


def read_meta(path: str | Path) -> ModelMeta:
    """The metadata for a run folder or weights file (``meta.json``, else the safetensors header)."""
    weights, meta_path = _locate(Path(path))
    if meta_path.is_file():
        try:
            return ModelMeta.from_json(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{meta_path}: invalid model metadata: {e}") from e
    if weights.suffix == ".safetensors" and weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            header = fh.metadata() or {}
        if _HEADER_KEY in header:
            return ModelMeta.from_json(header[_HEADER_KEY])
    raise FileNotFoundError(
        f"No model metadata for {path}: expected {meta_path} (written by ferlab.models.save_model "
        "beside the weights)."
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild a saved model from its run folder or weights file; returns (model in eval mode, meta).

    The architecture is rebuilt from the metadata and the weights are loaded strictly; no code
    is executed from any file. ``device`` is ``"auto"`` or any device ``ferlab.device.pick_device``
    accepts.
    """
    weights, _ = _locate(Path(path))
    if not weights.is_file():
        raise FileNotFoundError(
            f"No weights at {weights}: pass a run folder holding {WEIGHTS} and {META}, "
            "or the weights file itself."
        )
    meta = read_meta(path)
    model = create_model(
        meta.architecture,
        len(meta.labels),
        meta.channels,
        image_size=meta.image_size,
        **meta.kwargs,
    )
    state = read_state_file(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsMismatchError(
            f"{weights} does not fit {meta.architecture} as described by its metadata "
            f"({len(meta.labels)} classes, {meta.channels} channels, kwargs {meta.kwargs}): {e}"
        ) from e
    return model.to(pick_device(device, setting="load_model(device=...)")).eval(), meta
