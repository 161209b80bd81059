"""Tiny fake datasets in each registered adapter's exact published layout (cf. torchvision's
``inject_fake_data``).

``FAKES`` holds one writer per adapter name in ``ferlab.data.base.list_datasets()``; a writer
puts small real files (PIL images, CSV and list files) under a given folder and returns a
``FakeData`` saying what the index must contain. ``tests/test_adapters.py`` runs the same
checks over every entry and fails for a registered adapter without a writer, so a new adapter
cannot land untested. The lower-level writers (``write_fer_folders``, ``write_ferplus``, ...)
also serve the adapter-specific tests.
"""

from __future__ import annotations

import csv
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ferlab.labels import AFFECTNET, CANONICAL, EMOTIONS, EXPW


@dataclass(frozen=True)
class FakeData:
    """What indexing a fake dataset must give.

    ``counts`` is exact per split when the dataset defines its splits; it is None when a
    seeded split carves them (only the total, the class totals and the split names hold then).
    """

    root: str  # the dataset root folder, or the synthetic domain
    labels: list[str]  # DatasetIndex.labels
    classes: dict[str, int]  # records per canonical class, all splits together
    splits: tuple[str, ...]  # split names of the index, in order
    counts: dict[str, int] | None  # records per split, None when a seeded split carves them
    color: bool  # DatasetIndex.color
    # An image file read by exactly one record, for the bad-file checks; None without files.
    corrupt: Path | None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.counts is not None:
            assert tuple(self.counts) == self.splits, (self.counts, self.splits)
            assert sum(self.counts.values()) == self.total, (self.counts, self.classes)

    @property
    def total(self) -> int:
        return sum(self.classes.values())


FakeWriter = Callable[[Path], FakeData]
FAKES: dict[str, FakeWriter] = {}


def fake_data(name: str) -> Callable[[FakeWriter], FakeWriter]:
    """Register the fake-data writer of the adapter ``name``; one writer per adapter."""

    def wrap(fn: FakeWriter) -> FakeWriter:
        if name in FAKES:
            raise ValueError(f"a fake-data writer for {name!r} is already registered")
        FAKES[name] = fn
        return fn

    return wrap


# ---------------------------------------------------------------------------- images
def write_image(
    path: Path, size: tuple[int, int] = (8, 8), mode: str = "L", value: int = 0
) -> Path:
    """A small solid image (grey ``value``, or a colour built from it); format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color: int | tuple[int, int, int] = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color).save(path)
    return path


# ---------------------------------------------------------------------------- fer2013
FER_SPLITS = {
    # (folder, file prefix, class) -> count
    ("train", "Training", "angry"): 3,
    ("train", "Training", "happy"): 2,
    ("test", "PublicTest", "angry"): 2,
    ("test", "PublicTest", "happy"): 1,
    ("test", "PrivateTest", "angry"): 1,
    ("test", "PrivateTest", "happy"): 2,
}
USAGE = {"Training": "Training", "PublicTest": "PublicTest", "PrivateTest": "PrivateTest"}
Face = tuple[str, str, str, np.ndarray]  # (folder, prefix, class, 48x48 pixels)


def fer_faces(seed: int = 0) -> list[Face]:
    """(folder, prefix, class, 48x48 pixels) for the tiny FER2013 fake."""
    rng = np.random.default_rng(seed)
    faces = []
    for (folder_name, prefix, cls), n in FER_SPLITS.items():
        for _ in range(n):
            faces.append((folder_name, prefix, cls, rng.integers(0, 256, (48, 48), dtype=np.uint8)))
    return faces


def write_fer_folders(
    root: Path,
    faces: Iterable[Face],
    *,
    prefixes: bool = True,
    folder_names: Mapping[str, str] | None = None,
) -> None:
    """The image-folder release: ``<split>/<emotion>/<Prefix>_<n>.png``, n from 1000."""
    names = folder_names or {}
    for i, (folder_name, prefix, cls, pixels) in enumerate(faces):
        name = f"{prefix}_{1000 + i}.png" if prefixes else f"{1000 + i}.png"
        path = root / folder_name / names.get(cls, cls) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(path)


def write_fer_csv(path: Path, faces: Iterable[Face], *, icml: bool) -> None:
    """``fer2013.csv`` (emotion,pixels,Usage) or Kaggle's ``icml_face_data.csv``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", " Usage", " pixels"] if icml else ["emotion", "pixels", "Usage"])
        for _, prefix, cls, pixels in faces:
            text = " ".join(map(str, pixels.ravel().tolist()))
            label = EMOTIONS.index(cls)
            w.writerow([label, USAGE[prefix], text] if icml else [label, text, USAGE[prefix]])


