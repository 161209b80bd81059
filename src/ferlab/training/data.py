"""Batches over in-memory uint8 arrays, and the class-balancing samplers.

A split stays one uint8 tensor (N, H, W, C) for the whole run: no decoding per epoch, no
DataLoader workers, no per-image Python. A batch is an index slice; the LightningModule turns it
into floats, augments and normalises it on the training device. Randomness derives from
(seed, epoch) so a run resumed at an epoch boundary draws exactly what an uninterrupted one did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ferlab.data.base import ArraySplit
from ferlab.labels import CANONICAL, INDEX

BALANCE_MODES = ("oversample", "weighted", "none")
# Splits larger than this stay memory-mapped (gathered per batch by numpy) instead of in RAM.
IN_MEMORY_LIMIT_BYTES = 4 * 1024**3

Batch = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]  # x uint8 (B,H,W,C), y (B,), soft (B,K)|(0,)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (seed, epoch, step, rank, purpose), stable across runs."""
    blob = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1


def label_positions(labels: Sequence[str]) -> np.ndarray:
    """Lookup table canonical index -> output position (-1 for classes the model lacks)."""
    lut = np.full(len(CANONICAL), -1, dtype=np.int64)
    for pos, name in enumerate(labels):
        lut[INDEX[name]] = pos
    return lut


def remap_targets(canonical: np.ndarray, labels: Sequence[str], *, where: str = "") -> np.ndarray:
    """Canonical indices -> positions in ``labels``; a label outside ``labels`` is an error."""
    lut = label_positions(labels)
    out = lut[np.asarray(canonical, dtype=np.int64)]
    if (out < 0).any():
        bad = sorted({CANONICAL[i] for i in np.asarray(canonical)[out < 0]})
        raise ValueError(
            f"{where or 'split'} holds classes {bad} that are not in the label list {list(labels)}; "
            "the dataset's `labels` must list every class its splits use."
        )
    return out


def class_counts(targets: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)


def oversample_indices(labels: np.ndarray, epoch: int, seed: int) -> np.ndarray:
    """One epoch of random oversampling (the seed's RandomOverSampler, redrawn every epoch).

    Every sample appears once; each class present is topped up with draws (with replacement) from
    its own samples until it has as many as the largest class; the result is shuffled. Indices
    only: no image is duplicated in memory. Same (labels, seed, epoch) -> same indices.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, epoch, "oversample"))
    classes, counts = np.unique(labels, return_counts=True)
    if classes.size == 0:
        return np.zeros(0, dtype=np.int64)
    target = int(counts.max())
    parts = []
    for c, n in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == c)
        parts.append(members)
        if n < target:
            parts.append(rng.choice(members, size=target - int(n), replace=True))
    idx = np.concatenate(parts)
    return idx[rng.permutation(idx.size)]


def epoch_indices(
    labels: np.ndarray, balance: str, epoch: int, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """The training order for one epoch: oversampled, or a plain shuffle ("weighted", "none").

    ``groups`` (mega dataset with ``balance_sources``) replaces the classes as the cells that
    oversampling evens out, whatever ``balance`` says.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"train.balance must be one of {BALANCE_MODES}; got {balance!r}.")
    if groups is not None:
        return oversample_indices(groups, epoch, seed)
    if balance == "oversample":
        return oversample_indices(labels, epoch, seed)
    rng = np.random.default_rng(derive_seed(seed, epoch, "shuffle"))
    return rng.permutation(len(labels)).astype(np.int64)


def class_counts_after_balancing(
    labels: np.ndarray, balance: str, seed: int, groups: np.ndarray | None = None
) -> dict[str, int]:
    """Per canonical class name, how many samples one training epoch draws (for the plots).

    ``labels`` are canonical indices; ``groups`` the split's oversampling cells when it has
    them (the mega dataset's (source, class) cells), exactly as the sampler uses them.
    ``weighted`` and ``none`` draw each sample once (weighting changes the loss, not the counts).
    """
    labels = np.asarray(labels, dtype=np.int64)
    idx = epoch_indices(labels, balance, 0, seed, groups=groups)
    counts = np.bincount(labels[idx], minlength=len(CANONICAL))
    return {name: int(counts[i]) for i, name in enumerate(CANONICAL) if counts[i] > 0}


