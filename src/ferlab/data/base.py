"""What every dataset adapter returns, and the registry that finds adapters by name.

An adapter only *indexes* a dataset: it lists, per split, the records to decode and their
canonical labels, and states its split protocol. Decoding, validation of image content and the
decode-once cache live in ``ferlab.data.decode`` and ``ferlab.data.cache``.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


class DatasetError(ValueError):
    """Bad dataset input: the message names the file, what is wrong and how to fix it."""


@dataclass(frozen=True)
class Record:
    """One image to decode, with its canonical label.

    Exactly one of three sources is used: ``pixels`` (a CSV row's space-separated grey
    values, ``path`` then names the CSV file and ``row`` the line), ``draw`` (a synthetic
    image: (domain, seed)), or else the image file at ``path``, cropped to ``box`` when given.
    """

    path: str
    label: int  # index into ferlab.labels.CANONICAL
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom), pixels
    pixels: str | None = None
    row: int | None = None
    draw: tuple[str, int] | None = None
    soft: tuple[float, ...] | None = None  # vote shares over CANONICAL (FER+)
    source: str = ""  # source dataset tag (mega dataset)
    # Records with the same group go to the same seeded split (ExpW: the faces of one photo);
    # None = the record is its own group (its key).
    group: str | None = None

    @property
    def key(self) -> str:
        """A name unique within a dataset: file, CSV row, box or synthetic seed."""
        if self.draw is not None:
            return f"{self.path}#{self.draw[0]}:{self.draw[1]}"
        if self.row is not None:
            return f"{self.path}#row{self.row}"
        if self.box is not None:
            return f"{self.path}#box{','.join(map(str, self.box))}"
        return self.path


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


@dataclass
class DatasetIndex:
    """An adapter's result: records per split in the canonical label space."""

    name: str
    root: str
    labels: list[str]  # canonical names this dataset uses, in canonical order
    splits: dict[str, list[Record]]
    protocol: str  # how train/val/test were obtained, in one sentence
    bad_files: list[BadFile] = field(default_factory=list)
    excluded: dict[str, int] = field(
        default_factory=dict
    )  # reason -> count (e.g. FER+ no majority)
    color: bool = False  # the source images are in colour
    # What the adapter skipped on purpose: OS litter (.DS_Store, __MACOSX/, ...), notes,
    # images no list names; kind or reason -> count. Never an error, never a bad file.
    ignored: dict[str, int] = field(default_factory=dict)


@dataclass
class ArraySplit:
    """A decoded split in memory (or memory-mapped from the cache)."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64, canonical indices
    keys: list[str]
    soft: np.ndarray | None = None  # (N, len(CANONICAL)) float32, or None
    sources: list[str] | None = None  # per-image source tag (mega dataset)
    # Oversampling cells (mega with balance_sources: one per (source, class)); None = classes.
    groups: np.ndarray | None = None
    # data.face_crop: keys of the images where no face was found (kept uncropped), in split
    # order; None when faces are not cropped.
    no_face: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class LoadedDataset:
    """A dataset decoded at one size and channel count, ready for training and evaluation."""

    name: str  # the display name, e.g. "fer2013" or "synthetic-wild"
    labels: list[str]
    splits: dict[str, ArraySplit]
    protocol: str
    fingerprint: str
    bad_files: list[BadFile] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)  # DatasetIndex.ignored
    # How to load it again: adapter, path, options, split settings, use (``load_dataset``'s
    # arguments); recorded with every run so ``evaluate`` scores the same held-out images.
    spec: dict[str, Any] = field(default_factory=dict)
    root: str = ""  # the dataset root (keys are recorded relative to it)

    @property
    def trainable(self) -> bool:
        """False for an evaluation-only dataset (no train split, or declared ``use: test``)."""
        return "train" in self.splits and len(self.splits["train"]) > 0

    def split_keys(self) -> dict[str, list[str]]:
        """Every split's record keys, relative to the dataset root (see ``relative_key``)."""
        return {s: [relative_key(k, self.root) for k in a.keys] for s, a in self.splits.items()}


def relative_key(key: str, root: str) -> str:
    """A record key without its dataset root, so two copies of a dataset have the same keys."""
    root = root.rstrip("/\\")
    if root and key.startswith(root):
        rest = key[len(root) :]
        if rest[:1] in ("/", "\\"):
            return rest[1:]
    return key


Adapter = Callable[..., DatasetIndex]
Renderer = Callable[[str, int, int, int], Any]  # (domain, seed, size, channels) -> uint8 image
_ADAPTERS: dict[str, Adapter] = {}
BUILTIN_ADAPTERS = "ferlab.data.adapters"  # the package whose modules register the built-ins


@dataclass(frozen=True)
class DatasetTraits:
    """What the rest of ferlab needs to know about an adapter, carried by the registry (so no
    module names a dataset to special-case it).

    ``generated``: the images are drawn, not read; ``PATH`` in ``NAME:PATH`` names a domain
    (``synthetic:lab``), not a folder, so it is never checked on disk, and each domain is a
    dataset of its own, shown as ``NAME-PATH`` (``synthetic-lab``).
    """

    generated: bool = False
    # A generated adapter's image maker, ``render(domain, seed, size, channels)``: decoding
    # draws a record's image with it (``renderer_of``), and its source keys the decode cache.
    render: Renderer | None = None


