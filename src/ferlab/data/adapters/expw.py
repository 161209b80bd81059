"""The ``expw`` adapter: Expression in-the-Wild, as cropped faces or as photos plus ``label.lst``.

- cropped faces ``Expw-F/<emotion>/*.jpg`` (the root may be the folder holding ``Expw-F``, or
  ``Expw-F`` itself);
- the distributed form: whole photos in ``origin/`` (or ``image/origin/``, ``images/``, ``image/``)
  and a face list ``label.lst`` (or ``label/label.lst``) with rows
  ``image_name face_id top left right bottom confidence label`` (label 0..6 = angry, disgust,
  fear, happy, sad, surprise, neutral). Each face becomes a record with its box, enlarged by the
  ``margin`` option and clipped to the photo (some boxes run past the border).

ExpW has no official split: a seeded stratified train/val/test split is made here, with the
split settings ``load_dataset`` passes (the ``data:`` section's). With ``label.lst`` the faces
of one photo share a split (``Record.group`` is the photo), so no photo is in two splits.
Photos that no row names are counted in ``ignored``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ferlab.data.adapters.utils import (
    SPLIT_OPTIONS,
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
    seeded_split,
    split_options,
    split_protocol,
    subdirectories,
)
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.data.decode import BadImageError, open_image
from ferlab.labels import EMOTIONS, EXPW, INDEX

IMAGE_DIRS: tuple[str, ...] = ("origin", "image/origin", "images/origin", "images", "image")
LABEL_FILES: tuple[str, ...] = ("label.lst", "label/label.lst")
Box = tuple[int, int, int, int]
OPTIONS = accept_options("expw", "margin", "class_map", *SPLIT_OPTIONS)


@register_dataset("expw")
def expw(root: Path, **options: Any) -> DatasetIndex:
    """Index ExpW. Options: ``margin`` (fraction to enlarge boxes, label.lst only, default 0),
    ``class_map`` (Expw-F folders only), ``split_seed``, ``val_fraction``, ``test_fraction``
    (default 0, 0.1, 0.1; ``load_dataset`` passes the ``data:`` section's)."""
    check_options("expw", options)
    root = require_dir(
        Path(root), "ExpW root", "Point it at the folder holding Expw-F/ or origin/ and label.lst."
    )
    seed, val_fraction, test_fraction = split_options(options)
    margin = float(options.get("margin", 0.0))
    if margin < 0:
        raise DatasetError(
            f"expw option margin={margin} must be >= 0 (a fraction of the box size)."
        )
    ignored: Counter[str] = Counter()
    label_file = next((root / p for p in LABEL_FILES if (root / p).is_file()), None)
    if label_file is not None:
        refuse_unused("expw", options, ("class_map",), f"label.lst ({str(label_file)!r})")
        records, bad = _index_label_list(root, label_file, margin, ignored)
        layout = (
            f"faces of {label_file.name} cropped from the photos (margin {margin:g}), "
            "the faces of one photo in one split"
        )
    else:
        refuse_unused("expw", options, ("margin",), "the cropped faces of Expw-F/")
        records, bad = scan_class_folders(
            _faces_dir(root, ignored), class_map=options.get("class_map"), ignored=ignored
        )
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
        ignored=dict(sorted(ignored.items())),
    )


def _faces_dir(root: Path, ignored: Counter[str]) -> Path:
    dirs = subdirectories(root)
    for entry in dirs:
        if entry.name.lower() == "expw-f":
            count_unused(root, {entry.name}, ignored)
            return Path(entry.path)
    if dirs:
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
    root: Path, label_file: Path, margin: float, ignored: Counter[str]
) -> tuple[list[Record], list[BadFile]]:
    image_dir = _image_dir(root)
    count_unused(
        root, {label_file.relative_to(root).parts[0], image_dir.relative_to(root).parts[0]}, ignored
    )
    sizes = image_table(image_dir, ignored)
    named: set[str] = set()
    shapes: dict[str, tuple[int, int] | str] = {}  # photo name -> (width, height) or problem
    records: list[Record] = []
    bad: list[BadFile] = []
    with open_text(label_file) as f:
        for line_no, line in enumerate(f, start=1):
            fields = list_fields(line)
            if not fields:
                continue
            named.add(fields[0])
            record, problem = _face_row(fields, image_dir, sizes, shapes, margin)
            if problem is not None:
                bad.append(BadFile(f"{label_file}:{line_no}", f"line {line_no}: {problem}"))
            elif record is not None:
                records.append(record)
    count_unlisted(ignored, sizes, named, label_file.name)
    return records, bad


def _face_row(
    fields: list[str],
    image_dir: Path,
    sizes: dict[str, int | str],
    shapes: dict[str, tuple[int, int] | str],
    margin: float,
) -> tuple[Record | None, str | None]:
    """A face record for one label.lst row, or the problem with it."""
    row = " ".join(fields)
    if len(fields) != 8:
        return None, (
            f"{len(fields)} fields, expected 8 (image face_id top left right bottom "
            f"confidence label): {row!r}"
        )
    name = fields[0]
    try:
        top, left, right, bottom = (int(v) for v in fields[2:6])
        label = int(fields[7])
    except ValueError:
        return None, f"face_id, box and label must be integers: {row!r}"
    if label not in EXPW:
        return None, f"label {label} is not 0..6"
    path = str(image_dir / name)
    problem = file_problem(path, sizes.get(name))
    if problem is not None:
        return None, problem
    shape = shapes.get(name)
    if shape is None:
        shape = shapes[name] = _image_size(path)
    if isinstance(shape, str):
        return None, f"{path!r}: {shape}"
    if right <= left or bottom <= top:
        return None, (
            f"box left={left} top={top} right={right} bottom={bottom} is inverted or empty "
            f"(right must exceed left, bottom must exceed top) in the photo {path!r}"
        )
    box = clip_box(enlarge_box((left, top, right, bottom), margin), shape)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, (
            f"box left={left} top={top} right={right} bottom={bottom} lies outside the "
            f"{shape[0]}x{shape[1]} photo {path!r} (empty once clipped to it)"
        )
    return Record(path=path, label=INDEX[EXPW[label]], box=box, group=path), None


def _image_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the image header (no decode), or why it cannot be read."""
    try:
        with open_image(path) as img:
            return img.size
    except BadImageError as err:
        return err.reason


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