@fake_data("fer2013")
def fake_fer2013(tmp: Path) -> FakeData:
    root = tmp / "fer2013"
    write_fer_folders(root, fer_faces())
    return FakeData(
        root=str(root),
        labels=list(EMOTIONS),
        classes={"angry": 6, "happy": 5},
        splits=("train", "val", "test"),
        counts={"train": 5, "val": 3, "test": 3},
        color=False,
        corrupt=root / "train" / "angry" / "Training_1000.png",
    )


# ---------------------------------------------------------------------------- ferplus
#            neu hap sur sad ang dis fea con unk NF   -> expected
FERPLUS_ROWS: list[tuple[str, list[int], str | None]] = [
    ("a.png", [8, 1, 1, 0, 0, 0, 0, 0, 0, 0], "neutral"),  # clear majority
    ("b.png", [5, 4, 1, 0, 0, 0, 0, 0, 0, 0], "neutral"),  # 5/10 only after the outlier goes
    ("c.png", [4, 4, 2, 0, 0, 0, 0, 0, 0, 0], None),  # no majority
    ("d.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0], None),  # exactly half is not a majority
    ("e.png", [0, 0, 0, 0, 0, 0, 0, 0, 8, 2], None),  # unknown wins
    ("f.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),  # not a face wins
    ("g.png", [2, 0, 0, 0, 0, 0, 0, 8, 0, 0], "contempt"),  # contempt, the 8th class
    ("h.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None),  # all single votes: nothing left
    ("i.png", [0, 0, 0, 6, 0, 0, 0, 0, 2, 2], "sad"),  # unknown/NF count in the total
    ("j.png", [0, 0, 0, 0, 3, 2, 0, 0, 0, 0], "angry"),
]
FERPLUS_HEADER = [
    "Image name",
    "Face box",
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
]


def write_ferplus(
    folder: Path,
    rows: Iterable[tuple[str, Sequence[int], str | None]],
    *,
    header: bool = False,
    extra: Iterable[Sequence[str]] = (),
) -> None:
    """One FER+ folder (``FER2013Train/`` ...): 48x48 PNGs and ``label.csv`` vote rows."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(FERPLUS_HEADER)
        for name, votes, _ in rows:
            write_image(folder / name, size=(48, 48))
            w.writerow([name, "(0, 0, 48, 48)", *votes])
        w.writerows(extra)


@fake_data("ferplus")
def fake_ferplus(tmp: Path) -> FakeData:
    root = tmp / "ferplus"
    write_ferplus(root / "FER2013Train", FERPLUS_ROWS)  # a b g i j have a majority
    write_ferplus(root / "FER2013Valid", FERPLUS_ROWS[:2])  # a b
    write_ferplus(root / "FER2013Test", FERPLUS_ROWS[6:])  # g i j
    return FakeData(
        root=str(root),
        labels=list(CANONICAL),
        classes={"neutral": 4, "contempt": 2, "sad": 2, "angry": 2},
        splits=("train", "val", "test"),
        counts={"train": 5, "val": 2, "test": 3},
        color=False,
        corrupt=root / "FER2013Train" / "a.png",
    )


# ---------------------------------------------------------------------------- rafdb
def write_rafdb_folders(root: Path, per_class: Mapping[str, int]) -> None:
    """The common re-packaging ``DATASET/<split>/<1..7>/<split>_<digit><i>_aligned.jpg``."""
    for split, n in per_class.items():
        for digit in range(1, 8):
            for i in range(n):
                write_image(
                    root / "DATASET" / split / str(digit) / f"{split}_{digit}{i}_aligned.jpg",
                    mode="RGB",
                )


def write_rafdb_basic(base: Path, labels: Mapping[str, int], images: str = "aligned") -> None:
    """The official basic release: ``Image/<images>/`` and ``EmoLabel/list_patition_label.txt``.

    ``labels`` maps a listed name (``train_00001.jpg``) to its RAF-DB label 1..7; the aligned
    images carry the ``_aligned`` suffix before the extension, the original ones do not.
    """
    for name in labels:
        stem, ext = name.rsplit(".", 1)
        file_name = f"{stem}_aligned.{ext}" if images == "aligned" else name
        write_image(base / "Image" / images / file_name, mode="RGB")
    (base / "EmoLabel").mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{name} {label}\n" for name, label in labels.items())
    (base / "EmoLabel" / "list_patition_label.txt").write_text(rows)


@fake_data("rafdb")
def fake_rafdb(tmp: Path) -> FakeData:
    root = tmp / "rafdb"
    write_rafdb_folders(root, {"train": 2, "test": 1})
    return FakeData(
        root=str(root),
        labels=list(EMOTIONS),
        classes=dict.fromkeys(EMOTIONS, 3),
        splits=("train", "test"),  # val is carved from train by the loader
        counts={"train": 14, "test": 7},
        color=True,
        corrupt=root / "DATASET" / "train" / "1" / "train_10_aligned.jpg",
    )


# ---------------------------------------------------------------------------- expw
def write_origin(root: Path, rows: Iterable[str], photos: Mapping[str, tuple[int, int]]) -> None:
    """The distributed form: photos in ``origin/`` and the face list ``label.lst``."""
    for name, size in photos.items():
        write_image(root / "origin" / name, size=size, mode="RGB")
    (root / "label.lst").write_text("\n".join(rows) + "\n")


@fake_data("expw")
def fake_expw(tmp: Path) -> FakeData:
    root = tmp / "expw"
    per_class = 6
    photos: dict[str, tuple[int, int]] = {}
    rows = []
    for label in EXPW:  # 0..6, one face per photo
        for i in range(per_class):
            name = f"face_{label * per_class + i:03d}.jpg"
            photos[name] = (40, 32)
            # image face_id top left right bottom confidence label
            rows.append(f"{name} 0 4 6 30 28 {50 + i}.5 {label}")
    write_origin(root, rows, photos)
    return FakeData(
        root=str(root),
        labels=list(EMOTIONS),
        classes={EXPW[label]: per_class for label in EXPW},
        splits=("train", "val", "test"),
        counts=None,  # ExpW has no official split: a seeded split carves all three
        color=True,
        corrupt=root / "origin" / "face_000.jpg",
    )


# ---------------------------------------------------------------------------- affectnet
def write_affectnet_set(root: Path, folder: str, annotations: Mapping[str, object]) -> None:
    """``<folder>/images/<id>.jpg`` with ``<folder>/annotations/<id>_exp.npy`` (None: no npy)."""
    for image_id, value in annotations.items():
        write_image(root / folder / "images" / f"{image_id}.jpg", mode="RGB")
        if value is not None:
            (root / folder / "annotations").mkdir(parents=True, exist_ok=True)
            np.save(root / folder / "annotations" / f"{image_id}_exp.npy", np.array(value))
            np.save(root / folder / "annotations" / f"{image_id}_aro.npy", np.array("0.5"))


@fake_data("affectnet")
def fake_affectnet(tmp: Path) -> FakeData:
    root = tmp / "affectnet"
    codes = sorted(AFFECTNET)  # 0..7, contempt included
    train = {str(i): str(codes[i % len(codes)]) for i in range(2 * len(codes))}
    test = {str(100 + i): str(code) for i, code in enumerate(codes)}
    write_affectnet_set(root, "train_set", train)
    write_affectnet_set(root, "val_set", test)
    return FakeData(
        root=str(root),
        labels=list(CANONICAL),
        classes={AFFECTNET[code]: 3 for code in codes},
        splits=("train", "test"),  # val_set is test; val is carved from train by the loader
        counts={"train": 16, "test": 8},
        color=True,
        corrupt=root / "train_set" / "images" / "0.jpg",
    )


# ---------------------------------------------------------------------------- folder
@fake_data("folder")
def fake_folder(tmp: Path) -> FakeData:
    root = tmp / "faces"
    for cls, ext, n in (("happy", ".jpg", 16), ("Sadness", ".png", 12), ("surprised", ".jpeg", 12)):
        for i in range(n):
            write_image(root / cls / f"{i:03d}{ext}", mode="RGB", value=10 * i)
    return FakeData(
        root=str(root),
        labels=["happy", "sad", "surprise"],
        classes={"happy": 16, "sad": 12, "surprise": 12},
        splits=("train", "val", "test"),
        counts=None,  # no split folders: a seeded split carves all three
        color=True,
        corrupt=root / "happy" / "000.jpg",
    )


# ---------------------------------------------------------------------------- synthetic
@fake_data("synthetic")
def fake_synthetic(tmp: Path) -> FakeData:
    # Drawn from seeds: nothing to write, the root is the domain.
    return FakeData(
        root="lab",
        labels=list(EMOTIONS),
        classes=dict.fromkeys(EMOTIONS, 4),
        splits=("train", "val", "test"),
        counts={"train": 14, "val": 7, "test": 7},
        color=False,
        corrupt=None,
        options={"n_train": 14, "n_val": 7, "n_test": 7},
    )


# ---------------------------------------------------------------------------- litter
# What file managers, NAS boxes, notebooks and people leave beside a dataset, and the kind
# ``DatasetIndex.ignored`` counts it under. Folders hold an image, to show they are not entered.
LITTER_FILES: dict[str, str] = {
    "._IMG_0001.jpg": "._* (macOS metadata)",
    ".DS_Store": ".DS_Store",
    "Thumbs.db": "Thumbs.db",
    "desktop.ini": "desktop.ini",
    ".hidden.png": "hidden file",
    "notes.txt": "note (.txt)",
    "README.md": "note (.md)",
    "meta.json": "note (.json)",
    "export.csv": "note (.csv)",
}
LITTER_FOLDERS: dict[str, str] = {
    "__MACOSX": "__MACOSX/",
    "@eaDir": "@eaDir/",
    ".ipynb_checkpoints": ".ipynb_checkpoints/",
    ".cache": "hidden folder",
}


def write_litter(folder: Path) -> dict[str, int]:
    """Every kind of litter in ``folder``; returns the counts by kind it must be ignored as."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in LITTER_FILES:
        target = folder / name
        if name.endswith((".jpg", ".png")):
            write_image(target)  # looks like an image, but is litter
        else:
            target.write_text("litter\n")
    for name in LITTER_FOLDERS:
        write_image(folder / name / "inside.jpg")
        (folder / name / "._inside.jpg").write_bytes(b"\0\x05\x16\x07")
    kinds = [*LITTER_FILES.values(), *LITTER_FOLDERS.values()]
    return {kind: kinds.count(kind) for kind in kinds}


# ---------------------------------------------------------------------------- hostile files
def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` and holds one tiny (bogus) data chunk: a
    decompression bomb's header in about 100 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
