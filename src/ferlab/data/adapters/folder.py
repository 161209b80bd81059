"""The ``folder`` adapter: any ``<root>/<class>/`` or ``<root>/<split>/<class>/`` image tree.

This is how JAFFE, CK+, KDEF or a user's own faces come in. The scanning helpers it shares with
the other adapters (option checks, class-folder names, image listing, seeded splits) live in
``ferlab.data.adapters.utils``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from ferlab.data.adapters.utils import (
    SPLIT_FOLDERS,
    SPLIT_OPTIONS,
    accept_options,
    check_options,
    count_unused,
    require_dir,
    scan_class_folders,
    seeded_split,
    split_options,
    split_protocol,
    subdirectories,
)
from ferlab.data.base import BadFile, DatasetError, DatasetIndex, Record, register_dataset
from ferlab.data.decode import BadImageError, open_image
from ferlab.labels import CANONICAL

OPTIONS = accept_options("folder", "class_map", *SPLIT_OPTIONS)


def labels_of(splits: Mapping[str, list[Record]]) -> list[str]:
    """Canonical names of the labels present, in canonical order."""
    present = {r.label for records in splits.values() for r in records}
    return [name for i, name in enumerate(CANONICAL) if i in present]


def looks_colour(paths: Iterable[str], sample: int = 8) -> tuple[bool, list[BadFile]]:
    """Whether any of the first ``sample`` readable images is stored in colour (header only).

    Also returns the files met on the way that cannot be opened (``open_image``'s reason:
    a decompression bomb, a non-image...), so that they are bad files, not a crash.
    """
    checked = 0
    bad: list[BadFile] = []
    for path in paths:
        if checked >= sample:
            break
        try:
            with open_image(path) as img:
                colour = _is_colour(img)
        except BadImageError as err:
            bad.append(BadFile(path, err.reason))
            continue
        checked += 1
        if colour:
            return True, bad
    return False, bad


def _is_colour(img: Image.Image) -> bool:
    if img.mode == "P":  # palette images (GIF, some PNG) are grey when every entry is
        palette = img.getpalette() or []
        return any(
            palette[i] != palette[i + 1] or palette[i] != palette[i + 2]
            for i in range(0, len(palette) - 2, 3)
        )
    return img.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def without(splits: dict[str, list[Record]], bad: list[BadFile]) -> dict[str, list[Record]]:
    """``splits`` without the records of the files in ``bad``."""
    if not bad:
        return splits
    gone = {b.path for b in bad}
    return {s: [r for r in records if r.path not in gone] for s, records in splits.items()}


@register_dataset("folder")
def folder(root: Path, **options: Any) -> DatasetIndex:
    """Index ``<root>/<class>/`` or ``<root>/<split>/<class>/`` (split: train, val|valid|validation, test).

    Class folder names go through the synonyms or the ``class_map`` option. Without split
    folders, or with a train folder but no test folder, the missing splits are a seeded
    stratified split (split_seed, val_fraction, test_fraction: ``load_dataset`` passes the
    ``data:`` section's; default 0, 0.1, 0.1). A tree with train and test but no val leaves
    val to the loader. Litter and stray files are skipped and counted in ``ignored``.
    """
    check_options("folder", options)
    root = require_dir(
        Path(root),
        "Dataset root",
        "Point the folder dataset at a folder of <class>/ image folders.",
    )
    class_map = options.get("class_map")
    seed, val_fraction, test_fraction = split_options(options)
    ignored: Counter[str] = Counter()
    dirs = subdirectories(root)
    split_dirs = [d for d in dirs if d.name.lower() in SPLIT_FOLDERS]
    bad: list[BadFile] = []
    splits: dict[str, list[Record]] = {}
    if split_dirs:
        others = [d.name for d in dirs if d.name.lower() not in SPLIT_FOLDERS]
        if others:
            raise DatasetError(
                f"{str(root)!r} mixes split folders ({', '.join(d.name for d in split_dirs)}) with "
                f"other folders ({', '.join(others)}). Use either <root>/<class>/ or "
                "<root>/<split>/<class>/ with split folders train, val (valid, validation), test."
            )
        count_unused(root, {d.name for d in split_dirs}, ignored)
        for entry in split_dirs:
            split = SPLIT_FOLDERS[entry.name.lower()]
            if split in splits:
                raise DatasetError(
                    f"{str(root)!r} has two folders for the {split!r} split; keep one of "
                    f"{', '.join(d.name for d in split_dirs if SPLIT_FOLDERS[d.name.lower()] == split)}."
                )
            records, bad_here = scan_class_folders(
                Path(entry.path), class_map=class_map, ignored=ignored
            )
            splits[split] = records
            bad.extend(bad_here)
        protocol = _given_splits_protocol(splits, seed, val_fraction, test_fraction)
        if "train" in splits and "test" not in splits:
            val_share = val_fraction if "val" not in splits else 0.0
            carved = seeded_split(splits["train"], seed, val_share, test_fraction)
            splits["train"], splits["test"] = carved["train"], carved["test"]
            if "val" not in splits:
                splits["val"] = carved["val"]
    else:
        records, bad = scan_class_folders(root, class_map=class_map, ignored=ignored)
        splits = seeded_split(records, seed, val_fraction, test_fraction)
        protocol = f"No split folders: {split_protocol(seed, val_fraction, test_fraction)}."
    splits = {s: splits[s] for s in ("train", "val", "test") if s in splits}
    colour, unreadable = looks_colour(r.path for records in splits.values() for r in records)
    splits = without(splits, unreadable)
    return DatasetIndex(
        name="folder",
        root=str(root),
        labels=labels_of(splits),
        splits=splits,
        protocol=protocol,
        bad_files=bad + unreadable,
        color=colour,
        ignored=dict(sorted(ignored.items())),
    )


def _given_splits_protocol(
    splits: Mapping[str, list[Record]], seed: int, val_fraction: float, test_fraction: float
) -> str:
    given = ", ".join(s for s in ("train", "val", "test") if s in splits)
    if "train" in splits and "test" not in splits:
        carved = "test" if "val" in splits else "val and test"
        return (
            f"Split folders {given} as given; {carved} carved from train by a "
            f"{split_protocol(seed, 0.0 if 'val' in splits else val_fraction, test_fraction)}."
        )
    if "train" in splits and "val" not in splits:
        return f"Split folders {given} as given; val is carved from train by the loader."
    return f"Split folders {given} as given."
