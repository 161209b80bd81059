"""The ``ferplus`` adapter: Microsoft's FER+ relabelling of FER2013 by 10 annotators.

Layout: ``FER2013Train/``, ``FER2013Valid/``, ``FER2013Test/`` (any subset), each with ``*.png``
and ``label.csv`` rows ``file,"(x, y, w, h)",neutral,happiness,surprise,sadness,anger,disgust,
fear,contempt,unknown,NF`` (vote counts; no header in Microsoft's file, one is skipped if present;
``label.csv.gz`` is read too). Images no row names are counted in ``ignored``.

Majority label, Microsoft's rule (FERPlus ``src/ferplus.py``, mode ``majority``): votes of a class
with a single vote are dropped as outliers; the top class must then hold more than half of the
remaining votes (unknown and NF included). Otherwise, or when unknown/NF wins, the image is left
out and counted in ``excluded``. Each record's ``soft`` holds the vote shares over ``CANONICAL``
after outlier removal, emotion classes only (soft-label targets).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferlab.data.adapters.utils import (
    accept_options,
    check_options,
    count_unlisted,
    count_unused,
    csv_rows,
    file_problem,
    find_file,
    image_table,
    list_dir,
    open_text,
    require_dir,
)
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.labels import CANONICAL, FERPLUS_COLUMNS, INDEX

FOLDERS: dict[str, str] = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
NO_MAJORITY = "no majority label"
MAJORITY_UNKNOWN = "majority unknown"
MAJORITY_NOT_FACE = "majority not a face"
FULL_BOX = (0, 0, 48, 48)
LABEL_CSV = "label.csv"
OPTIONS = accept_options("ferplus")


@register_dataset("ferplus")
def ferplus(root: Path, **options: Any) -> DatasetIndex:
    """Index FER+ with majority labels (8 classes incl. contempt) and soft vote shares."""
    check_options("ferplus", options)
    root = require_dir(Path(root), "FER+ root", "Point it at the folder holding FER2013Valid/ etc.")
    ignored: Counter[str] = Counter()
    folders = _split_folders(root, ignored)
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    for folder_name, split in FOLDERS.items():
        if folder_name in folders:
            records, bad_here, excluded_here = _index_folder(folders[folder_name], ignored)
            splits[split] = records
            bad.extend(bad_here)
            excluded.update(excluded_here)
    given = ", ".join(f"{name} -> {FOLDERS[name]}" for name in FOLDERS if name in folders)
    missing = "" if "val" in splits else "; val is carved from train by the loader"
    return DatasetIndex(
        name="ferplus",
        root=str(root),
        labels=list(CANONICAL),
        splits=splits,
        protocol=f"FER+ official folders ({given}), majority labels under Microsoft's rule{missing}.",
        bad_files=bad,
        excluded=dict(sorted(excluded.items())),
        color=False,
        ignored=dict(sorted(ignored.items())),
    )


def _split_folders(root: Path, ignored: Counter[str]) -> dict[str, Path]:
    """FER2013Train/Valid/Test under the root or its ``data/`` folder (name case ignored)."""
    for base in (root, root / "data"):
        if not base.is_dir():
            continue
        names = {e.name.lower(): Path(e.path) for e in list_dir(base, Counter()).dirs}
        found = {name: names[name.lower()] for name in FOLDERS if name.lower() in names}
        if found:
            if base != root:
                count_unused(root, {base.name}, ignored)
            count_unused(base, {p.name for p in found.values()}, ignored)
            return found
    raise DatasetError(
        f"FER+ root {str(root)!r} holds none of {', '.join(FOLDERS)}. Each holds the *.png "
        "images and label.csv; point the path at their parent folder."
    )


def _index_folder(
    folder: Path, ignored: Counter[str]
) -> tuple[list[Record], list[BadFile], Counter[str]]:
    label_file = find_file(folder, LABEL_CSV)
    if label_file is None:
        raise DatasetError(
            f"FER+ folder {str(folder)!r} has no label.csv. Copy label.csv from "
            f"microsoft/FERPlus data/{folder.name}/ into it."
        )
    sizes = image_table(folder, ignored, own={label_file.name})
    named: set[str] = set()
    records: list[Record] = []
    bad: list[BadFile] = []
    excluded: Counter[str] = Counter()
    with open_text(label_file) as f:
        for n, (line_no, row) in enumerate(csv_rows(f)):
            if n == 0 and _is_header(row):
                continue
            named.add(row[0])
            record, problem, reason = _row(row, folder, sizes)
            if problem is not None:
                bad.append(BadFile(f"{label_file}:{line_no}", f"line {line_no}: {problem}"))
            elif reason is not None:
                excluded[reason] += 1
            elif record is not None:
                records.append(record)
    count_unlisted(ignored, sizes, named, label_file.name)
    records.sort(key=lambda r: r.path)
    return records, bad, excluded


def _is_header(row: Sequence[str]) -> bool:
    return len(row) > 2 and not row[2].strip().isdigit()


def _row(
    row: Sequence[str], folder: Path, sizes: dict[str, int | str]
) -> tuple[Record | None, str | None, str | None]:
    """(record, problem, excluded reason) for one label.csv row (fields stripped); at most one
    is not None."""
    width = 2 + len(FERPLUS_COLUMNS)
    if len(row) != width:
        return None, f"{len(row)} fields, expected {width} (file, box, 10 vote counts)", None
    name = row[0]
    texts = list(row[2:])
    if not all(t.isdigit() for t in texts):
        return None, f"vote counts {', '.join(texts)} are not all integers >= 0", None
    box = _parse_box(row[1])
    if box is None:
        return None, f"box {row[1]!r} is not '(x, y, w, h)' with w, h > 0", None
    path = str(folder / name)
    problem = file_problem(path, sizes.get(name))
    if problem is not None:
        return None, problem, None
    winner, reason = majority([int(t) for t in texts])
    if winner is None:
        return None, None, reason
    kept = drop_outliers([int(t) for t in texts])
    return (
        Record(
            path=path,
            label=winner,
            box=None if box == FULL_BOX else box,
            soft=soft_votes(kept),
        ),
        None,
        None,
    )


def _parse_box(text: str) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) from '(x, y, w, h)', or None when malformed."""
    parts = text.strip().strip("()").split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        return None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        return None
    return x, y, x + w, y + h


def drop_outliers(votes: Sequence[int]) -> list[int]:
    """Votes with single-vote classes set to 0 (Microsoft's outlier removal)."""
    return [v if v > 1 else 0 for v in votes]


def majority(votes: Sequence[int]) -> tuple[int | None, str | None]:
    """(canonical index, None) of the majority class of 10 FER+ vote counts, or (None, reason).

    After outlier removal the top class must hold more than half of the remaining votes
    (unknown and NF count); a winning unknown or NF leaves the image out too.
    """
    kept = drop_outliers(votes)
    total = sum(kept)
    top = max(kept)
    if total == 0 or 2 * top <= total:
        return None, NO_MAJORITY
    column, name = FERPLUS_COLUMNS[kept.index(top)]
    if name is None:
        return None, MAJORITY_UNKNOWN if column == "unknown" else MAJORITY_NOT_FACE
    return INDEX[name], None


def soft_votes(kept: Sequence[int]) -> tuple[float, ...]:
    """Vote shares over CANONICAL from outlier-free votes, emotion classes only."""
    counts = [0] * len(CANONICAL)
    for (_, name), votes in zip(FERPLUS_COLUMNS, kept, strict=True):
        if name is not None:
            counts[INDEX[name]] += votes
    total = sum(counts)
    return tuple(c / total if total else 0.0 for c in counts)
