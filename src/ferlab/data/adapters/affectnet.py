"""The ``affectnet`` adapter: AffectNet's folder release and its CSV release.

- folder release: ``train_set/images/<id>.jpg`` + ``train_set/annotations/<id>_exp.npy``, and
  ``val_set/`` likewise; the npy holds the expression as a string or an integer;
- CSV release: ``training.csv`` / ``validation.csv`` (also under ``Manually_Annotated_file_lists/``)
  with columns ``subDirectory_filePath, face_x, face_y, face_width, face_height, ..., expression``
  and images under ``Manually_Annotated_Images/``. Faces are records with their box (the
  decoder clips boxes; reading 400k image headers here would not be cheap).

Expressions 0..7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt
(``ferlab.labels.AFFECTNET``); 8..10 (none, uncertain, no face) are left out and counted. With
option ``classes: 7`` contempt is left out too. AffectNet's test set is not public, so its
validation set serves as test (the common protocol); val is carved from train by the loader.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.data.adapters.utils import ZERO_BYTE, check_options, is_image_name, require_dir
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.labels import AFFECTNET, CANONICAL, EMOTIONS, INDEX

NON_EMOTIONS: dict[int, str] = {8: "none (8)", 9: "uncertain (9)", 10: "no face (10)"}
CONTEMPT_7 = "contempt (classes: 7)"
SET_FOLDERS: dict[str, str] = {"train_set": "train", "val_set": "test"}
CSV_FILES: dict[str, str] = {"training.csv": "train", "validation.csv": "test"}
CSV_DIRS: tuple[str, ...] = ("", "Manually_Annotated_file_lists")
IMAGE_DIRS: tuple[str, ...] = (
    "Manually_Annotated_Images",
    "Manually_Annotated_compressed/Manually_Annotated_Images",
    "Manually_Annotated/Manually_Annotated_Images",
)
CSV_COLUMNS: tuple[str, ...] = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
PROTOCOL = (
    "AffectNet's validation set serves as test (its test set is not public); "
    "val is carved from train by the loader."
)


@register_dataset("affectnet")
def affectnet(root: Path, **options: Any) -> DatasetIndex:
    """Index AffectNet. Options: ``classes`` (7 or 8, default 8)."""
    check_options("affectnet", options, ("classes",))
    root = require_dir(
        Path(root), "AffectNet root", "Point it at the folder holding train_set/ and val_set/."
    )
    classes = int(options.get("classes", 8))
    if classes not in (7, 8):
        raise DatasetError(f"affectnet option classes={classes}: use 7 (no contempt) or 8.")
    if (root / "train_set").is_dir() or (root / "val_set").is_dir():
        splits, bad, excluded = _index_folder_release(root, classes)
    else:
        splits, bad, excluded = _index_csv_release(root, classes)
    return DatasetIndex(
        name="affectnet",
        root=str(root),
        labels=list(CANONICAL if classes == 8 else EMOTIONS),
        splits=splits,
        protocol=PROTOCOL,
        bad_files=bad,
        excluded=dict(sorted(excluded.items())),
        color=True,
    )


def expression_label(value: int, classes: int) -> tuple[int | None, str | None]:
    """(canonical index, None) for an expression code, or (None, excluded reason).

    Raises ValueError for a code outside 0..10.
    """
    if value in NON_EMOTIONS:
        return None, NON_EMOTIONS[value]
    if value not in AFFECTNET:
        raise ValueError(f"expression {value} is not 0..10")
    if value == 7 and classes == 7:
        return None, CONTEMPT_7
    return INDEX[AFFECTNET[value]], None


# ---------------------------------------------------------------------------- folder release
def _index_folder_release(
    root: Path, classes: int
) -> tuple[dict[str, list[Record]], list[BadFile], Counter[str]]:
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    for folder, split in SET_FOLDERS.items():
        base = root / folder
        fix = f"The folder release has {folder}/images/ and {folder}/annotations/; restore them."
        images = require_dir(base / "images", f"AffectNet {folder} image folder", fix)
        annotations = require_dir(
            base / "annotations", f"AffectNet {folder} annotation folder", fix
        )
        records, bad_here, excluded_here = _index_set(images, annotations, classes)
        splits[split] = records
        bad.extend(bad_here)
        excluded.update(excluded_here)
    return splits, bad, excluded


def _index_set(
    images: Path, annotations: Path, classes: int
) -> tuple[list[Record], list[BadFile], Counter[str]]:
    with os.scandir(annotations) as it:
        npys = {e.name for e in it if e.name.endswith("_exp.npy")}
    with os.scandir(images) as it:
        entries = sorted(
            (e for e in it if is_image_name(e.name) and e.is_file()), key=lambda e: e.name
        )
    records: list[Record] = []
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    for entry in entries:
        npy = f"{os.path.splitext(entry.name)[0]}_exp.npy"
        if entry.stat().st_size == 0:
            bad.append(BadFile(entry.path, ZERO_BYTE))
            continue
        if npy not in npys:
            bad.append(BadFile(entry.path, f"no annotation {str(annotations / npy)!r}"))
            continue
        try:
            label, reason = expression_label(read_expression(annotations / npy), classes)
        except (OSError, ValueError) as err:
            bad.append(BadFile(str(annotations / npy), f"bad expression annotation: {err}"))
            continue
        if label is None:
            excluded[str(reason)] += 1
        else:
            records.append(Record(path=entry.path, label=label))
    return records, bad, excluded


def read_expression(path: Path) -> int:
    """The expression code stored in an ``<id>_exp.npy`` (a string such as '3' or an integer)."""
    value = np.load(path, allow_pickle=False)
    if value.size != 1:
        raise ValueError(f"holds {value.size} values, expected one")
    item = value.reshape(()).item()
    if isinstance(item, bytes):
        item = item.decode()
    if isinstance(item, str):
        return int(item.strip())
    if isinstance(item, float) and not item.is_integer():
        raise ValueError(f"expression {item} is not an integer")
    return int(item)


# ---------------------------------------------------------------------------- CSV release
def _index_csv_release(
    root: Path, classes: int
) -> tuple[dict[str, list[Record]], list[BadFile], Counter[str]]:
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(
            f"AffectNet root {str(root)!r} holds neither train_set/ and val_set/ (folder "
            f"release) nor {IMAGE_DIRS[0]}/ (CSV release). Point the path at one of them."
        )
    listing = _SubdirListing(image_dir)
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    for name, split in CSV_FILES.items():
        path = next((root / d / name for d in CSV_DIRS if (root / d / name).is_file()), None)
        if path is None:
            raise DatasetError(
                f"AffectNet CSV release at {str(root)!r} lacks {name} (looked in the root and "
                "Manually_Annotated_file_lists/). Copy it from the release."
            )
        records, bad_here, excluded_here = _index_csv(path, listing, classes)
        splits[split] = records
        bad.extend(bad_here)
        excluded.update(excluded_here)
    return splits, bad, excluded


class _SubdirListing:
    """File sizes under an image folder, listed one sub-folder at a time as rows ask for them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._sizes: dict[str, dict[str, int]] = {}

    def size(self, rel: str) -> int | None:
        sub, _, name = rel.replace("\\", "/").rpartition("/")
        if sub not in self._sizes:
            folder = self.base / sub
            if folder.is_dir():
                with os.scandir(folder) as it:
                    self._sizes[sub] = {e.name: e.stat().st_size for e in it if e.is_file()}
            else:
                self._sizes[sub] = {}
        return self._sizes[sub].get(name)


