"""The mega dataset: label union, source tags, per-source val/test, channels, weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ferlab.data.base import ArraySplit, BadFile, DatasetError, LoadedDataset
from ferlab.data.mega import build_mega, convert_channels, source_weights
from ferlab.labels import INDEX


def split(n: int, labels: list[str], channels: int, value: int, size: int = 8) -> ArraySplit:
    rng = np.random.default_rng(value)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    images[:, 0, 0, :] = value  # a marker to find each source's rows again
    lab = np.array([INDEX[labels[i % len(labels)]] for i in range(n)], dtype=np.int64)
    return ArraySplit(images=images, labels=lab, keys=[f"img{i}.png" for i in range(n)])


def dataset(name: str, labels: list[str], sizes: tuple[int, int, int], channels: int, value: int,
            size: int = 8) -> LoadedDataset:  # fmt: skip
    splits = {
        s: split(n, labels, channels, value + k, size)
        for k, (s, n) in enumerate(zip(("train", "val", "test"), sizes, strict=True))
    }
    return LoadedDataset(
        name=name, labels=labels, splits=splits, protocol="given", fingerprint=f"fp-{name}",
        bad_files=[BadFile(f"/{name}/bad.jpg", "file is empty (0 bytes)")],
        excluded={"no majority": 2} if name == "ferplus" else {},
    )  # fmt: skip


@pytest.fixture
def sources() -> list[LoadedDataset]:
    fer = dataset("fer2013", ["angry", "happy", "neutral"], (30, 6, 8), 1, 10)
    ferplus = dataset("ferplus", ["happy", "contempt"], (10, 4, 5), 1, 50)
    return [fer, ferplus]


def test_combines_train_and_keeps_each_val_and_test(sources: list[LoadedDataset]) -> None:
    mega = build_mega(sources)
    assert mega.name == "mega"
    assert mega.labels == ["angry", "happy", "neutral", "contempt"]  # union, canonical order
    sizes = {s: len(a) for s, a in mega.splits.items()}
    assert sizes == {"train": 40, "val": 10, "test": 13}
    for s in ("train", "val", "test"):
        a = mega.splits[s]
        assert a.sources is not None and len(a.sources) == len(a) == len(a.keys) == len(a.images)
        # Slicing on the source tag gives back exactly that source's split.
        for src in sources:
            mask = np.array(a.sources) == src.name
            assert np.array_equal(a.images[mask], src.splits[s].images)
            assert np.array_equal(a.labels[mask], src.splits[s].labels)
    assert mega.splits["test"].keys[0] == "fer2013/img0.png"
    assert [b.path for b in mega.bad_files] == ["/fer2013/bad.jpg", "/ferplus/bad.jpg"]
    assert mega.excluded == {"ferplus: no majority": 2}
    assert "fer2013, ferplus" in mega.protocol


def test_channels_follow_the_first_dataset() -> None:
    grey = dataset("grey", ["happy"], (4, 2, 2), 1, 10)
    colour = dataset("colour", ["sad"], (3, 2, 2), 3, 90)
    mega = build_mega([colour, grey])
    assert mega.splits["train"].images.shape == (7, 8, 8, 3)
    rows = np.array(mega.splits["train"].sources) == "grey"
    reps = mega.splits["train"].images[rows]
    assert np.array_equal(reps[..., 0], reps[..., 2])
    assert np.array_equal(reps[..., :1], grey.splits["train"].images)

    mega1 = build_mega([grey, colour])
    assert mega1.splits["train"].images.shape == (7, 8, 8, 1)
    rows = np.array(mega1.splits["train"].sources) == "colour"
    rgb = colour.splits["train"].images
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    assert np.array_equal(mega1.splits["train"].images[rows][..., 0], expected)


def test_convert_channels_rejects_odd_counts() -> None:
    with pytest.raises(ValueError, match="4-channel"):
        convert_channels(np.zeros((1, 2, 2, 4), dtype=np.uint8), 3)


def test_sizes_must_match() -> None:
    a = dataset("a", ["happy"], (2, 1, 1), 1, 1, size=8)
    b = dataset("b", ["happy"], (2, 1, 1), 1, 1, size=12)
    with pytest.raises(DatasetError, match=r"a 8x8, b 12x12"):
        build_mega([a, b])
    with pytest.raises(DatasetError, match="at least one"):
        build_mega([])
    with pytest.raises(DatasetError, match="twice"):
        build_mega([a, a])


def test_source_weights_balance_sources(sources: list[LoadedDataset]) -> None:
    train = build_mega(sources, balance_sources=True).splits["train"]
    w = source_weights(train)
    assert w.shape == (40,) and np.isclose(w.sum(), 1.0)
    tags = np.array(train.sources)
    assert np.isclose(w[tags == "fer2013"].sum(), 0.5) and np.isclose(
        w[tags == "ferplus"].sum(), 0.5
    )
    assert w[tags == "ferplus"][0] == pytest.approx(3 * w[tags == "fer2013"][0])
    untagged = ArraySplit(images=train.images[:4], labels=train.labels[:4], keys=train.keys[:4])
    assert np.allclose(source_weights(untagged), 0.25)


def test_soft_labels_filled_with_one_hot(sources: list[LoadedDataset]) -> None:
    fer, ferplus = sources
    votes = np.zeros((len(ferplus.splits["train"]), 8), dtype=np.float32)
    votes[:, INDEX["happy"]] = 0.6
    votes[:, INDEX["contempt"]] = 0.4
    ferplus.splits["train"].soft = votes
    train = build_mega(sources).splits["train"]
    assert train.soft is not None and train.soft.shape == (40, 8)
    tags = np.array(train.sources)
    fer_soft = train.soft[tags == "fer2013"]
    assert np.array_equal(fer_soft.argmax(1), fer.splits["train"].labels) and np.all(
        fer_soft.sum(1) == 1
    )
    assert np.allclose(train.soft[tags == "ferplus"], votes)
    assert build_mega(sources).splits["val"].soft is None


def test_fingerprint_depends_on_inputs_and_settings(sources: list[LoadedDataset]) -> None:
    fp = build_mega(sources).fingerprint
    assert fp == build_mega(sources).fingerprint
    assert fp != build_mega(sources, balance_sources=True).fingerprint
    assert fp != build_mega(list(reversed(sources))).fingerprint
    sources[0].fingerprint = "changed"
    assert fp != build_mega(sources).fingerprint


def test_balance_sources_evens_out_source_class_cells(sources: list[LoadedDataset]) -> None:
    from ferlab.training.data import epoch_indices

    plain = build_mega(sources)
    assert plain.splits["train"].groups is None
    mega = build_mega(sources, balance_sources=True)
    train = mega.splits["train"]
    assert train.groups is not None
    assert mega.fingerprint != plain.fingerprint
    idx = epoch_indices(train.labels, "none", epoch=0, seed=0, groups=train.groups)
    cells = {(train.sources[i], int(train.labels[i])) for i in range(len(train))}  # type: ignore[index]
    assert len(cells) == 5  # fer2013 x {angry, happy, neutral} + ferplus x {happy, contempt}
    drawn: dict[tuple[str, int], int] = {}
    for i in idx:
        key = (train.sources[i], int(train.labels[i]))  # type: ignore[index]
        drawn[key] = drawn.get(key, 0) + 1
    assert set(drawn.values()) == {10}  # the largest cell (fer2013: 30 / 3 classes)
    # Without source balancing the small source keeps its natural share.
    idx_plain = epoch_indices(train.labels, "none", epoch=0, seed=0)
    assert len(idx_plain) == len(train) == 40
