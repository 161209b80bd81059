"""The ``expw`` adapter: Expression in-the-Wild, as cropped faces or as photos plus ``label.lst``.

- cropped faces ``Expw-F/<emotion>/*.jpg`` (the root may be the folder holding ``Expw-F``, or
  ``Expw-F`` itself);
- the distributed form: whole photos in ``origin/`` (or ``image/origin/``, ``images/``, ``image/``)
  and a face list ``label.lst`` (or ``label/label.lst``) with rows
  ``image_name face_id top left right bottom confidence label`` (label 0..6 = angry, disgust,
  fear, happy, sad, surprise, neutral). Each face becomes a record with its box, enlarged by the
  ``margin`` option and clipped to the photo (some boxes run past the border).

ExpW has no official split: a seeded stratified train/val/test split is made here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from ferlab.data.adapters.utils import (
    ZERO_BYTE,
    check_options,
    require_dir,
    scan_class_folders,
    seeded_split,
    split_options,
    split_protocol,
    subdirectories,
)
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.labels import EMOTIONS, EXPW, INDEX

IMAGE_DIRS: tuple[str, ...] = ("origin", "image/origin", "images/origin", "images", "image")
LABEL_FILES: tuple[str, ...] = ("label.lst", "label/label.lst")
Box = tuple[int, int, int, int]


@register_dataset("expw")
def expw(root: Path, **options: Any) -> DatasetIndex:
    """Index ExpW. Options: ``margin`` (fraction to enlarge boxes, default 0), ``class_map``,
    ``split_seed``, ``val_fraction``, ``test_fraction`` (default 0, 0.1, 0.1)."""
    check_options("expw", options, ("margin",))
    root = require_dir(
        Path(root), "ExpW root", "Point it at the folder holding Expw-F/ or origin/ and label.lst."
    )
    seed, val_fraction, test_fraction = split_options(options)
    margin = float(options.get("margin", 0.0))
    if margin < 0:
        raise DatasetError(
            f"expw option margin={margin} must be >= 0 (a fraction of the box size)."
        )
    label_file = next((root / p for p in LABEL_FILES if (root / p).is_file()), None)
    if label_file is not None:
        records, bad = _index_label_list(root, label_file, margin)
        layout = f"faces of {label_file.name} cropped from the photos (margin {margin:g})"
    else:
        records, bad = scan_class_folders(_faces_dir(root), class_map=options.get("class_map"))
        layout = "cropped faces in Expw-F/<emotion>/"
    if not records:
        raise DatasetError(f"ExpW root {str(root)!r} yields no usable faces; see its bad files.")
    return DatasetIndex(
        name="expw",
        root=str(root),
        labels=list(EMOTIONS),
        splits=seeded_split(records, seed, val_fraction, test_fraction),
        protocol=f"ExpW has no official split; {layout}: "
        f"{split_protocol(seed, val_fraction, test_fraction)}.",
        bad_files=bad,
        color=True,
    )


def _faces_dir(root: Path) -> Path:
    for entry in subdirectories(root):
        if entry.name.lower() == "expw-f":
            return Path(entry.path)
    if subdirectories(root):
        return root  # root is Expw-F itself: its sub-folders are the classes
    raise DatasetError(
        f"ExpW root {str(root)!r} holds neither Expw-F/<emotion>/ folders nor label.lst with "
        "origin/ photos. Point the path at one of these layouts."
    )


def _image_dir(root: Path) -> Path:
    for rel in IMAGE_DIRS:
        if (root / rel).is_dir():
            return root / rel
    raise DatasetError(
        f"ExpW root {str(root)!r} has label.lst but no photo folder; expected one of "
        f"{', '.join(d + '/' for d in IMAGE_DIRS)} beside it."
    )


def _index_label_list(
    root: Path, label_file: Path, margin: float
) -> tuple[list[Record], list[BadFile]]:
    image_dir = _image_dir(root)
    with os.scandir(image_dir) as it:
        sizes = {e.name: e.stat().st_size for e in it if e.is_file()}
    shapes: dict[str, tuple[int, int] | str] = {}  # photo name -> (width, height) or problem
    records: list[Record] = []
    bad: list[BadFile] = []
    with open(label_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record, problem = _face_row(line, image_dir, sizes, shapes, margin)
            if problem is not None:
                bad.append(BadFile(f"{label_file}:{line_no}", f"line {line_no}: {problem}"))
            elif record is not None:
                records.append(record)
    return records, bad


def _face_row(
    line: str,
    image_dir: Path,
    sizes: dict[str, int],
    shapes: dict[str, tuple[int, int] | str],
    margin: float,
) -> tuple[Record | None, str | None]:
    """A face record for one label.lst row, or the problem with it."""
    fields = line.split()
    if len(fields) != 8:
        return None, (
            f"{len(fields)} fields, expected 8 (image face_id top left right bottom "
            f"confidence label): {line.strip()!r}"
        )
    name = fields[0]
    try:
        top, left, right, bottom = (int(v) for v in fields[2:6])
        label = int(fields[7])
    except ValueError:
        return None, f"face_id, box and label must be integers: {line.strip()!r}"
    if label not in EXPW:
        return None, f"label {label} is not 0..6"
    path = str(image_dir / name)
    if name not in sizes:
        return None, f"image {path!r} is missing"
    if sizes[name] == 0:
        return None, f"{path!r}: {ZERO_BYTE}"
    shape = shapes.get(name)
    if shape is None:
        shape = shapes[name] = _image_size(path)
    if isinstance(shape, str):
        return None, f"{path!r}: {shape}"
    box = clip_box(enlarge_box((left, top, right, bottom), margin), shape)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, (
            f"box left={left} top={top} right={right} bottom={bottom} is empty inside the "
            f"{shape[0]}x{shape[1]} photo {path!r}"
        )
    return Record(path=path, label=INDEX[EXPW[label]], box=box), None


def _image_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the image header (no decode), or why it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"not a readable image ({err})"


def enlarge_box(box: Box, margin: float) -> Box:
    """Grow (left, top, right, bottom) by ``margin`` of its width and height on every side."""
    left, top, right, bottom = box
    dx = round((right - left) * margin)
    dy = round((bottom - top) * margin)
    return left - dx, top - dy, right + dx, bottom + dy


def clip_box(box: Box, size: tuple[int, int]) -> Box:
    """Clip (left, top, right, bottom) to an image of (width, height)."""
    width, height = size
    left, top, right, bottom = box
    return (
        min(max(left, 0), width),
        min(max(top, 0), height),
        min(max(right, 0), width),
        min(max(bottom, 0), height),
    )
