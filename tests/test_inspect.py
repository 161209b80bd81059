"""`ferlab data inspect` behind the CLI: counts, bad files, duplicates, the table and the PNG."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_dataset
from ferlab.data.inspect import format_inspection, inspect_dataset, write_inspection_outputs
from ferlab.labels import EMOTIONS
from ferlab.reporting.distribution import plot_distribution


def _png(seed: int, size: int = 16) -> bytes:
    """A distinct small noise image (distinct bytes per seed)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def fer_like(tmp_path: Path) -> Path:
    """FER2013's folder release in miniature, with planted problems.

    Duplicates: X (train angry + train sad: across classes), Y (train happy + val happy:
    across train/val and the train/ and test/ folders), Z (two train happy: a plain group),
    W (val fear + test fear: across val/test, inside test/). Bad: a zero-byte file and a
    truncated PNG in train/neutral.
    """
    root = tmp_path / "fer2013"
    x, y, z, w = _png(1001), _png(1002), _png(1003), _png(1004)
    seed = iter(range(10_000))
    train = {
        "angry": [_png(next(seed)), _png(next(seed)), x],
        "disgust": [_png(next(seed))],
        "fear": [_png(next(seed)), _png(next(seed))],
        "happy": [y, z, z],
        "sad": [_png(next(seed)), x],
        "surprise": [_png(next(seed))],
        "neutral": [_png(next(seed))],
    }
    for cls, images in train.items():
        for i, data in enumerate(images):
            _write(root / "train" / cls / f"Training_{cls}{i}.png", data)
    _write(root / "train" / "neutral" / "Training_zero.png", b"")
    _write(root / "train" / "neutral" / "Training_trunc.png", _png(2000, size=64)[:300])
    for cls in EMOTIONS:
        public = {"happy": y, "fear": w}.get(cls) or _png(next(seed))
        private = w if cls == "fear" else _png(next(seed))
        _write(root / "test" / cls / f"PublicTest_{cls}.png", public)
        _write(root / "test" / cls / f"PrivateTest_{cls}.png", private)
    return root


def _counts(report: dict, split: str) -> dict[str, int]:
    return report["splits"][split]["per_class"]


def test_fer_like_counts_bad_files_and_duplicates(fer_like: Path, cache_dir: Path) -> None:
    report = inspect_dataset("fer2013", str(fer_like), cache_dir=cache_dir)
    assert report["dataset"] == "fer2013" and report["root"] == str(fer_like)
    assert report["labels"] == list(EMOTIONS)
    assert "PublicTest" in report["protocol"]
    assert list(report["splits"]) == ["train", "val", "test"]
    assert _counts(report, "train") == {
        "angry": 3, "disgust": 1, "fear": 2, "happy": 3, "sad": 2, "surprise": 1, "neutral": 1,
    }  # fmt: skip
    assert report["splits"]["train"]["total"] == 13
    assert report["splits"]["train"]["bad"] == 1  # the truncated file (zero-byte: never listed)
    assert _counts(report, "val") == dict.fromkeys(EMOTIONS, 1)
    assert _counts(report, "test") == dict.fromkeys(EMOTIONS, 1)
    assert report["splits"]["val"]["total"] == report["splits"]["test"]["total"] == 7
    assert report["imbalance_ratio"] == report["splits"]["train"]["imbalance_ratio"] == 3.0
    assert report["splits"]["val"]["imbalance_ratio"] == 1.0

    assert list(report["folders"]) == ["train", "test"]
    assert report["folders"]["train"]["total"] == 13
    assert report["folders"]["test"]["total"] == 14
    assert report["folders"]["test"]["per_class"]["fear"] == 2

    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert set(bad) == {"Training_zero.png", "Training_trunc.png"}
    assert "zero-byte" in bad["Training_zero.png"]

    dup = report["duplicates"]
    assert dup["hashed"] == 27
    assert (dup["groups"], dup["files"]) == (4, 8)
    assert dup["cross_split"] == 1  # Y: train/val
    assert dup["cross_any_split"] == 2  # + W: val/test
    assert dup["cross_class"] == 1  # X: angry/sad
    assert dup["cross_split_or_class"] == 2
    assert dup["cross_folder"] == 1  # Y spans train/ and test/; W stays in test/
    assert dup["split_pairs"] == {"train/val": 1, "val/test": 1}
    # leaks and label noise are listed first
    first_two = [{Path(f).name for f in ex["files"]} for ex in dup["examples"][:2]]
    assert {"Training_happy0.png", "PublicTest_happy.png"} in first_two
    assert {"Training_angry2.png", "Training_sad1.png"} in first_two
    noisy = next(ex for ex in dup["examples"] if "sad" in ex["classes"])
    assert sorted(noisy["classes"]) == ["angry", "sad"] and noisy["splits"] == ["train", "train"]
    assert report["decoded"] == {"size": 48, "channels": 1, "cache": True}
    assert any(cache_dir.iterdir())  # the decode-once cache was built for training to reuse
    json.dumps(report)  # JSON-able


