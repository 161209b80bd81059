"""Trained models on disk: ``weights.safetensors`` + ``meta.json``, written atomically.

The metadata (``ferlab.models.meta``) says everything needed to rebuild and run a model
without a config file. Files are data only: loading never runs code from them (no pickles),
and every write goes through ``ferlab.layout.atomic_write`` (a temporary file renamed into
place), so a kill never leaves a half-written file under the final name. Loading treats both
files as hostile input: any failure is a ``ferlab.models.errors.WeightsError`` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ferlab import layout
from ferlab.device import pick_device
from ferlab.layout import META, WEIGHTS
from ferlab.models.errors import (
    WeightsMetadataError,
    WeightsMismatchError,
    WeightsNotFoundError,
    one_line,
)
from ferlab.models.meta import (
    HEADER_KEY,
    META_FORMAT,
    ModelMeta,
    locate,
    read_meta,
    resolve_weights,
)
from ferlab.models.pretrained import classifier_prefixes, fit_problems, read_state_file
from ferlab.models.registry import create_model

__all__ = [
    "META_FORMAT",
    "ModelMeta",
    "load_model",
    "plain_state_dict",
    "read_meta",
    "save_model",
]


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
    header = {"format": "pt", HEADER_KEY: json.dumps(meta.to_dict())}
    blob = safetensors.torch.save(plain_state_dict(model), metadata=header)
    weights = layout.atomic_write(directory / WEIGHTS, blob)
    layout.atomic_write(directory / META, meta.to_json() + "\n")
    return weights


def _build(meta: ModelMeta, meta_source: str) -> nn.Module:
    """The architecture the metadata names; a name or kwargs ferlab cannot build is the
    metadata's fault (the message names its file)."""
    try:
        return create_model(
            meta.architecture,
            len(meta.labels),
            meta.channels,
            image_size=meta.image_size,
            **meta.kwargs,
        )
    except Exception as e:  # any error of a constructor fed hand-edited kwargs
        raise WeightsMetadataError(
            f"{meta_source}: cannot build architecture {meta.architecture!r} with kwargs "
            f"{one_line(repr(meta.kwargs), 120)} ({type(e).__name__}: {one_line(e)}). Fix "
            "architecture/kwargs there, or copy the run's meta.json again."
        ) from e


def _mismatch_details(model: nn.Module, state: dict[str, torch.Tensor], meta: ModelMeta) -> str:
    """What differs between the weights and the model the metadata describes, on one line."""
    parts: list[str] = []
    for prefix in classifier_prefixes(model):
        w = state.get(f"{prefix}.weight")
        if w is not None and w.ndim >= 1 and w.shape[0] != len(meta.labels):
            parts.append(
                f"the weights hold {w.shape[0]} classes but the metadata lists "
                f"{len(meta.labels)} labels"
            )
    parts += fit_problems(model.state_dict(), state)
    return "; ".join(parts)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild a saved model from its run folder or weights file; returns (model in eval mode, meta).

    The architecture is rebuilt from the metadata and the weights are loaded strictly; no code
    is executed from any file. ``device`` is ``"auto"`` or any device ``ferlab.device.pick_device``
    accepts. Every problem with the files raises a ``WeightsError`` naming the file: missing
    weights or metadata, a refused pickle, a truncated file, invalid metadata, or metadata that
    describes another model than the weights hold.
    """
    weights, meta_path = locate(resolve_weights(path))
    if not weights.is_file():
        raise WeightsNotFoundError(
            f"No weights at {weights}: pass a run folder holding {WEIGHTS} and {META}, "
            "or the weights file itself."
        )
    meta = read_meta(path)
    meta_source = str(meta_path) if meta_path.is_file() else f"the metadata in {weights}"
    state = read_state_file(weights)
    model = _build(meta, meta_source)
    details = _mismatch_details(model, state, meta)
    if details:
        raise WeightsMismatchError(
            f"{weights} does not fit {meta.architecture} as described by its metadata "
            f"({len(meta.labels)} classes, {meta.channels} channels, kwargs "
            f"{one_line(repr(meta.kwargs), 120)}): "
            f"{details}. The metadata and the weights come from different models: keep the "
            f"{META} saved with these weights, or fix architecture, labels and kwargs in "
            f"{meta_source}."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied
        raise WeightsMismatchError(
            f"{weights}: cannot load into {meta.architecture}: {one_line(e)}"
        ) from e
    return model.to(pick_device(device, setting="load_model(device=...)")).eval(), meta