def class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised so that the mean weight per sample is 1.

    w_c = N / (K_present * n_c) (scikit-learn's "balanced"); classes absent from training get 0.
    """
    counts = class_counts(targets, num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes, dtype=np.float64)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def images_tensor(images: np.ndarray) -> torch.Tensor | np.ndarray:
    """The split's uint8 (N, H, W, C) images as one in-RAM tensor (or the memmap if very large)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, C); got {images.dtype} {images.shape}."
        )
    if images.nbytes > IN_MEMORY_LIMIT_BYTES:
        return images  # gathered per batch straight from the memory map
    return torch.from_numpy(np.array(images, copy=True, order="C"))


def _take(images: torch.Tensor | np.ndarray, idx: np.ndarray) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.index_select(0, torch.from_numpy(idx))
    order = np.argsort(idx, kind="stable")  # sequential reads from the memmap
    out = np.empty((idx.size, *images.shape[1:]), dtype=np.uint8)
    out[order] = images[idx[order]]
    return torch.from_numpy(out)


class TrainBatches:
    """Training batches for one rank: the epoch's index list, sharded, sliced into batches.

    Lightning calls ``sampler.set_epoch(epoch)`` before each epoch (``sampler`` is this object);
    the index list is drawn lazily at the first batch, from (seed, epoch). Under DDP every rank
    draws the same list, pads it to a multiple of the world size and takes every world-th index,
    so all ranks run the same number of steps.
    """

    def __init__(
        self,
        split: ArraySplit,
        targets: np.ndarray,
        *,
        batch_size: int,
        balance: str,
        seed: int,
        soft: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if len(split) == 0:
            raise ValueError("the training split is empty; nothing to train on.")
        self.images = images_tensor(split.images)
        self.targets_np = np.asarray(targets, dtype=np.int64)
        self.targets = torch.from_numpy(self.targets_np.copy())
        self.soft = None if soft is None else torch.from_numpy(np.asarray(soft, dtype=np.float32))
        self.batch_size = batch_size
        self.balance = balance
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.sampler = self  # Lightning's _set_sampler_epoch looks for ``.sampler.set_epoch``
        self.groups = split.groups
        self._epoch_size = len(epoch_indices(self.targets_np, balance, 0, seed, self.groups))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rank_indices(self, epoch: int) -> np.ndarray:
        idx = epoch_indices(self.targets_np, self.balance, epoch, self.seed, self.groups)
        if self.world_size > 1:
            per_rank = -(-idx.size // self.world_size)
            pad = per_rank * self.world_size - idx.size
            if pad:
                idx = np.concatenate([idx, idx[:pad]])
            idx = idx[self.rank :: self.world_size]
        return idx

    def __len__(self) -> int:
        per_rank = -(-self._epoch_size // self.world_size)
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self._batches()

    def _batches(self) -> Iterator[Batch]:
        # A generator: nothing runs until the first ``next``, after Lightning's ``set_epoch``.
        idx = self.rank_indices(self.epoch)
        empty = torch.zeros(0)
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            t = torch.from_numpy(sel)
            soft = self.soft.index_select(0, t) if self.soft is not None else empty
            yield _take(self.images, sel), self.targets.index_select(0, t), soft


class EvalBatches:
    """Validation batches in order; under DDP rank r takes samples r, r+world, ... (no padding,
    so metrics summed over ranks count every sample exactly once).

    ``subset_seed``: visit the samples in an order seeded by it (the same every epoch), so that
    the first batches, all ``limit_val_batches`` lets through, are a random subset of every
    class rather than the first classes of a class-sorted split.
    """

    def __init__(
        self,
        split: ArraySplit,
        targets: np.ndarray,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        subset_seed: int | None = None,
    ) -> None:
        self.images = images_tensor(split.images)
        order = np.arange(len(split), dtype=np.int64)
        if subset_seed is not None:
            order = np.random.default_rng(derive_seed(subset_seed, "val-subset")).permutation(order)
        self.idx = order[rank::world_size]
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.int64)[self.idx].copy())
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.idx.size // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        empty = torch.zeros(0)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield _take(self.images, self.idx[sl]), self.targets[sl], empty
