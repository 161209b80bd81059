"""Checks and scanning helpers shared by the dataset adapters.

Option checks, folder checks, class-folder names, image listing, list and CSV reading and
seeded splits live here (as torchvision keeps its shared dataset checks in
``datasets/utils.py``), so every adapter reports the same problem with the same message.

What is not part of a dataset is decided here too, once for all adapters: OS and tool litter
(``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, ``@eaDir/``,
``.ipynb_checkpoints/``, any hidden file or folder), notes (``.txt``, ``.md``, ``.json``, a
stray ``.csv``) and anything else a layout does not use is skipped, never an error and never a
bad file, and counted by kind in ``DatasetIndex.ignored`` so that nothing is lost silently.
Every folder an adapter lists is checked this way; a litter folder is counted once, not
entered.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import zlib
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ferlab.data.base import BadFile, DatasetError, Record, stratified_split
from ferlab.data.decode import unreadable_reason
from ferlab.defaults import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION
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
ZERO_BYTE = "zero-byte file (empty): re-copy it from the original download or delete it"

# --------------------------------------------------------------------------- options
# The seeded-split settings. ``load_dataset`` passes the ``data:`` section's values to the
# adapters that split by themselves; a dataset's own ``options:`` may not set them.
SPLIT_OPTIONS: tuple[str, ...] = ("split_seed", "val_fraction", "test_fraction")
_ACCEPTED: dict[str, frozenset[str]] = {}


def accept_options(dataset: str, *names: str) -> frozenset[str]:
    """Declare the options the adapter ``dataset`` uses; ``check_options`` refuses the rest.

    The loader reads the declaration (``accepted_options``) to pass the split settings only to
    adapters that split by themselves.
    """
    accepted = frozenset(names)
    _ACCEPTED[dataset] = accepted
    return accepted


def accepted_options(dataset: str) -> frozenset[str] | None:
    """The options ``dataset``'s adapter declared, or None for an adapter that declared none."""
    return _ACCEPTED.get(dataset)


def check_options(dataset: str, options: Mapping[str, Any], own: Iterable[str] = ()) -> None:
    """Refuse option names the adapter does not use, so a typo is not silently ignored.

    The accepted names are those ``accept_options`` declared for ``dataset``, plus ``own``.
    """
    allowed = _ACCEPTED.get(dataset, frozenset()) | set(own)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for dataset {dataset!r}. "
            f"Accepted options: {', '.join(sorted(allowed)) or 'none'}. Fix the dataset's "
            "`options:` in the experiment file."
        )


def refuse_unused(
    dataset: str, options: Mapping[str, Any], names: Iterable[str], layout: str
) -> None:
    """Refuse options that exist for ``dataset`` but do nothing in the layout found."""
    unused = sorted(n for n in names if n in options)
    if unused:
        raise DatasetError(
            f"Option(s) {', '.join(map(repr, unused))} of dataset {dataset!r} do nothing for "
            f"{layout}. Remove them from the dataset's `options:` (or point the path at the "
            "layout they are for)."
        )


def refuse_split_options(dataset: str, options: Mapping[str, Any]) -> None:
    """Per-dataset split settings are refused: the ``data:`` section's apply to every dataset."""
    given = [n for n in SPLIT_OPTIONS if n in options]
    if given:
        raise DatasetError(
            f"Option(s) {', '.join(map(repr, given))} of dataset {dataset!r} are not accepted "
            "in the dataset's `options:`: the seeded split settings come from the experiment's "
            "`data:` section (data.split_seed, data.val_fraction, data.test_fraction), which "
            "apply to every dataset and are recorded with every run. Set them there."
        )


def require_dir(path: Path, what: str, fix: str = "") -> Path:
    """``path`` if it is a folder, else a DatasetError naming it and what it should hold."""
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {str(path)!r} {state}. {fix}".rstrip())
    return path