def test_in_memory_decoding_matches_the_cached_path(fer_like: Path, cache_dir: Path) -> None:
    cached = inspect_dataset("fer2013", str(fer_like), cache_dir=cache_dir)
    memory = inspect_dataset("fer2013", str(fer_like), cache_dir=cache_dir, with_cache=False)
    for key in ("splits", "folders", "duplicates", "imbalance_ratio"):
        assert memory[key] == cached[key]
    assert {b["reason"] for b in memory["bad_files"]} == {b["reason"] for b in cached["bad_files"]}
    listed = inspect_dataset("fer2013", str(fer_like), decode=False)
    assert listed["splits"]["train"]["total"] == 14  # the truncated file is only found by decoding
    assert listed["decoded"] is None and len(listed["bad_files"]) == 1


def test_folder_layout_with_synonyms_and_a_non_image(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "faces"
    dup = _png(7)
    _write(root / "train" / "happiness" / "a.png", dup)
    _write(root / "train" / "happiness" / "b.png", _png(8))
    _write(root / "train" / "sadness" / "c.png", _png(9))
    _write(root / "train" / "sadness" / "d.jpg", b"this is not an image at all")
    _write(root / "val" / "happy" / "e.png", _png(10))
    _write(root / "val" / "sad" / "f.png", _png(11))
    _write(root / "test" / "happy" / "g.png", _png(12))
    _write(root / "test" / "sad" / "h.png", dup)  # leaks from train, with another label
    report = inspect_dataset("folder", str(root), cache_dir=cache_dir)
    assert report["labels"] == ["happy", "sad"]
    assert _counts(report, "train") == {"happy": 2, "sad": 1}
    assert {s: report["splits"][s]["total"] for s in ("train", "val", "test")} == {
        "train": 3, "val": 2, "test": 2,
    }  # fmt: skip
    assert report["imbalance_ratio"] == 2.0
    assert [Path(b["path"]).name for b in report["bad_files"]] == ["d.jpg"]
    dup_info = report["duplicates"]
    assert (dup_info["groups"], dup_info["files"]) == (1, 2)
    assert dup_info["cross_split"] == dup_info["cross_class"] == dup_info["cross_folder"] == 1


def test_class_folders_without_splits_have_no_folder_view(tmp_path: Path) -> None:
    root = tmp_path / "jaffe"
    for i in range(10):
        _write(root / "happy" / f"h{i}.png", _png(100 + i))
        _write(root / "angry" / f"a{i}.png", _png(200 + i))
    _write(root / "angry" / "copy.png", _png(100))
    report = inspect_dataset("folder", str(root), decode=False)
    assert sum(s["total"] for s in report["splits"].values()) == 21
    assert report["folders"] == {}
    assert report["duplicates"]["cross_folder"] is None
    assert report["duplicates"]["groups"] == report["duplicates"]["cross_class"] == 1


def test_fer_csv_rows_are_hashed_by_pixels(tmp_path: Path, cache_dir: Path) -> None:
    def pixels(seed: int) -> str:
        return " ".join(map(str, np.random.default_rng(seed).integers(0, 256, 48 * 48)))

    rows = [
        (3, pixels(1), "Training"),
        (3, pixels(2), "Training"),
        (0, pixels(3), "Training"),
        (4, pixels(1), "PrivateTest"),  # same face as row 0, other split and label
        (3, pixels(4), "PublicTest"),
        (5, "1 2 3", "PublicTest"),  # wrong pixel count: a bad row
        (6, pixels(5), "PrivateTest"),
    ]
    csv = tmp_path / "fer2013.csv"
    csv.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))
    report = inspect_dataset("fer2013", str(tmp_path), cache_dir=cache_dir)
    assert {s: v["total"] for s, v in report["splits"].items()} == {"train": 3, "val": 1, "test": 2}
    assert _counts(report, "train")["happy"] == 2 and _counts(report, "test")["sad"] == 1
    assert [b["path"] for b in report["bad_files"]] == [f"{csv}#row5"]
    dup = report["duplicates"]
    assert (dup["groups"], dup["files"], dup["cross_split"], dup["cross_class"]) == (1, 2, 1, 1)
    assert report["folders"] == {} and dup["cross_folder"] is None
    assert report["dataset"] == "fer2013" and report["imbalance_ratio"] is None  # 4 empty classes


def test_synthetic_is_counted_not_hashed(cache_dir: Path) -> None:
    opts = {"n_train": 21, "n_val": 7, "n_test": 14}
    report = inspect_dataset("synthetic", "wild", options=opts, cache_dir=cache_dir)
    assert {s: v["total"] for s, v in report["splits"].items()} == {
        "train": 21,
        "val": 7,
        "test": 14,
    }
    assert set(_counts(report, "test").values()) == {2}
    assert report["imbalance_ratio"] == 1.0 and report["bad_files"] == []
    assert report["duplicates"]["hashed"] == report["duplicates"]["groups"] == 0