_TRAITS: dict[str, DatasetTraits] = {}


def register_dataset(
    name: str, *, generated: bool = False, render: Renderer | None = None
) -> Callable[[Adapter], Adapter]:
    """Register ``fn(root: Path, **options) -> DatasetIndex`` under ``name``; names are unique.

    ``generated=True`` for an adapter that draws its images (see ``DatasetTraits``): it is then
    called with the ``PATH`` string itself, not a ``Path`` that must exist, and ``render``
    draws a record's image (its records carry ``draw=(domain, seed)`` and the path
    ``NAME:domain``).
    """

    def wrap(fn: Adapter) -> Adapter:
        if name in _ADAPTERS:
            raise ValueError(f"dataset adapter {name!r} is already registered")
        _ADAPTERS[name] = fn
        _TRAITS[name] = DatasetTraits(generated=generated, render=render)
        return fn

    return wrap


def dataset_traits(name: str) -> DatasetTraits:
    """The traits of adapter ``name`` (an unknown name has the defaults: on disk)."""
    _import_builtin_adapters()
    return _TRAITS.get(name, DatasetTraits())


def renderer_of(record: Record) -> Renderer:
    """The function that draws a generated record's image (its adapter is ``NAME`` of its
    ``NAME:domain`` path)."""
    name = record.path.partition(":")[0]
    render = dataset_traits(name).render
    if render is None:
        raise DatasetError(f"{record.path}: no generated dataset {name!r} draws this record")
    return render


def display_name(name: str, path: str) -> str:
    """How runs, reports and files name the dataset ``NAME:PATH`` when no label is given:
    ``NAME``, or ``NAME-PATH`` for a generated dataset (one dataset per domain)."""
    return f"{name}-{path}" if dataset_traits(name).generated else name


def list_datasets() -> list[str]:
    _import_builtin_adapters()
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> Adapter:
    _import_builtin_adapters()
    if name not in _ADAPTERS:
        close = difflib.get_close_matches(name, list(_ADAPTERS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DatasetError(
            f"Unknown dataset {name!r}.{hint} Known datasets: {', '.join(sorted(_ADAPTERS))}."
        )
    return _ADAPTERS[name]


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``NAME:PATH`` (``synthetic:wild``, ``fer2013:../data/fer2013``)."""
    name, sep, path = spec.partition(":")
    if not sep or not name:
        raise DatasetError(
            f"Dataset spec {spec!r} is not NAME:PATH. Examples: fer2013:/data/fer2013, "
            f"folder:/data/jaffe, synthetic:wild. Known names: {', '.join(list_datasets())}."
        )
    return name.strip().lower(), path


def index_dataset(name: str, path: str, **options: Any) -> DatasetIndex:
    """Index a dataset by adapter name; a missing root is reported before the adapter runs."""
    adapter = get_adapter(name)
    if not dataset_traits(name).generated:
        root = Path(path).expanduser()
        if not root.exists():
            raise DatasetError(
                f"Dataset root {str(root)!r} for {name!r} does not exist. "
                "Check the path in the spec or the experiment file."
            )
        return adapter(root, **options)
    return adapter(path, **options)


def _import_builtin_adapters() -> None:
    """Load the built-in adapters, whose modules register themselves. The registry loads its
    plugins by name, as an entry point would: they import it, it never imports them."""
    import_module(BUILTIN_ADAPTERS)


def split_unit(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): where a record falls in a seeded split.

    Only the key's last two path components (class folder and file name, with any ``#row`` or
    ``#box`` suffix) count, so the split does not change when the dataset folder moves.
    """
    path, sep, frag = key.partition("#")
    tail = "/".join(path.replace("\\", "/").rstrip("/").split("/")[-2:]) + sep + frag
    digest = hashlib.sha256(f"{seed}\0{tail}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def stratified_split(
    records: Sequence[Record], fractions: dict[str, float], seed: int
) -> dict[str, list[Record]]:
    """Split records by ``fractions`` (e.g. {"train": .8, "val": .1, "test": .1}).

    Each record goes to a split by a hash of (seed, its key) alone (``split_unit``; of its
    ``group`` when set, so that a group's records share a split), so adding or removing one
    file moves only that file, and the result does not depend on the order the files were
    listed in. Every class is split in the same proportions in expectation; a class
    of n images gets about ``n * fraction`` of them in each split. Within a split, records keep
    their key order.
    """
    names = list(fractions)
    total = sum(fractions.values())
    bounds: list[float] = []
    acc = 0.0
    for n in names:
        acc += fractions[n] / total
        bounds.append(acc)
    bounds[-1] = 1.0
    out: dict[str, list[Record]] = {n: [] for n in names}
    for r in sorted(records, key=lambda r: r.key):
        u = split_unit(seed, r.group or r.key)
        out[names[next(i for i, b in enumerate(bounds) if u < b)]].append(r)
    return out
