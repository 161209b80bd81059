"""Dataset adapters on the real datasets in ../shared/datasets (skipped when absent).

The expected numbers are those of ../shared/datasets/README.md.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from conftest import shared_dataset
from ferlab.data.adapters.expw import expw
from ferlab.data.adapters.fer2013 import fer2013
from ferlab.data.adapters.ferplus import ferplus
from ferlab.data.base import DatasetIndex
from ferlab.labels import CANONICAL, EMOTIONS

pytestmark = pytest.mark.realdata


def per_class(index: DatasetIndex, split: str) -> dict[str, int]:
    return dict(Counter(CANONICAL[r.label] for r in index.splits[split]))


FER_TRAIN = {
    "angry": 3995,
    "disgust": 436,
    "fear": 4097,
    "happy": 7215,
    "neutral": 4965,
    "sad": 4830,
    "surprise": 3171,
}
FER_TEST = {
    "angry": 958,
    "disgust": 111,
    "fear": 1024,
    "happy": 1774,
    "neutral": 1233,
    "sad": 1247,
    "surprise": 831,
}


def test_fer2013_folder_release_counts() -> None:
    root = shared_dataset("fer2013")
    start = time.perf_counter()
    index = fer2013(root)
    seconds = time.perf_counter() - start
    assert per_class(index, "train") == FER_TRAIN
    assert len(index.splits["val"]) == 3589 and len(index.splits["test"]) == 3589
    assert all(Path(r.path).name.startswith("PublicTest_") for r in index.splits["val"])
    assert all(Path(r.path).name.startswith("PrivateTest_") for r in index.splits["test"])
    both = Counter(per_class(index, "val")) + Counter(per_class(index, "test"))
    assert dict(both) == FER_TEST
    assert not index.bad_files and index.labels == list(EMOTIONS)
    assert seconds < 5, f"indexing FER2013 took {seconds:.1f} s"
    whole = fer2013(root, split_by_prefix=False)
    assert per_class(whole, "test") == FER_TEST and "val" not in whole.splits


def test_expw_cropped_faces() -> None:
    index = expw(shared_dataset("expw"))
    total = Counter[str]()
    for split in index.splits:
        total.update(per_class(index, split))
    assert dict(total) == dict.fromkeys(EMOTIONS, 815)
    assert sum(total.values()) == 5705 and not index.bad_files
    # Split per image by a hash of (seed, key): about 10% of each class of 815 in test.
    test = per_class(index, "test")
    assert set(test) == set(EMOTIONS) and all(60 <= n <= 105 for n in test.values()), test
    same_root = expw(shared_dataset("expw/Expw-F"))
    assert [r.path for r in same_root.splits["val"]] == [r.path for r in index.splits["val"]]


def test_expw_label_list_faces_and_clipping() -> None:
    root = shared_dataset("expw-origin")
    index = expw(root)
    records = [r for split in index.splits.values() for r in split]
    assert len(records) == 315 and not index.bad_files
    assert dict(Counter(CANONICAL[r.label] for r in records)) == dict.fromkeys(EMOTIONS, 45)
    assert len({r.path for r in records}) == 297
    for r in records:
        assert r.box is not None
        width, height = Image.open(r.path).size
        left, top, right, bottom = r.box
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
    boxes = Counter((Path(r.path).name, r.box) for r in records)
    past_border = 0
    for line in (root / "label.lst").read_text().splitlines():
        name, _, top, left, right, bottom, _, _ = line.split()
        width, height = Image.open(root / "origin" / name).size
        raw = (int(left), int(top), int(right), int(bottom))
        inside = (max(raw[0], 0), max(raw[1], 0), min(raw[2], width), min(raw[3], height))
        past_border += inside != raw
        assert boxes[(name, inside)] >= 1, f"{name}: no face record with box {inside}"
    assert past_border > 0  # the real list has boxes past the border; they were clipped


def test_ferplus_majority_counts() -> None:
    index = ferplus(shared_dataset("ferplus"))
    assert per_class(index, "val") == {
        "neutral": 1180,
        "happy": 862,
        "surprise": 411,
        "sad": 348,
        "angry": 289,
        "fear": 60,
        "disgust": 25,
        "contempt": 16,
    }
    assert per_class(index, "test") == {
        "neutral": 1083,
        "happy": 892,
        "surprise": 394,
        "sad": 382,
        "angry": 269,
        "fear": 86,
        "disgust": 16,
        "contempt": 15,
    }
    assert sum(index.excluded.values()) == (3579 - 3191) + (3573 - 3137)
    assert not index.bad_files and "train" not in index.splits


def test_expw_label_list_faces_of_one_photo_share_a_split() -> None:
    index = expw(shared_dataset("expw-origin"))
    split_of: dict[str, set[str]] = {}
    faces = Counter[str]()
    for split, records in index.splits.items():
        for r in records:
            split_of.setdefault(r.path, set()).add(split)
            faces[r.path] += 1
    assert len(split_of) == 297 and sum(faces.values()) == 315
    assert max(faces.values()) > 1  # some photos hold several faces
    straddling = {p: s for p, s in split_of.items() if len(s) > 1}
    assert not straddling, straddling
    assert {s for splits in split_of.values() for s in splits} == {"train", "val", "test"}
    assert not index.bad_files and not index.ignored


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "rel", "litter_in"),
    [
        ("fer2013", "fer2013", "train/happy"),
        ("expw", "expw", "Expw-F/sad"),
        ("expw", "expw-origin", "origin"),
        ("ferplus", "ferplus", "FER2013Test"),
    ],
)
def test_a_copy_with_litter_and_bom_csvs_counts_like_the_clean_one(
    tmp_path: Path, name: str, rel: str, litter_in: str
) -> None:
    """The real datasets as a Mac user's unpacked archive: litter in the root and a class
    folder, list files re-saved by an editor (BOM, CRLF). Same counts as the clean copy."""
    from adapter_fakes import write_litter
    from ferlab.data.inspect import inspect_dataset

    clean = shared_dataset(rel)
    copy = tmp_path / rel
    for src in clean.rglob("*"):
        dst = copy / src.relative_to(clean)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.suffix.lower() in (".csv", ".lst", ".txt"):
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_text(encoding="utf-8")
            dst.write_bytes(("\ufeff" + text.replace("\r\n", "\n")).replace("\n", "\r\n").encode())
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    litter = write_litter(copy)
    for kind, n in write_litter(copy / litter_in).items():
        litter[kind] = litter.get(kind, 0) + n
    a = inspect_dataset(name, str(clean), decode=False, with_cache=False)
    b = inspect_dataset(name, str(copy), decode=False, with_cache=False)
    assert b["splits"] == a["splits"] and b["bad_files"] == a["bad_files"]
    assert b["excluded"] == a["excluded"] and sum(s["total"] for s in b["splits"].values()) > 0
    for kind, n in litter.items():
        assert b["ignored"].get(kind, 0) - a["ignored"].get(kind, 0) == n, kind
