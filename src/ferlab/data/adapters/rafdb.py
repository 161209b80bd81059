"""The ``rafdb`` adapter: RAF-DB basic (7 emotions), in two layouts.

- the common re-packaging ``DATASET/train/<1..7>/``, ``DATASET/test/<1..7>/`` (the root may be
  the folder holding ``DATASET`` or ``DATASET`` itself);
- the official basic release ``Image/aligned/train_00001_aligned.jpg`` +
  ``EmoLabel/list_patition_label.txt`` (rows ``train_00001.jpg 5``; the root may also be the
  folder holding ``basic/``).

RAF-DB numbers its labels 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral
(``ferlab.labels.RAFDB_BASIC``). Train and test are official; val is carved from train by the loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ferlab.data.adapters.utils import (
    ZERO_BYTE,
    check_options,
    require_dir,
    scan_class_folders,
)
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.labels import EMOTIONS, INDEX, RAFDB_BASIC

NATIVE: dict[str, str] = {str(k): v for k, v in RAFDB_BASIC.items()}
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
PROTOCOL = "RAF-DB official train/test split; val is carved from train by the loader."


@register_dataset("rafdb")
def rafdb(root: Path, **options: Any) -> DatasetIndex:
    """Index RAF-DB basic. Options: ``images`` (``aligned`` | ``original``, basic release only), ``class_map``."""
    check_options("rafdb", options, ("images",))
    root = require_dir(
        Path(root), "RAF-DB root", "Point it at DATASET/ (train/, test/) or at the basic release."
    )
    images = str(options.get("images", "aligned")).lower()
    if images not in ("aligned", "original"):
        raise DatasetError(f"rafdb option images={images!r}: use aligned or original.")
    for base in (root, root / "basic"):
        if (base / LABEL_FILE).is_file():
            splits, bad = _index_basic(base, images)
            return _index(root, splits, bad)
    for base in (root / "DATASET", root):
        if (base / "train").is_dir() or (base / "test").is_dir():
            splits, bad = _index_folders(base, options.get("class_map"))
            return _index(root, splits, bad)
    raise DatasetError(
        f"RAF-DB root {str(root)!r} holds neither DATASET/train/ and DATASET/test/ nor "
        f"{LABEL_FILE} with Image/aligned/. Point the path at one of these layouts."
    )


def _index(root: Path, splits: dict[str, list[Record]], bad: list[BadFile]) -> DatasetIndex:
    return DatasetIndex(
        name="rafdb",
        root=str(root),
        labels=list(EMOTIONS),
        splits=splits,
        protocol=PROTOCOL,
        bad_files=bad,
        color=True,
    )


def _index_folders(base: Path, class_map: Any) -> tuple[dict[str, list[Record]], list[BadFile]]:
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    for split in ("train", "test"):
        folder = require_dir(
            base / split,
            f"RAF-DB {split} folder",
            f"The layout is {base}/train/<1..7>/ and {base}/test/<1..7>/; restore the folder.",
        )
        records, bad_here = scan_class_folders(folder, class_map=class_map, native=NATIVE)
        splits[split] = records
        bad.extend(bad_here)
    return splits, bad


def _index_basic(base: Path, images: str) -> tuple[dict[str, list[Record]], list[BadFile]]:
    image_dir = require_dir(
        base / "Image" / images,
        "RAF-DB image folder",
        f"The basic release keeps its images in Image/{images}/ beside EmoLabel/.",
    )
    sizes = _file_sizes(image_dir)
    splits: dict[str, list[Record]] = {"train": [], "test": []}
    bad: list[BadFile] = []
    label_file = base / LABEL_FILE
    with open(label_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            split, record, problem = _basic_row(line, image_dir, sizes, images)
            if problem is not None:
                bad.append(BadFile(f"{label_file}:{line_no}", f"line {line_no}: {problem}"))
            elif split is not None and record is not None:
                splits[split].append(record)
    for split, records in splits.items():
        if not records:
            raise DatasetError(
                f"{str(label_file)!r} lists no usable {split}_* images. Check the file and {image_dir}."
            )
        records.sort(key=lambda r: r.path)
    return splits, bad


def _file_sizes(directory: Path) -> dict[str, int]:
    with os.scandir(directory) as it:
        return {e.name: e.stat().st_size for e in it if e.is_file()}


def _basic_row(
    line: str, image_dir: Path, sizes: dict[str, int], images: str
) -> tuple[str | None, Record | None, str | None]:
    """(split, record, None) for a good ``train_00001.jpg 5`` row, (None, None, problem) otherwise."""
    fields = line.split()
    if len(fields) != 2:
        return (
            None,
            None,
            f"{len(fields)} fields, expected 2 (image name, label 1..7): {line.strip()!r}",
        )
    name, label_text = fields
    if label_text not in NATIVE:
        return None, None, f"label {label_text!r} is not 1..7"
    split = name.split("_", 1)[0]
    if split not in ("train", "test"):
        return None, None, f"image name {name!r} does not start with train_ or test_"
    stem, ext = os.path.splitext(name)
    file_name = f"{stem}_aligned{ext}" if images == "aligned" else name
    path = str(image_dir / file_name)
    if file_name not in sizes:
        return None, None, f"image {path!r} is missing"
    if sizes[file_name] == 0:
        return None, None, f"{path!r}: {ZERO_BYTE}"
    return split, Record(path=path, label=INDEX[NATIVE[label_text]]), None
