"""data.face_crop: faces cropped at decode time, keyed in the cache and the run key, no-face
images kept and counted, one detector per decoding process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import ferlab.face
from conftest import shared_dataset
from face_fakes import BrightSquare
from ferlab.config import ConfigError, DataConfig, validate_config
from ferlab.data import decode, facecrop
from ferlab.data.base import DatasetError, Record
from ferlab.data.cache import build_or_load, split_fingerprint
from ferlab.data.facecrop import FACE_CROPS, FaceCrop
from ferlab.data.loading import load_dataset, load_from_config
from ferlab.face import FaceToolsMissing

TINY = {"n_train": 24, "n_val": 8, "n_test": 8}


def synthetic(cache_dir: Path, **kw: Any):
    return load_dataset(
        "synthetic:wild", image_size=32, channels=1, cache_dir=cache_dir, options=TINY, **kw
    )


@pytest.fixture
def fake_detector(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Replace the detectors by ``BrightSquare``; each creation appends its pid to the file."""
    made = tmp_path / "made.txt"

    def make(name: str, **kw: Any) -> BrightSquare:
        with open(made, "a") as f:
            f.write(f"{os.getpid()}\n")
        return BrightSquare()

    monkeypatch.setattr(ferlab.face, "make_detector", make)
    monkeypatch.setattr(facecrop, "_DETECTORS", {})
    return made


