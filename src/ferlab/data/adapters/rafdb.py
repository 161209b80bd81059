"""The ``rafdb`` adapter: RAF-DB basic (7 emotions), in two layouts.

- the common re-packaging ``DATASET/train/<1..7>/``, ``DATASET/test/<1..7>/`` (the root may be
  the folder holding ``DATASET`` or ``DATASET`` itself);
- the official basic release ``Image/aligned/train_00001_aligned.jpg`` +
  ``EmoLabel/list_patition_label.txt`` (rows ``train_00001.jpg 5``; the root may also be the
  folder holding ``basic/``).

RAF-DB numbers its labels 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral
(``ferlab.labels.RAFDB_BASIC``). Train and test are official; val is carved from train by the loader.
Images of the release that the label list does not name are counted in ``ignored``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from ferlab.data.adapters.utils import (
    accept_options,
    check_options,
    count_unlisted,
    count_unused,
    file_problem,
    image_table,
    list_fields,
    open_text,
    refuse_unused,
    require_dir,
    scan_class_folders,
)
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.labels import EMOTIONS, INDEX, RAFDB_BASIC

NATIVE: dict[str, str] = {str(k): v for k, v in RAFDB_BASIC.items()}
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
PROTOCOL = "RAF-DB official train/test split; val is carved from train by the loader."
OPTIONS = accept_options("rafdb", "images", "class_map")


@register_dataset("rafdb")
def rafdb(root: Path, **options: Any) -> DatasetIndex:
    """Index RAF-DB basic. Options: ``images`` (``aligned`` | ``original``, basic release only), ``class_map``."""
    check_options("rafdb", options)
    root = require_dir(
        Path(root), "RAF-DB root", "Point it at DATASET/ (train/, test/) or at the basic release."
    )
    images = str(options.get("images", "aligned")).lower()
    if images not in ("aligned", "original"):
        raise DatasetError(f"rafdb option images={images!r}: use aligned or original.")
    ignored: Counter[str] = Counter()
    for base in (root, root / "basic"):
        if (base / LABEL_FILE).is_file():
            refuse_unused(
                "rafdb",
                options,
                ("class_map",),
                f"the basic release ({str(base / LABEL_FILE)!r} names the labels)",
            )
            if base != root:
                count_unused(root, {base.name}, ignored)
            count_unused(base, {"EmoLabel", "Image"}, ignored)
            splits, bad = _index_basic(base, images, ignored)
            return _index(root, splits, bad, ignored)
    for base in (root / "DATASET", root):
        if (base / "train").is_dir() or (base / "test").is_dir():
            refuse_unused(
                "rafdb",
                options,
                ("images",),
                f"the DATASET/train/, DATASET/test/ layout ({str(base)!r})",
            )
            if base != root:
                count_unused(root, {base.name}, ignored)
            count_unused(base, {"train", "test"}, ignored)
            splits, bad = _index_folders(base, options.get("class_map"), ignored)
            return _index(root, splits, bad, ignored)
    raise DatasetError(
        f"RAF-DB root {str(root)!r} holds neither DATASET/train/ and DATASET/test/ nor "
        f"{LABEL_FILE} with Image/aligned/. Point the path at one of these layouts."
    )


def _index(
    root: Path, splits: dict[str, list[Record]], bad: list[BadFile], ignored: Counter[str]
) -> DatasetIndex:
    return DatasetIndex(
        name="rafdb",
        root=str(root),
        labels=list(EMOTIONS),
        splits=splits,
        protocol=PROTOCOL,
        bad_files=bad,
        color=True,
        ignored=dict(sorted(ignored.items())),
    )


def _index_folders(
    base: Path, class_map: Any, ignored: Counter[str]
) -> tuple[dict[str, list[Record]], list[BadFile]]:
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    for split in ("train", "test"):
        folder = require_dir(
            base / split,
            f"RAF-DB {split} folder",
            f"The layout is {base}/train/<1..7>/ and {base}/test/<1..7>/; restore the folder.",
        )
        records, bad_here = scan_class_folders(
            folder, class_map=class_map, native=NATIVE, ignored=ignored
        )
        splits[split] = records
        bad.extend(bad_here)
    return splits, bad


def _index_basic(
    base: Path, images: str, ignored: Counter[str]
) -> tuple[dict[str, list[Record]], list[BadFile]]:
    image_dir = require_dir(
        base / "Image" / images,
        "RAF-DB image folder",
        f"The basic release keeps its images in Image/{images}/ beside EmoLabel/.",
    )
    sizes = image_table(image_dir, ignored)
    named: set[str] = set()
    splits: dict[str, list[Record]] = {"train": [], "test": []}
    bad: list[BadFile] = []
    label_file = base / LABEL_FILE
    with open_text(label_file) as f:
        for line_no, line in enumerate(f, start=1):
            fields = list_fields(line)
            if not fields:
                continue
            split, record, problem = _basic_row(fields, image_dir, sizes, images, named)
            if problem is not None:
                bad.append(BadFile(f"{label_file}:{line_no}", f"line {line_no}: {problem}"))
            elif split is not None and record is not None:
                splits[split].append(record)
    count_unlisted(ignored, sizes, named, LABEL_FILE.name)
    for split, records in splits.items():
        if not records:
            raise DatasetError(
                f"{str(label_file)!r} lists no usable {split}_* images. Check the file and {image_dir}."
            )
        records.sort(key=lambda r: r.path)
    return splits, bad


def _basic_row(
    fields: list[str],
    image_dir: Path,
    sizes: dict[str, int | str],
    images: str,
    named: set[str],
) -> tuple[str | None, Record | None, str | None]:
    """(split, record, None) for a good ``train_00001.jpg 5`` row, (None, None, problem) otherwise.

    The image file the row names is added to ``named``.
    """
    if len(fields) != 2:
        return (
            None,
            None,
            f"{len(fields)} fields, expected 2 (image name, label 1..7): {' '.join(fields)!r}",
        )
    name, label_text = fields
    stem, ext = os.path.splitext(name)
    file_name = f"{stem}_aligned{ext}" if images == "aligned" else name
    named.add(file_name)
    if label_text not in NATIVE:
        return None, None, f"label {label_text!r} is not 1..7"
    split = name.split("_", 1)[0]
    if split not in ("train", "test"):
        return None, None, f"image name {name!r} does not start with train_ or test_"
    path = str(image_dir / file_name)
    problem = file_problem(path, sizes.get(file_name))
    if problem is not None:
        return None, None, problem
    return split, Record(path=path, label=INDEX[NATIVE[label_text]]), None
