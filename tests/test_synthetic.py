"""The built-in synthetic faces: determinism, shapes, domains, balance, splits and learnability."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ferlab.data.adapters.synthetic import DOMAINS, draw_seed, label_of_seed, render, synthetic
from ferlab.data.base import DatasetError, Record
from ferlab.labels import CANONICAL, EMOTIONS, INDEX


def _images(records: list[Record], size: int = 32, channels: int = 1) -> np.ndarray:
    return np.stack([render(r.draw[0], r.draw[1], size, channels) for r in records if r.draw])


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_bytes_and_different_seeds_differ(domain: str) -> None:
    a = render(domain, 12345, 48, 3)
    assert a.tobytes() == render(domain, 12345, 48, 3).tobytes()
    others = [render(domain, 12345 + 8 * k, 48, 3) for k in range(1, 4)]  # same class
    assert all(not np.array_equal(a, o) for o in others)
    assert not np.array_equal(a, render(domain, 12346, 48, 3))  # next class


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("size", [32, 48, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_render_shape_and_dtype(domain: str, size: int, channels: int) -> None:
    img = render(domain, draw_seed(7, INDEX["happy"]), size, channels)
    assert img.shape == (size, size, channels)
    assert img.dtype == np.uint8
    assert img.flags["C_CONTIGUOUS"]
    assert img.std() > 5  # a drawn face, not a blank image


def test_other_sizes_render() -> None:
    for size in (8, 100, 224):
        assert render("wild", 3, size, 3).shape == (size, size, 3)


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="domain"):
        render("studio", 0, 48, 1)
    with pytest.raises(ValueError, match="channels"):
        render("lab", 0, 48, 2)
    with pytest.raises(ValueError, match="size"):
        render("lab", 0, 4, 1)
    with pytest.raises(ValueError, match="seed"):
        render("lab", -8, 48, 1)


def test_domains_differ_in_colour_statistics() -> None:
    seeds = [draw_seed(b, b % 7) for b in range(40)]
    lab = np.stack([render("lab", s, 32, 3) for s in seeds]).astype(np.float32)
    wild = np.stack([render("wild", s, 32, 3) for s in seeds]).astype(np.float32)
    # lab is grayscale: identical channels; wild has colour (channels differ per pixel)
    assert np.abs(lab[..., 0] - lab[..., 1]).max() == 0
    assert np.abs(wild[..., 0] - wild[..., 2]).mean() > 10
    # wild backgrounds are cluttered and noisy: more variation within the image corners
    corner = (slice(None), slice(0, 6), slice(0, 6))
    assert wild[corner].std(axis=(1, 2)).mean() > 2 * lab[corner].std(axis=(1, 2)).mean()
    # one channel of a colour domain is its luma
    grey = render("wild", seeds[0], 32, 1)[..., 0].astype(np.float32)
    luma = wild[0] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.abs(grey - luma).max() <= 1


def test_seed_encodes_the_class() -> None:
    for label in range(len(CANONICAL)):
        assert label_of_seed(draw_seed(123, label)) == label
    with pytest.raises(ValueError):
        draw_seed(0, len(CANONICAL))


def test_index_is_balanced_with_disjoint_split_seeds() -> None:
    index = synthetic("lab")
    assert index.name == "synthetic" and index.root == "lab" and not index.color
    assert index.labels == list(EMOTIONS)
    assert {s: len(r) for s, r in index.splits.items()} == {"train": 1400, "val": 300, "test": 300}
    assert Counter(r.label for r in index.splits["train"]) == {INDEX[c]: 200 for c in EMOTIONS}
    for records in index.splits.values():
        counts = Counter(r.label for r in records).values()
        assert max(counts) - min(counts) <= 1
        assert all(r.draw is not None and label_of_seed(r.draw[1]) == r.label for r in records)
        assert all(r.path == "synthetic:lab" and r.draw and r.draw[0] == "lab" for r in records)
    seeds = {s: {r.draw[1] for r in recs if r.draw} for s, recs in index.splits.items()}
    assert len(seeds["train"]) == 1400
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"]
    assert not seeds["val"] & seeds["test"]
    assert "seed 0" in index.protocol and "disjoint" in index.protocol


def test_options_counts_seed_and_contempt() -> None:
    index = synthetic(
        "wild", n_train=17, n_val=0, n_test=9, seed=3, classes=[*EMOTIONS, "contempt"]
    )
    assert index.color and index.labels == list(CANONICAL)
    assert set(index.splits) == {"train", "test"}  # n_val=0: the loader carves val
    counts = Counter(r.label for r in index.splits["train"])
    assert len(index.splits["train"]) == 17 and set(counts.values()) == {2, 3}
    assert counts[INDEX["contempt"]] == 2
    other = synthetic(
        "wild", n_train=17, n_val=0, n_test=9, seed=4, classes=[*EMOTIONS, "contempt"]
    )
    assert {r.draw for r in index.splits["train"]}.isdisjoint(r.draw for r in other.splits["train"])
    again = synthetic(
        "wild", n_train=17, n_val=0, n_test=9, seed=3, classes=[*EMOTIONS, "contempt"]
    )
    assert again.splits == index.splits


def test_mixed_domain_has_both_domains_in_every_class() -> None:
    for root in ("mixed", ""):
        index = synthetic(root, n_train=28, n_val=14, n_test=14)
        assert index.root == "mixed" and index.color
        pairs = Counter((r.draw[0], r.label) for r in index.splits["train"] if r.draw)
        assert set(pairs.values()) == {2}
        assert {d for d, _ in pairs} == set(DOMAINS)


def test_classes_subset_uses_synonyms() -> None:
    index = synthetic("lab", n_train=20, n_val=4, n_test=4, classes="happiness, sadness")
    assert index.labels == ["happy", "sad"]
    assert {r.label for r in index.splits["train"]} == {INDEX["happy"], INDEX["sad"]}


@pytest.mark.parametrize(
    ("root", "options", "match"),
    [
        ("studio", {}, "Unknown synthetic domain 'studio'"),
        ("lab", {"n_trian": 5}, "Unknown option.*n_trian.*Accepted options"),
        ("lab", {"n_train": -1}, "n_train=-1"),
        ("lab", {"seed": 1.5}, "seed=1.5"),
        ("lab", {"classes": ["happy", "bored"]}, "Unknown class name 'bored'"),
        ("lab", {"classes": ["happy"]}, "at least two classes"),
        ("lab", {"n_train": 3}, "n_train=3 gives some class no training image"),
    ],
)
def test_bad_options_are_clear_errors(root: str, options: dict, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        synthetic(root, **options)


def test_registry_finds_the_adapter() -> None:
    from ferlab.data.base import get_adapter, index_dataset, list_datasets

    assert "synthetic" in list_datasets()
    assert get_adapter("synthetic") is synthetic
    index = index_dataset("synthetic", "wild", n_train=14, n_val=7, n_test=7)
    assert index.root == "wild" and len(index.splits["train"]) == 14


def _standardise(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float32)
    return (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)


def test_expressions_are_learnable_and_domains_shift() -> None:
    """A nearest-centroid classifier on raw lab pixels beats chance (1/7) by far, and loses
    much of it on wild: the classes are visible, and the domains differ."""
    lab = synthetic("lab", n_train=350, n_val=0, n_test=210)
    wild = synthetic("wild", n_train=7, n_val=0, n_test=210)
    x_train = _standardise(_images(lab.splits["train"]))
    y_train = np.array([r.label for r in lab.splits["train"]])
    centroids = np.stack([x_train[y_train == INDEX[c]].mean(0) for c in EMOTIONS])
    order = np.array([INDEX[c] for c in EMOTIONS])

    def accuracy(records: list[Record]) -> float:
        x = _standardise(_images(records))
        d = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
        return float((order[d.argmin(1)] == np.array([r.label for r in records])).mean())

    on_lab, on_wild = accuracy(lab.splits["test"]), accuracy(wild.splits["test"])
    assert on_lab > 0.4, on_lab
    assert on_wild < on_lab - 0.1, (on_lab, on_wild)
