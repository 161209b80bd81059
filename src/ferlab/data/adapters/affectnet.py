"""The ``affectnet`` adapter: AffectNet's folder release and its CSV release.

- folder release: ``train_set/images/<id>.jpg`` + ``train_set/annotations/<id>_exp.npy``, and
  ``val_set/`` likewise; the npy holds the expression as a string or an integer;
- CSV release: ``training.csv`` / ``validation.csv`` (also under ``Manually_Annotated_file_lists/``)
  with columns ``subDirectory_filePath, face_x, face_y, face_width, face_height, ..., expression``
  (also gzipped, ``.csv.gz``) and images under ``Manually_Annotated_Images/``. Faces are records with their box (the
  decoder clips boxes; reading 400k image headers here would not be cheap).

Expressions 0..7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt
(``ferlab.labels.AFFECTNET``); 8..10 (none, uncertain, no face) are left out and counted. With
option ``classes: 7`` contempt is left out too. AffectNet's test set is not public, so its
validation set serves as test (the common protocol); val is carved from train by the loader.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.data.adapters.utils import (
    BROKEN_LINK,
    SUBFOLDER,
    ZERO_BYTE,
    accept_options,
    check_options,
    count_unused,
    csv_rows,
    file_problem,
    find_file,
    image_table,
    list_dir,
    open_text,
    require_dir,
    unused_kind,
)
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
OPTIONS = accept_options("affectnet", "classes")


@register_dataset("affectnet")
def affectnet(root: Path, **options: Any) -> DatasetIndex:
    """Index AffectNet. Options: ``classes`` (7 or 8, default 8)."""
    check_options("affectnet", options)
    root = require_dir(
        Path(root), "AffectNet root", "Point it at the folder holding train_set/ and val_set/."
    )
    classes = int(options.get("classes", 8))
    if classes not in (7, 8):
        raise DatasetError(f"affectnet option classes={classes}: use 7 (no contempt) or 8.")
    ignored: Counter[str] = Counter()
    if (root / "train_set").is_dir() or (root / "val_set").is_dir():
        splits, bad, excluded = _index_folder_release(root, classes, ignored)
    else:
        splits, bad, excluded = _index_csv_release(root, classes, ignored)
    return DatasetIndex(
        name="affectnet",
        root=str(root),
        labels=list(CANONICAL if classes == 8 else EMOTIONS),
        splits=splits,
        protocol=PROTOCOL,
        bad_files=bad,
        excluded=dict(sorted(excluded.items())),
        color=True,
        ignored=dict(sorted(ignored.items())),
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
    root: Path, classes: int, ignored: Counter[str]
) -> tuple[dict[str, list[Record]], list[BadFile], Counter[str]]:
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    count_unused(root, set(SET_FOLDERS), ignored)
    for folder, split in SET_FOLDERS.items():
        base = root / folder
        fix = f"The folder release has {folder}/images/ and {folder}/annotations/; restore them."
        images = require_dir(base / "images", f"AffectNet {folder} image folder", fix)
        annotations = require_dir(
            base / "annotations", f"AffectNet {folder} annotation folder", fix
        )
        count_unused(base, {"images", "annotations"}, ignored)
        records, bad_here, excluded_here = _index_set(images, annotations, classes, ignored)
        splits[split] = records
        bad.extend(bad_here)
        excluded.update(excluded_here)
    return splits, bad, excluded


def _index_set(
    images: Path, annotations: Path, classes: int, ignored: Counter[str]
) -> tuple[list[Record], list[BadFile], Counter[str]]:
    npys = _annotation_names(annotations, ignored)
    sizes = image_table(images, ignored)
    records: list[Record] = []
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    for name, size in sorted(sizes.items()):
        path = str(images / name)
        npy = f"{os.path.splitext(name)[0]}_exp.npy"
        if isinstance(size, str) or size == 0:
            bad.append(BadFile(path, size if isinstance(size, str) else ZERO_BYTE))
            continue
        if npy not in npys:
            bad.append(BadFile(path, f"no annotation {str(annotations / npy)!r}"))
            continue
        try:
            label, reason = expression_label(read_expression(annotations / npy), classes)
        except (OSError, ValueError) as err:
            bad.append(BadFile(str(annotations / npy), f"bad expression annotation: {err}"))
            continue
        if label is None:
            excluded[str(reason)] += 1
        else:
            records.append(Record(path=path, label=label))
    return records, bad, excluded


def _annotation_names(annotations: Path, ignored: Counter[str]) -> set[str]:
    """Names of the ``*_exp.npy`` files; the other ``.npy`` (arousal, valence, landmarks)
    belong to the release, anything else is counted in ``ignored``."""
    listing = list_dir(annotations, ignored)
    if listing.dirs:
        ignored[SUBFOLDER] += len(listing.dirs)
    if listing.broken:
        ignored[BROKEN_LINK] += len(listing.broken)
    for entry in listing.files:
        if not entry.name.endswith(".npy"):
            ignored[unused_kind(entry.name, is_dir=False, image_place=True)] += 1
    return {e.name for e in listing.files if e.name.endswith("_exp.npy")}


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
    root: Path, classes: int, ignored: Counter[str]
) -> tuple[dict[str, list[Record]], list[BadFile], Counter[str]]:
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(
            f"AffectNet root {str(root)!r} holds neither train_set/ and val_set/ (folder "
            f"release) nor {IMAGE_DIRS[0]}/ (CSV release). Point the path at one of them."
        )
    listing = _SubdirListing(image_dir, ignored)
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    used = {image_dir.relative_to(root).parts[0]}
    for name, split in CSV_FILES.items():
        path = next((f for d in CSV_DIRS if (f := find_file(root / d, name)) is not None), None)
        if path is None:
            raise DatasetError(
                f"AffectNet CSV release at {str(root)!r} lacks {name} (looked in the root and "
                "Manually_Annotated_file_lists/). Copy it from the release."
            )
        used.add(path.relative_to(root).parts[0])
        records, bad_here, excluded_here = _index_csv(path, listing, classes)
        splits[split] = records
        bad.extend(bad_here)
        excluded.update(excluded_here)
    count_unused(root, used, ignored)
    return splits, bad, excluded


class _SubdirListing:
    """File sizes under an image folder, listed one sub-folder at a time as rows ask for them.

    Litter and other files in a listed sub-folder are counted in ``ignored``.
    """

    def __init__(self, base: Path, ignored: Counter[str]) -> None:
        self.base = base
        self._ignored = ignored
        self._sizes: dict[str, dict[str, int | str]] = {}

    def size(self, rel: str) -> int | str | None:
        sub, _, name = rel.replace("\\", "/").rpartition("/")
        if sub not in self._sizes:
            folder = self.base / sub
            self._sizes[sub] = image_table(folder, self._ignored) if folder.is_dir() else {}
        return self._sizes[sub].get(name)


def _index_csv(
    path: Path, listing: _SubdirListing, classes: int
) -> tuple[list[Record], list[BadFile], Counter[str]]:
    records: list[Record] = []
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    with open_text(path) as f:
        rows = csv_rows(f)
        first = next(rows, None)
        if first is None:
            raise DatasetError(
                f"AffectNet CSV {str(path)!r} is empty. Copy it again from the release."
            )
        has_header = "subDirectory_filePath" in first[1]
        columns = _csv_columns(path, first[1] if has_header else list(CSV_COLUMNS))
        for line_no, row in rows if has_header else _chain(first, rows):
            record, problem, reason = _csv_row(row, columns, listing, classes)
            if problem is not None:
                bad.append(BadFile(f"{path}:{line_no}", f"line {line_no}: {problem}"))
            elif reason is not None:
                excluded[reason] += 1
            elif record is not None:
                records.append(record)
    return records, bad, excluded


def _chain(
    first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]
) -> Iterator[tuple[int, list[str]]]:
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
    except (ValueError, OverflowError):  # OverflowError: "inf"
        return None, "face box and expression must be integers", None
    try:
        label, reason = expression_label(expression, classes)
    except ValueError as err:
        return None, str(err), None
    if label is None:
        return None, None, reason
    if w <= 0 or h <= 0:
        return None, f"face box width {w} / height {h} must be > 0", None
    image = str(listing.base / rel)
    problem = file_problem(image, listing.size(rel))
    if problem is not None:
        return None, problem, None
    return Record(path=image, label=label, box=(x, y, x + w, y + h)), None, None
