"""The ``fer2013`` adapter: the image-folder release and the two CSV releases.

Layouts, detected from what is under the root (or the root is the CSV file itself):

- image folders ``train/<emotion>/``, ``test/<emotion>/`` (optionally ``val/``); the file names
  keep the original split (``Training_*``, ``PublicTest_*``, ``PrivateTest_*``);
- ``fer2013.csv`` (``emotion,pixels,Usage``) and Kaggle's ``icml_face_data.csv``
  (``emotion, Usage, pixels``: headers with leading spaces), also gzipped (``.csv.gz``), with
  or without a byte-order mark, ``\r\n`` line ends, quoted fields and blank lines.

Official protocol: Training -> train, PublicTest -> val, PrivateTest -> test. Both layouts give
the same splits and labels for the same images. In the folder release a ``test/`` that mixes
prefixed and un-prefixed files is an error naming them (it would silently change the
protocol); ``split_by_prefix: false`` keeps all of ``test/`` as test instead.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.data.adapters.utils import (
    SPLIT_FOLDERS,
    accept_options,
    check_options,
    count_unused,
    open_text,
    refuse_unused,
    require_dir,
    scan_class_folders,
    subdirectories,
)
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.labels import EMOTIONS, FER2013, INDEX

USAGE_SPLIT: dict[str, str] = {"training": "train", "publictest": "val", "privatetest": "test"}
PREFIX_SPLIT: dict[str, str] = {"PublicTest_": "val", "PrivateTest_": "test"}
CSV_NAMES: tuple[str, ...] = ("fer2013.csv", "icml_face_data.csv")
PIXELS = 48 * 48
CHUNK_ROWS = 1024  # CSV rows checked together
_ALLOWED = b"0123456789 \t\n"
_CHAR_ALLOWED = np.zeros(256, dtype=np.uint8)  # byte -> 1 when allowed in a pixel string
_CHAR_ALLOWED[np.frombuffer(_ALLOWED, dtype=np.uint8)] = 1
_DIGIT_BYTES = frozenset(b"0123456789")
FOLDER_ONLY = ("split_by_prefix", "class_map")  # options of the image-folder release only
OPTIONS = accept_options("fer2013", "layout", *FOLDER_ONLY)
MAX_NAMED = 5  # un-prefixed files named in the error


@register_dataset("fer2013")
def fer2013(root: Path, **options: Any) -> DatasetIndex:
    """Index FER2013 from its image folders or its CSV.

    Options: ``layout`` (``auto`` | ``folder`` | ``csv``), ``split_by_prefix`` (default true:
    in the folder release, ``test/`` is split into val = PublicTest_ and test = PrivateTest_ by
    the file-name prefixes; false keeps all of ``test/`` as test and leaves val to the loader),
    ``class_map``.
    """
    check_options("fer2013", options)
    root = Path(root)
    layout = str(options.get("layout", "auto")).lower()
    if layout not in ("auto", "folder", "csv"):
        raise DatasetError(f"fer2013 option layout={layout!r}: use auto, folder or csv.")
    ignored: Counter[str] = Counter()
    if layout == "csv" or (layout == "auto" and not _has_split_folders(root)):
        csv_path = _find_csv(root)
        refuse_unused("fer2013", options, FOLDER_ONLY, f"the CSV release ({str(csv_path)!r})")
        if root.is_dir():
            used = {csv_path.relative_to(root).parts[0]}
            count_unused(root, used, ignored)
        return _index_csv(csv_path, ignored)
    return _index_folders(
        root,
        class_map=options.get("class_map"),
        by_prefix=bool(options.get("split_by_prefix", True)),
        ignored=ignored,
    )


def _has_split_folders(root: Path) -> bool:
    return root.is_dir() and any(d.name.lower() in SPLIT_FOLDERS for d in subdirectories(root))


def _find_csv(root: Path) -> Path:
    if root.is_file():
        return root
    require_dir(
        root, "FER2013 root", "Point it at the folder holding train/ and test/ or fer2013.csv."
    )
    for folder in (root, root / "fer2013"):
        for name in CSV_NAMES:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    found = sorted(
        p.name
        for p in root.iterdir()
        if p.name.lower().endswith((".csv", ".csv.gz")) and not p.name.startswith(".")
    )
    if len(found) == 1:
        return root / found[0]
    raise DatasetError(
        f"FER2013 root {str(root)!r} holds neither train/ and test/ image folders nor "
        f"{' or '.join(CSV_NAMES)} (CSV files found: {', '.join(found) or 'none'}). Point the "
        "path at the image-folder release or at the CSV file itself."
    )


# ---------------------------------------------------------------------------- image folders
def _index_folders(
    root: Path, *, class_map: Any, by_prefix: bool, ignored: Counter[str]
) -> DatasetIndex:
    require_dir(root, "FER2013 root", "Point it at the folder holding train/ and test/.")
    folders = {
        SPLIT_FOLDERS[d.name.lower()]: Path(d.path)
        for d in subdirectories(root)
        if d.name.lower() in SPLIT_FOLDERS
    }
    for split in ("train", "test"):
        if split not in folders:
            raise DatasetError(
                f"FER2013 root {str(root)!r} has no {split}/ folder. The image-folder release "
                f"has train/<emotion>/ and test/<emotion>/; restore {split}/ or point the path "
                "at the folder that holds both."
            )
    count_unused(root, {p.name for p in folders.values()}, ignored)
    splits: dict[str, list[Record]] = {}
    bad: list[BadFile] = []
    for split, folder in sorted(folders.items()):
        records, bad_here = scan_class_folders(folder, class_map=class_map, ignored=ignored)
        splits[split] = records
        bad.extend(bad_here)
    if "val" in splits:
        protocol = "Split folders train, val and test as given."
    elif by_prefix and _any_prefixed(splits["test"]):
        _check_all_prefixed(folders["test"], splits["test"])
        splits["val"] = [r for r in splits["test"] if _prefix_split(r.path) == "val"]
        splits["test"] = [r for r in splits["test"] if _prefix_split(r.path) == "test"]
        protocol = (
            "FER2013 official protocol: train/ (Training_) is train; test/ is split by file-name "
            "prefix into val (PublicTest_) and test (PrivateTest_)."
        )
    elif by_prefix:
        protocol = (
            "FER2013 folders without PublicTest_/PrivateTest_ prefixes in test/: train/ is train, "
            "test/ is test; val is carved from train by the loader."
        )
    else:
        protocol = (
            "FER2013 folders with split_by_prefix=false: train/ is train, all of test/ "
            "(PublicTest_ and PrivateTest_) is test; val is carved from train by the loader."
        )
    return DatasetIndex(
        name="fer2013",
        root=str(root),
        labels=list(EMOTIONS),
        splits={s: splits[s] for s in ("train", "val", "test") if s in splits},
        protocol=protocol,
        bad_files=bad,
        color=False,
        ignored=dict(sorted(ignored.items())),
    )


def _check_all_prefixed(test_dir: Path, records: list[Record]) -> None:
    """A test/ with PublicTest_/PrivateTest_ files must have no other file: say which."""
    stray = [r.path for r in records if _prefix_split(r.path) is None]
    if not stray:
        return
    named = ", ".join(repr(os.path.relpath(p, test_dir)) for p in stray[:MAX_NAMED])
    more = f" and {len(stray) - MAX_NAMED} more" if len(stray) > MAX_NAMED else ""
    raise DatasetError(
        f"FER2013 {str(test_dir)!r} splits into val (PublicTest_*) and test (PrivateTest_*) by "
        f"file-name prefix, but {len(stray)} file(s) have neither prefix: {named}{more}. "
        "Rename them with the prefix of their split or remove them, or set the dataset option "
        "split_by_prefix: false to keep all of test/ as test (val is then carved from train)."
    )


def _prefix_split(path: str) -> str | None:
    name = os.path.basename(path)
    for prefix, split in PREFIX_SPLIT.items():
        if name.startswith(prefix):
            return split
    return None


def _any_prefixed(records: list[Record]) -> bool:
    return any(_prefix_split(r.path) is not None for r in records)


# ---------------------------------------------------------------------------- CSV
def _index_csv(path: Path, ignored: Counter[str]) -> DatasetIndex:
    splits: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    bad: list[BadFile] = []
    with open_text(path) as f:
        lines = enumerate(f, start=1)
        header: list[str] = []
        for _, line in lines:  # the header is the first line that is not blank
            header = _split_line(line)
            if any(h.strip() for h in header):
                break
        columns = _csv_columns(path, header)
        chunk: list[tuple[int, list[str]]] = []  # (line number, fields)
        row = 0
        for line_no, line in lines:
            if not line.replace(",", "").strip():  # blank, or only commas
                continue
            chunk.append((line_no, _split_line(line)))
            if len(chunk) == CHUNK_ROWS:
                row = _add_rows(path, chunk, row, columns, len(header), splits, bad)
                chunk = []
        _add_rows(path, chunk, row, columns, len(header), splits, bad)
    if not any(splits.values()):
        raise DatasetError(
            f"FER2013 CSV {str(path)!r} has no valid rows. Check that the file is complete."
        )
    return DatasetIndex(
        name="fer2013",
        root=str(path),
        labels=list(EMOTIONS),
        splits=splits,
        protocol=(
            "FER2013 official protocol from the CSV's Usage column: Training -> train, "
            "PublicTest -> val, PrivateTest -> test."
        ),
        bad_files=bad,
        color=False,
        ignored=dict(sorted(ignored.items())),
    )


def _split_line(line: str) -> list[str]:
    """CSV fields of one line, quotes removed; FER2013 rows rarely hold quotes, so a plain
    split is the fast path. Fields keep their spaces (they are stripped where read)."""
    line = line.rstrip("\r\n")
    if '"' in line:
        return next(csv.reader([line], skipinitialspace=True), [])
    return line.split(",") if line else []


def _add_rows(
    path: Path,
    rows: list[tuple[int, list[str]]],
    first_row: int,
    columns: dict[str, int],
    width: int,
    splits: dict[str, list[Record]],
    bad: list[BadFile],
) -> int:
    """Check a chunk of data rows, add its records (or bad rows); returns the next row number."""
    parsed = [_csv_fields(fields, columns, width) for _, fields in rows]
    pixel_problems = pixel_problems_of([p[2] if isinstance(p, tuple) else "" for p in parsed])
    for offset, ((line_no, _), fields) in enumerate(zip(rows, parsed, strict=True)):
        i = first_row + offset
        problem = fields if isinstance(fields, str) else pixel_problems.get(offset)
        if problem is not None:
            bad.append(BadFile(f"{path}#row{i}", f"row {i} (line {line_no}): {problem}"))
        elif isinstance(fields, tuple):
            split, label, pixels = fields
            splits[split].append(Record(path=str(path), label=label, pixels=pixels, row=i))
    return first_row + len(rows)


def _csv_fields(row: list[str], columns: dict[str, int], width: int) -> tuple[str, int, str] | str:
    """(split, canonical label, stripped pixels) of a row, or the problem with it."""
    if len(row) != width:
        return f"{len(row)} fields, expected {width}"
    label_text = row[columns["emotion"]].strip()
    if not label_text.isdigit() or int(label_text) not in FER2013:
        return f"emotion {label_text!r} is not an integer 0..6"
    usage = row[columns["usage"]].strip()
    split = USAGE_SPLIT.get(usage.lower())
    if split is None:
        return f"Usage {usage!r} is not Training, PublicTest or PrivateTest"
    return split, INDEX[FER2013[int(label_text)]], row[columns["pixels"]].strip()


def _csv_columns(path: Path, header: list[str]) -> dict[str, int]:
    """Positions of the emotion, pixels and usage columns (headers compared stripped, lower-case)."""
    names = [h.strip().lower() for h in header]
    missing = [c for c in ("emotion", "pixels", "usage") if c not in names]
    if missing:
        raise DatasetError(
            f"FER2013 CSV {str(path)!r} lacks the column(s) {', '.join(missing)} (its header: "
            f"{', '.join(h.strip() for h in header) or 'empty file'}). Expected fer2013.csv "
            "(emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)."
        )
    return {c: names.index(c) for c in ("emotion", "pixels", "usage")}


def pixel_problem(pixels: str) -> str | None:
    """Why a CSV pixel string is not 48x48 grey values 0..255, or None when it is."""
    return pixel_problems_of([pixels.strip()]).get(0)


def pixel_problems_of(rows: list[str]) -> dict[int, str]:
    """Problems of pixel strings by position in ``rows``; rows that are fine are absent.

    Vectorised over all rows at once with byte-wise array ops (35,887 FER2013 rows take a few
    seconds): characters other than digits and spaces, the value count, values above 255.
    """
    if not rows:
        return {}
    blob = "\n".join(rows).encode("utf-8")
    data = np.frombuffer(blob, dtype=np.uint8)
    row_ends = np.append(np.flatnonzero(data == ord("\n")), data.size)  # one per row
    problems: dict[int, str] = {}
    if blob.translate(None, _ALLOWED):
        for pos in np.flatnonzero(_CHAR_ALLOWED[data] == 0).tolist():
            row = int(np.searchsorted(row_ends, pos))
            char = blob[pos : pos + 1].decode("utf-8", "replace")
            problems.setdefault(row, f"pixel string holds {char!r}; expected digits and spaces")
    digit = (data >= ord("0")) & (data <= ord("9"))
    first = digit.copy()
    first[1:] &= ~digit[:-1]  # first digit of each number
    starts = np.flatnonzero(first)
    counts = np.diff(np.searchsorted(starts, np.concatenate([[0], row_ends])))
    for row in np.flatnonzero(counts != PIXELS).tolist():
        problems.setdefault(row, f"{counts[row]} pixel values, expected {PIXELS} (48x48)")
    for pos in _over_255(data, digit).tolist():
        row = int(np.searchsorted(row_ends, pos))
        if row not in problems:
            end = pos
            while end < len(blob) and blob[end] in _DIGIT_BYTES:
                end += 1
            problems[row] = f"pixel value {int(blob[pos:end])} is not 0..255"
    return problems


def _over_255(data: np.ndarray, digit: np.ndarray) -> np.ndarray:
    """Start positions of numbers above 255 (4+ digits, or 3 digits above 255), ascending."""
    bad = np.zeros(data.size, dtype=bool)
    if data.size < 3:
        return np.flatnonzero(bad)
    a, b, c = data[:-2], data[1:-1], data[2:]
    three = digit[:-2] & digit[1:-1] & digit[2:]
    high = (a > ord("2")) | (
        (a == ord("2")) & ((b > ord("5")) | ((b == ord("5")) & (c > ord("5"))))
    )
    bad[:-2] = three & high
    bad[:-3] |= three[:-1] & digit[3:]
    # Keep only the first flagged position of each number.
    bad[1:] &= ~digit[:-1]
    return np.flatnonzero(bad)
