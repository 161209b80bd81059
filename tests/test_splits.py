"""Seeded splits: each record is placed by a hash of (seed, key), so splits stay put."""

from __future__ import annotations

import random

from ferlab.data.base import Record, split_unit, stratified_split

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _records(root: str, per_class: dict[int, int]) -> list[Record]:
    return [
        Record(f"{root}/{label}/{i:05d}.jpg", label)
        for label, n in per_class.items()
        for i in range(n)
    ]


def _where(splits: dict[str, list[Record]], root: str = "") -> dict[str, str]:
    return {r.key.removeprefix(root): s for s, recs in splits.items() for r in recs}


def test_adding_one_file_moves_only_that_file() -> None:
    records = _records("/data/jaffe", {0: 30, 3: 40, 6: 25})
    before = _where(stratified_split(records, FRACTIONS, seed=0))
    new = Record("/data/jaffe/0/extra.jpg", 0)
    after = _where(stratified_split([*records, new], FRACTIONS, seed=0))
    assert set(after) == set(before) | {new.key}
    assert {k: after[k] for k in before} == before  # nobody else moved
    # And removing a file moves nobody else either.
    fewer = _where(stratified_split(records[1:], FRACTIONS, seed=0))
    assert fewer == {k: v for k, v in before.items() if k != records[0].key}


def test_split_ignores_listing_order_and_where_the_dataset_lives() -> None:
    records = _records("/data/ck", {1: 50, 4: 50})
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    a = stratified_split(records, FRACTIONS, seed=3)
    b = stratified_split(shuffled, FRACTIONS, seed=3)
    assert {s: [r.key for r in v] for s, v in a.items()} == {
        s: [r.key for r in v] for s, v in b.items()
    }
    moved = stratified_split(_records("/mnt/copy/ck", {1: 50, 4: 50}), FRACTIONS, seed=3)
    assert _where(a, "/data/ck") == _where(moved, "/mnt/copy/ck")


def test_split_proportions_per_class_and_seed() -> None:
    records = _records("/d", {0: 4000, 5: 4000})
    splits = stratified_split(records, FRACTIONS, seed=0)
    for label in (0, 5):
        for name, frac in FRACTIONS.items():
            share = sum(r.label == label for r in splits[name]) / 4000
            assert abs(share - frac) < 0.025, (label, name, share)
    other = stratified_split(records, FRACTIONS, seed=1)
    assert _where(other) != _where(splits)
    assert 0.0 <= split_unit(0, "a/b.jpg#row3") < 1.0
    assert split_unit(0, "/x/a/b.jpg") == split_unit(0, "/y/a/b.jpg")
    assert split_unit(0, "a/b.jpg#row3") != split_unit(0, "a/b.jpg#row4")