def _index_csv(
    path: Path, listing: _SubdirListing, classes: int
) -> tuple[list[Record], list[BadFile], Counter[str]]:
    records: list[Record] = []
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None:
            raise DatasetError(
                f"AffectNet CSV {str(path)!r} is empty. Copy it again from the release."
            )
        header = [h.strip() for h in first]
        has_header = "subDirectory_filePath" in header
        columns = _csv_columns(path, header if has_header else list(CSV_COLUMNS))
        rows = reader if has_header else _chain(first, reader)
        for line_no, row in enumerate(rows, start=2 if has_header else 1):
            if not row:
                continue
            record, problem, reason = _csv_row(row, columns, listing, classes)
            if problem is not None:
                bad.append(BadFile(f"{path}:{line_no}", f"line {line_no}: {problem}"))
            elif reason is not None:
                excluded[reason] += 1
            elif record is not None:
                records.append(record)
    return records, bad, excluded


def _chain(first: list[str], rest: Any) -> Any:
    yield first
    yield from rest


def _csv_columns(path: Path, header: list[str]) -> dict[str, int]:
    needed = (
        "subDirectory_filePath",
        "face_x",
        "face_y",
        "face_width",
        "face_height",
        "expression",
    )
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetError(
            f"AffectNet CSV {str(path)!r} lacks the column(s) {', '.join(missing)} (header: "
            f"{', '.join(header)}). Expected {', '.join(CSV_COLUMNS)}."
        )
    return {c: header.index(c) for c in needed}


def _csv_row(
    row: list[str], columns: dict[str, int], listing: _SubdirListing, classes: int
) -> tuple[Record | None, str | None, str | None]:
    """(record, problem, excluded reason) for one CSV row; at most one is not None."""
    if len(row) <= max(columns.values()):
        return None, f"{len(row)} fields, too few for the header", None
    rel = row[columns["subDirectory_filePath"]].strip()
    try:
        x, y, w, h, expression = (
            int(float(row[columns[c]]))
            for c in ("face_x", "face_y", "face_width", "face_height", "expression")
        )
    except ValueError:
        return None, "face box and expression must be integers", None
    try:
        label, reason = expression_label(expression, classes)
    except ValueError as err:
        return None, str(err), None
    if label is None:
        return None, None, reason
    if w <= 0 or h <= 0:
        return None, f"face box width {w} / height {h} must be > 0", None
    size = listing.size(rel)
    image = str(listing.base / rel)
    if size is None:
        return None, f"image {image!r} is missing", None
    if size == 0:
        return None, f"{image!r}: {ZERO_BYTE}", None
    return Record(path=image, label=label, box=(x, y, x + w, y + h)), None, None
