"""Checks and scanning helpers shared by the dataset adapters.

Option checks, folder checks, class-folder names, image listing and seeded splits live here
(as torchvision keeps its shared dataset checks in ``datasets/utils.py``), so every adapter
reports the same problem with the same message.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ferlab.data.base import BadFile, DatasetError, Record, stratified_split
from ferlab.labels import INDEX, UnknownLabelError, canonical_index

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
# Split folder names (lower-cased) and the split each one feeds.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
# Options every adapter accepts; the loader may pass them to any adapter.
COMMON_OPTIONS: frozenset[str] = frozenset(
    {"class_map", "split_seed", "val_fraction", "test_fraction", "on_bad_file"}
)
ZERO_BYTE = "zero-byte file (empty): re-copy it from the original download or delete it"


def check_options(dataset: str, options: Mapping[str, Any], own: Iterable[str] = ()) -> None:
    """Refuse option names the adapter does not know, so a typo is not silently ignored."""
    allowed = COMMON_OPTIONS | set(own)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for dataset {dataset!r}. "
            f"Accepted options: {', '.join(sorted(allowed))}. Fix the dataset's `options:` "
            "in the experiment file."
        )


def require_dir(path: Path, what: str, fix: str = "") -> Path:
    """``path`` if it is a folder, else a DatasetError naming it and what it should hold."""
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {str(path)!r} {state}. {fix}".rstrip())
    return path


def split_options(options: Mapping[str, Any]) -> tuple[int, float, float]:
    """The seeded-split options (split_seed, val_fraction, test_fraction), checked."""
    seed = int(options.get("split_seed", 0))
    val = float(options.get("val_fraction", 0.1))
    test = float(options.get("test_fraction", 0.1))
    if val < 0 or test < 0 or val + test >= 1:
        raise DatasetError(
            f"val_fraction={val} and test_fraction={test} must be >= 0 and sum to less than 1 "
            "(the rest is train). Fix the dataset options."
        )
    return seed, val, test


def seeded_split(
    records: list[Record], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[Record]]:
    """Stratified train/val/test split, deterministic for the seed and the record keys."""
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction}
    fractions["test"] = test_fraction
    return stratified_split(records, fractions, seed)


def split_protocol(seed: int, val_fraction: float, test_fraction: float) -> str:
    train = 1.0 - val_fraction - test_fraction
    return (
        f"seeded stratified split (seed {seed}): {train:.0%} train, {val_fraction:.0%} val, "
        f"{test_fraction:.0%} test per class"
    )


def class_index(
    name: str,
    *,
    class_map: Mapping[str, str] | None,
    where: str,
    native: Mapping[str, str] | None = None,
) -> int:
    """Canonical index of a class folder name.

    Looks in the user's ``class_map`` (exact, then case-insensitive), then the dataset's
    ``native`` names (e.g. RAF-DB's digit folders), then the synonyms of ``ferlab.labels``.
    """
    target = None
    if class_map:
        target = class_map.get(name)
        if target is None:
            lowered = {str(k).lower(): v for k, v in class_map.items()}
            target = lowered.get(name.lower())
    try:
        if target is not None:
            return canonical_index(str(target), where=f"class_map[{name!r}] for {where}")
        if native and name in native:
            return INDEX[native[name]]
        return canonical_index(name, where=where)
    except UnknownLabelError as err:
        extra = (
            f" This dataset also accepts the folder names {', '.join(native)}." if native else ""
        )
        raise DatasetError(f"{err}{extra}") from err


def subdirectories(directory: Path) -> list[os.DirEntry[str]]:
    """Visible sub-folders of ``directory``, sorted by name."""
    with os.scandir(directory) as it:
        dirs = [e for e in it if not e.name.startswith(".") and e.is_dir()]
    return sorted(dirs, key=lambda e: e.name)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(directory: Path | str) -> tuple[list[str], list[BadFile]]:
    """Image files directly in ``directory`` sorted by name; zero-byte ones come back as bad files."""
    with os.scandir(directory) as it:
        entries = sorted(
            (e for e in it if is_image_name(e.name) and e.is_file()), key=lambda e: e.name
        )
    paths: list[str] = []
    bad: list[BadFile] = []
    for entry in entries:
        if entry.stat().st_size == 0:
            bad.append(BadFile(entry.path, ZERO_BYTE))
        else:
            paths.append(entry.path)
    return paths, bad


def scan_class_folders(
    split_dir: Path,
    *,
    class_map: Mapping[str, str] | None,
    native: Mapping[str, str] | None = None,
) -> tuple[list[Record], list[BadFile]]:
    """Records of a ``<split_dir>/<class>/*.<image>`` tree, folders and files sorted by name."""
    dirs = subdirectories(split_dir)
    if not dirs:
        raise DatasetError(
            f"{str(split_dir)!r} has no class folders. Expected one folder per emotion holding its "
            f"images, e.g. {os.path.join(split_dir, 'happy', 'img001.jpg')!r}."
        )
    records: list[Record] = []
    bad: list[BadFile] = []
    for entry in dirs:
        label = class_index(entry.name, class_map=class_map, where=entry.path, native=native)
        paths, bad_here = list_images(entry.path)
        if not paths and not bad_here:
            raise DatasetError(
                f"Class folder {entry.path!r} holds no images (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Add its images or remove the folder."
            )
        records.extend(Record(path=p, label=label) for p in paths)
        bad.extend(bad_here)
    return records, bad