def split_options(options: Mapping[str, Any]) -> tuple[int, float, float]:
    """The seeded-split options (split_seed, val_fraction, test_fraction), checked."""
    seed = int(options.get("split_seed", SPLIT_SEED))
    val = float(options.get("val_fraction", VAL_FRACTION))
    test = float(options.get("test_fraction", TEST_FRACTION))
    if val < 0 or test < 0 or val + test >= 1:
        raise DatasetError(
            f"val_fraction={val} and test_fraction={test} must be >= 0 and sum to less than 1 "
            "(the rest is train). Fix data.val_fraction / data.test_fraction."
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


# --------------------------------------------------------------------------- litter
# Folders that file managers, NAS boxes, notebooks and archivers leave beside the data.
LITTER_FOLDERS: dict[str, str] = {
    "__macosx": "__MACOSX/",
    "@eadir": "@eaDir/",
    ".ipynb_checkpoints": ".ipynb_checkpoints/",
    "$recycle.bin": "$RECYCLE.BIN/",
    "system volume information": "System Volume Information/",
}
LITTER_FILES: dict[str, str] = {
    ".ds_store": ".DS_Store",
    "thumbs.db": "Thumbs.db",
    "ehthumbs.db": "Thumbs.db",
    "desktop.ini": "desktop.ini",
    "icon\r": "Icon\\r (macOS folder icon)",
}
APPLE_DOUBLE = "._* (macOS metadata)"
HIDDEN_FILE = "hidden file"
HIDDEN_FOLDER = "hidden folder"
# Text a person leaves beside images: notes, exports, spreadsheets.
NOTE_EXTENSIONS: frozenset[str] = frozenset(
    {".txt", ".md", ".json", ".csv", ".tsv", ".lst", ".yaml", ".yml", ".xml", ".html", ".htm"}
    | {".pdf", ".rtf", ".log", ".doc", ".docx", ".xls", ".xlsx", ".ods", ".odt"}
)
SUBFOLDER = "sub-folder of an image folder (not read)"
OUTSIDE_FOLDER = "folder the layout does not use"
OUTSIDE_IMAGE = "image outside the layout's image folders"
BROKEN_LINK = "broken symbolic link"


def litter_kind(name: str, *, is_dir: bool) -> str | None:
    """The kind of OS or tool litter the entry ``name`` is, or None for a real entry."""
    low = name.lower()
    if is_dir and low in LITTER_FOLDERS:
        return LITTER_FOLDERS[low]
    if not is_dir and low in LITTER_FILES:
        return LITTER_FILES[low]
    if name.startswith("._"):
        return APPLE_DOUBLE
    if name.startswith("."):
        return HIDDEN_FOLDER if is_dir else HIDDEN_FILE
    return None


def unused_kind(name: str, *, is_dir: bool, image_place: bool = False) -> str:
    """What an entry a layout does not use is: litter, a note, a stray image or other file.

    ``image_place``: the entry sits in an image folder (a sub-folder there is not read).
    """
    kind = litter_kind(name, is_dir=is_dir)
    if kind is not None:
        return kind
    if is_dir:
        return SUBFOLDER if image_place else OUTSIDE_FOLDER
    ext = _extension(name)
    if ext in NOTE_EXTENSIONS:
        return f"note ({ext})"
    if ext in IMAGE_EXTENSIONS:
        return OUTSIDE_IMAGE
    return f"other file ({ext or 'no extension'})"


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def is_image_name(name: str) -> bool:
    return litter_kind(name, is_dir=False) is None and _extension(name) in IMAGE_EXTENSIONS


def path_problem(path: str) -> str:
    """Why ``path`` (listed, but neither a folder nor a regular file) cannot be read."""
    return unreadable_reason(path) or "cannot be read"


@dataclass
class Listing:
    """A folder's entries sorted by name, OS litter left out (and counted)."""

    dirs: list[os.DirEntry[str]] = field(default_factory=list)
    files: list[os.DirEntry[str]] = field(default_factory=list)  # regular files, via links too
    broken: list[tuple[os.DirEntry[str], str]] = field(default_factory=list)  # (entry, why)


def list_dir(directory: Path | str, ignored: Counter[str]) -> Listing:
    """The entries of ``directory``; litter is counted in ``ignored`` by kind and left out."""
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise DatasetError(
            f"Cannot list the folder {str(directory)!r} ({err.strerror or err}). Check its "
            "permissions (it must be readable and searchable)."
        ) from err
    out = Listing()
    for entry in entries:
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:
            is_dir = is_file = False
        kind = litter_kind(entry.name, is_dir=is_dir)
        if kind is not None:
            ignored[kind] += 1
        elif is_dir:
            out.dirs.append(entry)
        elif is_file:
            out.files.append(entry)
        else:
            out.broken.append((entry, path_problem(entry.path)))
    return out


def count_unused(
    directory: Path | str, used: Container[str], ignored: Counter[str], *, image_place: bool = False
) -> Listing:
    """List ``directory`` and count every entry whose name is not in ``used``; returns the listing."""
    listing = list_dir(directory, ignored)
    for entry in listing.dirs:
        if entry.name not in used:
            ignored[unused_kind(entry.name, is_dir=True, image_place=image_place)] += 1
    for entry in listing.files:
        if entry.name not in used:
            ignored[unused_kind(entry.name, is_dir=False, image_place=image_place)] += 1
    for entry, _ in listing.broken:
        if entry.name not in used:
            ignored[BROKEN_LINK] += 1
    return listing


def subdirectories(
    directory: Path | str, ignored: Counter[str] | None = None
) -> list[os.DirEntry[str]]:
    """Sub-folders of ``directory`` that are not litter, sorted by name."""
    return list_dir(directory, Counter() if ignored is None else ignored).dirs


def _file_size(entry: os.DirEntry[str]) -> int | str:
    try:
        return entry.stat().st_size
    except OSError:
        return path_problem(entry.path)


def list_images(
    directory: Path | str, ignored: Counter[str] | None = None
) -> tuple[list[str], list[BadFile]]:
    """Image files directly in ``directory`` sorted by name, and the bad ones.

    Zero-byte files, dangling or looping symbolic links and special files with an image name
    are bad files; litter, notes, other files and sub-folders are counted in ``ignored``.
    """
    ignored = Counter() if ignored is None else ignored
    listing = list_dir(directory, ignored)
    paths: list[str] = []
    bad: list[BadFile] = []
    if listing.dirs:
        ignored[SUBFOLDER] += len(listing.dirs)
    for entry in listing.files:
        if not is_image_name(entry.name):
            ignored[unused_kind(entry.name, is_dir=False, image_place=True)] += 1
            continue
        size = _file_size(entry)
        if isinstance(size, str):
            bad.append(BadFile(entry.path, size))
        elif size == 0:
            bad.append(BadFile(entry.path, ZERO_BYTE))
        else:
            paths.append(entry.path)
    for entry, problem in listing.broken:
        if is_image_name(entry.name):
            bad.append(BadFile(entry.path, problem))
        else:
            ignored[BROKEN_LINK] += 1
    return paths, bad


def image_table(
    directory: Path | str, ignored: Counter[str], *, own: Container[str] = ()
) -> dict[str, int | str]:
    """Image name -> size in bytes, or why it cannot be read, for a folder a list file names.

    Other entries (litter, notes, sub-folders) are counted in ``ignored``, except the names in
    ``own`` (the dataset's own list file kept beside its images).
    """
    listing = list_dir(directory, ignored)
    table: dict[str, int | str] = {}
    if listing.dirs:
        ignored[SUBFOLDER] += len(listing.dirs)
    for entry in listing.files:
        if is_image_name(entry.name):
            table[entry.name] = _file_size(entry)
        elif entry.name not in own:
            ignored[unused_kind(entry.name, is_dir=False, image_place=True)] += 1
    for entry, problem in listing.broken:
        if is_image_name(entry.name):
            table[entry.name] = problem
        else:
            ignored[BROKEN_LINK] += 1
    return table


def file_problem(path: str, size: int | str | None) -> str | None:
    """The problem of an image a list file names, from ``image_table``; None when usable."""
    if size is None:
        return f"image {path!r} is missing"
    if isinstance(size, str):
        return f"{path!r}: {size}"
    if size == 0:
        return f"{path!r}: {ZERO_BYTE}"
    return None


def count_unlisted(
    ignored: Counter[str], table: Mapping[str, object], named: Container[str], list_name: str
) -> None:
    """Count the images of ``table`` that no row of the list file ``list_name`` names."""
    unlisted = sum(1 for name in table if name not in named)
    if unlisted:
        ignored[f"image not in {list_name}"] += unlisted


def scan_class_folders(
    split_dir: Path,
    *,
    class_map: Mapping[str, str] | None,
    native: Mapping[str, str] | None = None,
    ignored: Counter[str] | None = None,
) -> tuple[list[Record], list[BadFile]]:
    """Records of a ``<split_dir>/<class>/*.<image>`` tree, folders and files sorted by name.

    Litter and stray files at either level are counted in ``ignored``; a class folder holding
    no image (only litter, say) is an error.
    """
    ignored = Counter() if ignored is None else ignored
    listing = list_dir(split_dir, ignored)
    for entry in listing.files:  # files beside the class folders are not read
        ignored[unused_kind(entry.name, is_dir=False)] += 1
    if listing.broken:
        ignored[BROKEN_LINK] += len(listing.broken)
    if not listing.dirs:
        raise DatasetError(
            f"{str(split_dir)!r} has no class folders. Expected one folder per emotion holding its "
            f"images, e.g. {os.path.join(split_dir, 'happy', 'img001.jpg')!r}."
        )
    records: list[Record] = []
    bad: list[BadFile] = []
    for entry in listing.dirs:
        label = class_index(entry.name, class_map=class_map, where=entry.path, native=native)
        paths, bad_here = list_images(entry.path, ignored)
        if not paths and not bad_here:
            raise DatasetError(
                f"Class folder {entry.path!r} holds no images (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Add its images or remove the folder."
            )
        records.extend(Record(path=p, label=label) for p in paths)
        bad.extend(bad_here)
    return records, bad


# --------------------------------------------------------------------------- text files
GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def open_text(path: Path | str) -> Iterator[TextIO]:
    """A CSV or list file as text, read as an editor saved it.

    gzip (``.csv.gz``, recognised by its magic bytes whatever the name), a UTF-8 byte-order
    mark (Excel's "CSV UTF-8") or UTF-16 with its BOM, and ``\\n``, ``\\r\\n`` or ``\\r``
    line ends. Lines come back untranslated (``newline=""``), as the ``csv`` module wants;
    strip them. Text that is not UTF-8, or a damaged gzip stream, is a ``DatasetError`` naming
    the file.
    """
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as err:
        raise DatasetError(f"Cannot read {str(path)!r} ({err.strerror or err}).") from err
    try:
        binary: Any = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP_MAGIC else raw
        head = binary.peek(2)[:2]
        encoding = "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
        with io.TextIOWrapper(binary, encoding=encoding, newline="") as text:
            yield text
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{str(path)!r} is not UTF-8 text (byte {err.object[err.start : err.start + 1]!r} "
            f"at offset {err.start} of a block cannot be decoded). Save it as UTF-8 (with or "
            "without a byte-order mark) and retry."
        ) from err
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DatasetError(
            f"{str(path)!r} is a damaged gzip file ({err}). Download it again, or unpack it "
            "and point ferlab at the plain file."
        ) from err
    finally:
        raw.close()


def csv_rows(text: TextIO) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields with surrounding spaces stripped) of each CSV row that is not blank.

    Quoted fields follow the CSV rules (a space before the opening quote is allowed); rows of
    empty or blank fields (trailing blank lines, a line of commas) are skipped.
    """
    reader = csv.reader(text, skipinitialspace=True)
    for row in reader:
        fields = [v.strip() for v in row]
        if any(fields):
            yield reader.line_num, fields


_LIST_FIELD = re.compile(r'"([^"]*)"|(\S+)')


def list_fields(line: str) -> list[str]:
    """Whitespace-separated fields of a list-file line; a field in double quotes may hold spaces."""
    return [quoted or bare for quoted, bare in _LIST_FIELD.findall(line)]


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or its gzipped ``name.gz``, when one of them is a file."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None
