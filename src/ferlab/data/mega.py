"""The mega dataset: several loaded datasets combined into one, each image tagged by source.

Train splits are concatenated into one training set; each source keeps its own val and test
images, concatenated and tagged too, so early stopping sees every source and per-source test
scores come from slicing on ``ArraySplit.sources``. Labels are canonical indices everywhere, so
combining needs no remapping; the result's label list is the union in canonical order.

Channels follow the first dataset: grey is replicated to RGB, RGB becomes luma (the same
ITU-R 601 weights PIL uses in ``decode``). The pipeline decodes every dataset at the model's
channels, so this only matters when a caller mixes decodes. All inputs must share one image
size. The combined arrays live in memory (a copy of the inputs' memory-mapped arrays).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from ferlab.data.base import (
    SPLITS,
    ArraySplit,
    BadFile,
    DatasetError,
    LoadedDataset,
    relative_key,
)
from ferlab.labels import CANONICAL
from ferlab.layout import MEGA as MEGA_NAME


def build_mega(
    datasets: Sequence[LoadedDataset], *, balance_sources: bool = False, seed: int = 0
) -> LoadedDataset:
    """Combine ``datasets`` into the ``mega`` dataset (train, val and test all tagged by source).

    ``balance_sources`` sets the train split's ``groups`` to (source, class) cells, which the
    training sampler's oversampling tops up to the largest cell (indices only, no copies), so that
    every source contributes equally without duplicating images in memory. ``seed`` is kept
    for the fingerprint so that runs with different seeds never share a mega cache key.
    """
    if not datasets:
        raise DatasetError("The mega dataset needs at least one dataset; none were given.")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise DatasetError(
            f"The mega dataset got the same dataset twice ({', '.join(names)}); give each "
            "source once (or a distinct label in the experiment file)."
        )
    hw = _image_size(datasets)
    channels = _channels(datasets[0])
    labels = [n for n in CANONICAL if any(n in d.labels for d in datasets)]
    splits = {
        split: _concat(
            [(d.name, d.root, d.splits[split]) for d in datasets if split in d.splits],
            hw,
            channels,
        )
        for split in SPLITS
    }
    if balance_sources and "train" in splits:
        train = splits["train"]
        tags = {s: i for i, s in enumerate(names)}
        src = np.array([tags[s] for s in train.sources or []], dtype=np.int64)
        train.groups = src * len(CANONICAL) + train.labels
    balance = (
        "train oversampled so every (source, class) cell is drawn as often as the largest"
        if balance_sources
        else "train drawn in proportion to source sizes"
    )
    protocol = (
        f"Mega dataset of {', '.join(names)}: train = all sources' train splits, val and test = "
        f"each source's own val and test, tagged by source; {balance}; "
        f"images at {hw[0]}x{hw[1]}x{channels}."
    )
    return LoadedDataset(
        name=MEGA_NAME,
        labels=labels,
        splits=splits,
        protocol=protocol,
        fingerprint=mega_fingerprint(datasets, balance_sources=balance_sources, seed=seed),
        bad_files=[BadFile(b.path, b.reason) for d in datasets for b in d.bad_files],
        excluded={f"{d.name}: {k}": v for d in datasets for k, v in d.excluded.items()},
        spec={"adapter": MEGA_NAME, "sources": [d.spec for d in datasets]},
    )


def mega_fingerprint(datasets: Sequence[LoadedDataset], *, balance_sources: bool, seed: int) -> str:
    """A sha256 of the inputs' names and fingerprints and the mega settings."""
    blob = {
        "sources": [[d.name, d.fingerprint] for d in datasets],
        "balance_sources": balance_sources,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def source_weights(split: ArraySplit) -> np.ndarray:
    """Per-image sampling weights giving each source the same total weight (sum 1).

    Image *i* gets ``1 / count(source_i)``, normalised; a split without source tags gets
    uniform weights. Feed them to a weighted sampler to balance sources per epoch.
    """
    n = len(split)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if not split.sources:
        return np.full(n, 1.0 / n)
    tags = np.asarray(split.sources)
    _, inverse, counts = np.unique(tags, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].astype(np.float64)
    return weights / weights.sum()


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W, C) uint8 to ``channels``: grey -> RGB by replication, RGB -> grey by luma."""
    have = images.shape[-1]
    if have == channels:
        return np.asarray(images)
    if have == 1 and channels == 3:
        return np.repeat(np.asarray(images), 3, axis=-1)
    if have == 3 and channels == 1:
        rgb = np.asarray(images).astype(np.uint32)
        # PIL's convert("L"): L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 (ITU-R 601-2).
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return luma.astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def _image_size(datasets: Sequence[LoadedDataset]) -> tuple[int, int]:
    sizes = {
        d.name: tuple(int(x) for x in s.images.shape[1:3])
        for d in datasets
        for s in d.splits.values()
        if s.images.ndim == 4
    }
    found = set(sizes.values())
    if len(found) > 1:
        listed = ", ".join(f"{n} {h}x{w}" for n, (h, w) in sizes.items())
        raise DatasetError(
            f"The mega dataset needs one image size for all sources; got {listed}. Decode them "
            "at the same size (the model's image_size)."
        )
    if not found:
        raise DatasetError("The mega dataset's sources hold no images.")
    h, w = found.pop()
    return h, w


def _channels(d: LoadedDataset) -> int:
    for s in d.splits.values():
        if s.images.ndim == 4:
            return int(s.images.shape[-1])
    raise DatasetError(f"{d.name}: no decoded images to take the channel count from.")


def _concat(
    parts: list[tuple[str, str, ArraySplit]], hw: tuple[int, int], channels: int
) -> ArraySplit:
    """One split from each source's split, converted to ``channels`` and tagged by source.

    Keys are ``<source>/<key relative to the source's root>``, so ``ferlab evaluate`` can tell
    which of a source's images a mega run trained on."""
    if not parts:
        return ArraySplit(
            images=np.zeros((0, *hw, channels), dtype=np.uint8),
            labels=np.zeros(0, dtype=np.int64),
            keys=[],
            sources=[],
        )
    images = np.concatenate([convert_channels(s.images, channels) for _, _, s in parts], axis=0)
    labels = np.concatenate([np.asarray(s.labels, dtype=np.int64) for _, _, s in parts])
    keys = [f"{name}/{relative_key(k, root)}" for name, root, s in parts for k in s.keys]
    sources = [name for name, _, s in parts for _ in range(len(s))]
    soft = None
    if any(s.soft is not None for _, _, s in parts):
        soft = np.concatenate([_soft_or_onehot(s) for _, _, s in parts], axis=0)
    return ArraySplit(images=images, labels=labels, keys=keys, soft=soft, sources=sources)


def _soft_or_onehot(split: ArraySplit) -> np.ndarray:
    if split.soft is not None:
        return np.asarray(split.soft, dtype=np.float32)
    onehot = np.zeros((len(split), len(CANONICAL)), dtype=np.float32)
    onehot[np.arange(len(split)), np.asarray(split.labels)] = 1.0
    return onehot
