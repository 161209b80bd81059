"""Duplicates the run looks for on every dataset: within a split, across splits, across datasets.

Two hashes per decoded image (the uint8 arrays of the cache, so no file is read again):

- ``exact``: a hash of the pixels. Byte-identical files decode to identical pixels.
- ``near``: a 64-bit average hash (the image shrunk to 8x8 cell means, one bit per cell: above
  the image's mean or not). It survives re-encoding: FER+ ships FER2013's faces as PNG, the
  common FER2013 release as JPEG, and about 96% of FER+ test images hash like a FER2013
  PrivateTest image, while unrelated faces rarely collide (near-blank images do).

``leakage(train, test)`` counts the test images that training or model selection has already
seen: the number that inflates a test score, shown in the report beside it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import numpy as np

from ferlab.data.base import LoadedDataset

_CELLS = 8


def exact_hashes(images: np.ndarray) -> np.ndarray:
    """``(N,)`` uint64: a hash of each image's pixels."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(np.ascontiguousarray(im).data, digest_size=8).digest())
            for im in images
        ],
        dtype=np.uint64,
    )


def near_hashes(images: np.ndarray) -> np.ndarray:
    """``(N,)`` uint64 average hashes of ``(N, H, W, C)`` uint8 images (grey, 8x8 cells)."""
    x = np.asarray(images, dtype=np.float32)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.uint64)
    x = x.mean(axis=3)  # (N, H, W)
    n, h, w = x.shape
    hc, wc = max(1, h // _CELLS), max(1, w // _CELLS)
    x = x[:, : hc * _CELLS, : wc * _CELLS].reshape(n, _CELLS, hc, _CELLS, wc).mean(axis=(2, 4))
    bits = (x.reshape(n, -1) > x.reshape(n, -1).mean(axis=1, keepdims=True)).astype(np.uint8)
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


_MEMO: dict[tuple[str, str, str], np.ndarray] = {}


def _hashes(data: LoadedDataset, split: str, kind: str) -> np.ndarray:
    """The hashes of one split, computed once per (dataset fingerprint, split, kind)."""
    key = (data.fingerprint, split, kind)
    if key not in _MEMO:
        images = data.splits[split].images
        _MEMO[key] = exact_hashes(images) if kind == "exact" else near_hashes(images)
    return _MEMO[key]


def split_duplicates(data: LoadedDataset) -> dict[str, Any]:
    """Within one dataset: duplicate groups, groups that span splits, test images seen in
    train or val, for both hashes."""
    out: dict[str, Any] = {}
    for kind in ("exact", "near"):
        where: dict[int, set[str]] = defaultdict(set)
        count: dict[int, int] = defaultdict(int)
        hashes = {s: _hashes(data, s, kind) for s in data.splits}
        for s, hs in hashes.items():
            for h in hs.tolist():
                where[h].add(s)
                count[h] += 1
        groups = [h for h, c in count.items() if c > 1]
        cross = [h for h in groups if len(where[h]) > 1]
        seen = set().union(*(set(hashes[s].tolist()) for s in ("train", "val") if s in hashes))
        test = hashes.get("test", np.zeros(0, dtype=np.uint64)).tolist()
        out[kind] = {
            "groups": len(groups),
            "images_in_groups": int(sum(count[h] for h in groups)),
            "cross_split_groups": len(cross),
            "test_images_seen_in_train_or_val": int(sum(h in seen for h in test))
            if "train" in hashes
            else 0,
        }
    return out


def leakage(train: LoadedDataset, test: LoadedDataset) -> dict[str, Any]:
    """How many of ``test``'s test images ``train``'s train and val splits already hold."""
    if "test" not in test.splits:
        return {"n_test": 0}
    out: dict[str, Any] = {"n_test": len(test.splits["test"])}
    for kind in ("exact", "near"):
        target = _hashes(test, "test", kind)
        either = np.zeros(len(target), dtype=bool)
        for split in ("train", "val"):
            if split in train.splits:
                seen = np.isin(target, _hashes(train, split, kind))
                out[f"{kind}_in_{split}"] = int(seen.sum())
                either |= seen
        out[f"{kind}_in_either"] = int(either.sum())  # an image in both splits counts once
    return out