def write_images(folder: Path, n: int) -> list[Record]:
    """Even images: dark with a white 20 x 30 'face' at (30, 10); odd: plain grey, no face."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        arr = np.full((64, 80), 60 + i % 7, dtype=np.uint8)
        if i % 2 == 0:
            arr[10:40, 30:50] = 255
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        records.append(Record(path=str(p), label=3))
    return records


# --------------------------------------------------------------------------- config


def test_config_defaults_and_validation() -> None:
    d = DataConfig()
    assert (d.face_crop, d.face_margin) == ("none", 0.2)
    assert set(FACE_CROPS) == set(ferlab.face.DETECTORS)  # one list of names, in step
    base = {"datasets": [{"name": "synthetic", "path": "lab"}], "models": [{"name": "ferlab_vgg"}]}
    cfg = validate_config({**base, "data": {"face_crop": "mtcnn", "face_margin": 0.5}})
    assert (cfg.data.face_crop, cfg.data.face_margin) == ("mtcnn", 0.5)
    for bad in ({"face_crop": "dlib"}, {"face_margin": 2}, {"face_margin": -0.1}):
        with pytest.raises(ConfigError, match=f"data.{next(iter(bad))}"):
            validate_config({**base, "data": bad})


def test_load_dataset_refuses_bad_settings(cache_dir: Path) -> None:
    with pytest.raises(DatasetError, match="face_crop must be one of none, haar, mtcnn"):
        synthetic(cache_dir, face_crop="retina")
    with pytest.raises(DatasetError, match="face_margin"):
        synthetic(cache_dir, face_crop="haar", face_margin=3.0)
    assert list(cache_dir.iterdir()) == []


def test_missing_opencv_fails_before_decoding(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(FaceToolsMissing, match=r"pip install 'ferlab\[face\]'"):
        synthetic(cache_dir, face_crop="haar")
    assert list(cache_dir.iterdir()) == []


# --------------------------------------------------------------------------- keys


def test_fingerprint_covers_the_face_crop_settings(tmp_path: Path) -> None:
    splits = {"train": write_images(tmp_path / "d", 4)}
    fp = {
        name: split_fingerprint(splits, size=16, channels=1, extra={}, face=face)
        for name, face in {
            "off": None,
            "haar": FaceCrop("haar", 0.2),
            "haar-margin": FaceCrop("haar", 0.3),
            "haar-min": FaceCrop("haar", 0.2, min_face=30),
            "mtcnn": FaceCrop("mtcnn", 0.2),
        }.items()
    }
    assert len(set(fp.values())) == len(fp)
    # Off keeps the fingerprint of before the option existed: existing caches stay valid.
    assert fp["off"] == split_fingerprint(splits, size=16, channels=1, extra={})


def test_run_key_differs_with_face_crop(cache_dir: Path) -> None:
    from ferlab.record.planning import pair_run_key

    raw = {
        "datasets": [{"name": "synthetic", "path": "wild", "options": TINY}],
        "models": [{"name": "ferlab_vgg", "image_size": 32}],
        "data": {"cache_dir": str(cache_dir)},
    }
    keys = {}
    fps = {}
    for crop in ("none", "haar"):
        cfg = validate_config({**raw, "data": {**raw["data"], "face_crop": crop}})
        data = load_from_config(cfg.datasets[0], cfg.data, image_size=32, channels=1)
        keys[crop] = pair_run_key(data, cfg.models[0], cfg)
        fps[crop] = data.fingerprint
        assert data.spec["face_crop"] == crop
    assert keys["none"] != keys["haar"] and fps["none"] != fps["haar"]
    assert len(list(cache_dir.glob("synthetic-wild-*"))) == 2  # two cache entries, never mixed


# --------------------------------------------------------------------------- cropping


def test_faces_cropped_no_face_images_kept_and_counted(
    tmp_path: Path, cache_dir: Path, fake_detector: Path
) -> None:
    splits = {"train": write_images(tmp_path / "d", 6), "test": write_images(tmp_path / "t", 3)}
    arrays, bad, _ = build_or_load(
        "faces", splits, size=16, channels=1, cache_dir=cache_dir, face=FaceCrop("haar", 0.0)
    )
    assert bad == []
    train = arrays["train"]
    assert train.no_face == [r.key for r in splits["train"][1::2]]
    assert arrays["test"].no_face == [splits["test"][1].key]
    for i in range(6):
        uncropped = decode.decode_record(splits["train"][i], 16, 1)
        if i % 2 == 0:  # the 20 x 30 white box made square (30 x 30): white, grey either side
            expected = decode._finish(
                Image.fromarray(np.asarray(Image.open(splits["train"][i].path))[10:40, 25:55]),
                16,
                1,
            )
            assert np.array_equal(train.images[i], expected)
            assert not np.array_equal(train.images[i], uncropped)
        else:  # kept whole, exactly as without face cropping
            assert np.array_equal(train.images[i], uncropped)
    assert fake_detector.read_text().split() == [str(os.getpid())]  # one detector, made once

    # From the cache: the same list, from meta.json, without detecting again.
    fake_detector.unlink()
    again, _, _ = build_or_load(
        "faces", splits, size=16, channels=1, cache_dir=cache_dir, face=FaceCrop("haar", 0.0)
    )
    assert again["train"].no_face == train.no_face and not fake_detector.exists()
    plain, _, _ = build_or_load("faces", splits, size=16, channels=1, cache_dir=cache_dir)
    assert plain["train"].no_face is None


def test_pool_workers_make_one_detector_each(
    tmp_path: Path, fake_detector: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = write_images(tmp_path / "d", 40)
    face = FaceCrop("haar", 0.1)
    serial = np.zeros((40, 12, 12, 1), dtype=np.uint8)
    missing_serial: list[str] = []
    decode.decode_many(records, 12, 1, serial, workers=1, face=face, no_face=missing_serial)
    fake_detector.unlink()
    monkeypatch.setattr(facecrop, "_DETECTORS", {})
    monkeypatch.setattr(decode, "POOL_THRESHOLD", 5)
    monkeypatch.setattr(decode, "POOL_CHUNK", 4)  # 10 chunks over 2 workers
    pooled = np.zeros_like(serial)
    missing_pool: list[str] = []
    decode.decode_many(records, 12, 1, pooled, workers=2, face=face, no_face=missing_pool)
    assert np.array_equal(serial, pooled)
    assert missing_pool == missing_serial == [r.key for r in records[1::2]]
    pids = fake_detector.read_text().split()
    assert len(pids) == len(set(pids)) <= 2  # once per worker, not once per image or chunk
    assert str(os.getpid()) not in pids


def test_synthetic_data_with_a_real_detector(cache_dir: Path) -> None:
    """Drawn faces: some found, some not; either way every image is kept and counted."""
    plain = synthetic(cache_dir)
    data = synthetic(cache_dir, face_crop="haar", face_margin=0.1)
    counts = data.spec["face_crop_counts"]
    assert data.spec["face_crop"] == "haar" and data.spec["face_margin"] == 0.1
    assert {s: c["images"] for s, c in counts.items()} == {
        s: len(a) for s, a in plain.splits.items()
    }
    for name, split in data.splits.items():
        assert split.no_face is not None and counts[name]["no_face"] == len(split.no_face)
        assert split.keys == plain.splits[name].keys
        no_face = set(split.no_face)
        for i, key in enumerate(split.keys):
            same = np.array_equal(split.images[i], plain.splits[name].images[i])
            assert same == (key in no_face)  # uncropped exactly when no face was found
    assert "face_crop_counts" not in plain.spec and plain.spec["face_crop"] == "none"


def test_counts_reach_the_data_report(cache_dir: Path, tmp_path: Path) -> None:
    from ferlab.layout import Layout
    from ferlab.service.outputs import write_data_outputs
    from ferlab.service.store import DataStore

    cfg = validate_config(
        {
            "datasets": [{"name": "synthetic", "path": "wild", "options": TINY}],
            "models": [{"name": "ferlab_vgg", "image_size": 32}],
            "data": {"cache_dir": str(cache_dir), "face_crop": "haar"},
        }
    )
    layout = Layout(tmp_path / "exp")
    store = DataStore(cfg)
    data = store.get(cfg.datasets[0], 32, 1)
    write_data_outputs(cfg, store, layout)
    written = json.loads(layout.data_json(data.name).read_text())
    counts = written["spec"]["face_crop_counts"]
    assert counts == {
        s: {"images": len(a), "no_face": len(a.no_face or [])} for s, a in data.splits.items()
    }


# --------------------------------------------------------------------------- real faces


@pytest.mark.realdata
def test_real_faces_cropped_blank_images_counted(tmp_path: Path, cache_dir: Path) -> None:
    root = shared_dataset("expw/Expw-F")
    faces = [root / "angry" / n for n in ("angry_black_58_0.jpg", "angry_husband_64_0.jpg")]
    if not all(p.is_file() for p in faces):
        pytest.skip(f"the ExpW crops {[p.name for p in faces]} are not in {root}")
    records = []
    for i, p in enumerate(faces):  # each face on a larger photo, off centre
        canvas = np.full((300, 400, 3), 110, dtype=np.uint8)
        canvas[40 + 60 * i : 200 + 60 * i, 30 + 150 * i : 190 + 150 * i] = np.asarray(
            Image.open(p).convert("RGB")
        )
        records.append(Record(path=str(tmp_path / f"photo{i}.png"), label=0))
        Image.fromarray(canvas).save(records[-1].path)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 400, 3), 110, dtype=np.uint8)).save(blank)
    records.append(Record(path=str(blank), label=0))
    arrays, _, _ = build_or_load(
        "photos",
        {"test": records},
        size=48,
        channels=3,
        cache_dir=cache_dir,
        face=FaceCrop("haar", 0.0),  # the pasted crops are ExpW face boxes already
    )
    test = arrays["test"]
    assert test.no_face == [str(blank)]
    for i in range(len(faces)):
        got = test.images[i].astype(np.int64)
        uncropped = decode.decode_record(records[i], 48, 3).astype(np.int64)
        grey = lambda a: (np.abs(a - 110).max(axis=2) < 3).mean()  # noqa: E731
        assert grey(uncropped) > 0.6  # the photo is mostly the grey background...
        assert grey(got) < 0.1  # ...its crop is the face


FORK_AFTER_DETECTING = """
import numpy as np
from ferlab.data import decode, facecrop
from ferlab.data.base import Record
from ferlab.data.facecrop import FaceCrop
rng = np.random.default_rng(0)
# This process has run OpenCV's thread pool, then torch: a child forked now hung in its first
# OpenCV call until fork_safe stopped the pool around the fork.
facecrop.detector_for(FaceCrop("haar")).detect(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
facecrop.detector_for(FaceCrop("mtcnn")).detect(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
decode.POOL_THRESHOLD, decode.POOL_CHUNK = 4, 8
records = [Record(path="synthetic", label=s % 8, draw=("wild", s)) for s in range(32)]
out = np.zeros((32, 32, 32, 1), dtype=np.uint8)
decode.decode_many(records, 32, 1, out, workers=2, face=FaceCrop("haar", 0.2))
print("decoded", int(out.any(axis=(1, 2, 3)).sum()))
"""


@pytest.mark.slow
def test_pool_after_the_parent_detected_does_not_hang() -> None:
    import subprocess

    try:
        done = subprocess.run(
            [sys.executable, "-c", FORK_AFTER_DETECTING],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("decode workers forked after detecting in the parent hung")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["decoded", "32"]