def test_format_and_outputs(fer_like: Path, tmp_path: Path) -> None:
    report = inspect_dataset("fer2013", str(fer_like), with_cache=False)
    text = format_inspection(report)
    assert "Protocol:" in text and "By split folder:" in text
    assert "Bad files: 2" in text and "Training_trunc.png" in text
    assert "4 groups (8 files)" in text and "(leakage): 1" in text
    total_line = next(line for line in text.splitlines() if line.startswith("total"))
    assert total_line.split()[1:4] == ["13", "7", "7"]

    paths = write_inspection_outputs(report, tmp_path / "out")
    assert [p.name for p in paths] == ["fer2013_inspect.json", "fer2013_distribution.png"]
    assert json.loads(paths[0].read_text()) == report
    png = paths[1].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    with Image.open(paths[1]) as im:
        assert im.size[0] > 400 and im.size[1] > 300


def test_plot_distribution_single_series_and_empty(tmp_path: Path) -> None:
    out = plot_distribution(
        {"train": {"happy": 5, "sad": 2, "bored": 1}}, tmp_path / "d.png", "t $x"
    )
    assert out.stat().st_size > 2000
    with pytest.raises(ValueError, match="no series"):
        plot_distribution({}, tmp_path / "e.png", "empty")


def test_missing_root_names_it(tmp_path: Path) -> None:
    from ferlab.data.base import DatasetError

    with pytest.raises(DatasetError, match="does not exist"):
        inspect_dataset("fer2013", str(tmp_path / "nowhere"), decode=False)


@pytest.mark.realdata
@pytest.mark.slow
def test_fer2013_real_counts_and_duplicates() -> None:
    root = shared_dataset("fer2013")
    report = inspect_dataset("fer2013", str(root), decode=False)
    assert {s: v["total"] for s, v in report["splits"].items()} == {
        "train": 28709, "val": 3589, "test": 3589,
    }  # fmt: skip
    assert _counts(report, "train") == {
        "angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "sad": 4830,
        "surprise": 3171, "neutral": 4965,
    }  # fmt: skip
    assert report["folders"]["test"]["per_class"] == {
        "angry": 958, "disgust": 111, "fear": 1024, "happy": 1774, "sad": 1247,
        "surprise": 831, "neutral": 1233,
    }  # fmt: skip
    assert report["folders"]["test"]["total"] == 7178
    assert report["bad_files"] == []
    dup = report["duplicates"]
    assert (dup["groups"], dup["files"]) == (1516, 3369)
    assert dup["cross_split"] == dup["cross_folder"] == 531
    assert dup["cross_class"] == 57
    assert dup["cross_split_or_class"] == 563


def test_copied_tree_is_inspected_the_same(fer_like: Path, tmp_path: Path) -> None:
    """Counts depend on the files, not on where the tree sits."""
    copy = tmp_path / "elsewhere" / "fer"
    shutil.copytree(fer_like, copy)
    a = inspect_dataset("fer2013", str(fer_like), decode=False)
    b = inspect_dataset("fer2013", str(copy), decode=False)
    for key in ("splits", "folders", "imbalance_ratio"):
        assert a[key] == b[key]
    assert {k: v for k, v in a["duplicates"].items() if k != "examples"} == {
        k: v for k, v in b["duplicates"].items() if k != "examples"
    }


def test_litter_is_reported_as_ignored(fer_like: Path, cache_dir: Path) -> None:
    from adapter_fakes import write_litter

    clean = inspect_dataset("fer2013", str(fer_like), with_cache=False)
    assert clean["ignored"] == {}
    assert "Ignored (not part of the dataset): 0" in format_inspection(clean)
    expected = write_litter(fer_like)
    for kind, n in write_litter(fer_like / "train" / "happy").items():
        expected[kind] = expected.get(kind, 0) + n
    report = inspect_dataset("fer2013", str(fer_like), cache_dir=cache_dir)
    assert report["ignored"] == expected
    for key in ("splits", "folders", "duplicates"):  # litter changes nothing else
        assert report[key] == clean[key]
    bad = {(b["path"], b["reason"]) for b in report["bad_files"]}
    assert bad == {(b["path"], b["reason"]) for b in clean["bad_files"]} and len(bad) == 2
    text = format_inspection(report)
    line = next(x for x in text.splitlines() if x.startswith("Ignored"))
    assert line.startswith(f"Ignored (not part of the dataset): {sum(expected.values())} (")
    assert ".DS_Store 2" in line and "__MACOSX/ 2" in line and "note (.txt) 2" in line
    assert json.loads(json.dumps(report))["ignored"] == expected


def test_on_bad_file_error_lists_every_bad_file(fer_like: Path, cache_dir: Path) -> None:
    from ferlab.data.base import DatasetError

    with pytest.raises(DatasetError) as e:
        inspect_dataset("fer2013", str(fer_like), cache_dir=cache_dir, on_bad_file="error")
    msg = str(e.value)
    assert msg.startswith("fer2013: 2 bad file(s)")  # the adapter's and the decoder's
    assert "Training_zero.png: zero-byte" in msg and "Training_trunc.png: cannot decode" in msg
    with pytest.raises(DatasetError, match="on_bad_file"):
        inspect_dataset("fer2013", str(fer_like), decode=False, on_bad_file="ignore")
