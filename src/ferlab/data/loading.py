"""Load a dataset by adapter name: index, fill missing splits, report bad files, decode once.

``load_dataset`` is the one entry point the pipeline, the CLI and users call. It indexes the
files (``ferlab.data.base.index_dataset``), carves the splits a dataset does not define from
its train split (seeded and stratified, and the protocol string says so), applies the
``on_bad_file`` policy to the problems the adapter found, then decodes through the cache, with
the faces cropped to one framing when ``face_crop`` names a detector (``data.face_crop``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferlab.config import DataConfig, DatasetConfig
from ferlab.data.adapters.utils import SPLIT_OPTIONS, accepted_options, refuse_split_options
from ferlab.data.base import (
    ArraySplit,
    BadFile,
    DatasetError,
    LoadedDataset,
    Record,
    dataset_traits,
    display_name,
    get_adapter,
    index_dataset,
    parse_spec,
    stratified_split,
)
from ferlab.data.cache import ON_BAD_FILE, bad_files_message, build_or_load
from ferlab.data.decode import decode_problems
from ferlab.data.facecrop import check_face_tools, face_crop_setting
from ferlab.defaults import CACHE_DIR, FACE_MARGIN, SPLIT_SEED, TEST_FRACTION, VAL_FRACTION

Log = Callable[[str], None]
USES = ("train", "test")


def load_dataset(
    data: str,
    *,
    image_size: int = 48,
    channels: int = 1,
    cache_dir: str | Path = CACHE_DIR,
    on_bad_file: str = "skip",
    split_seed: int = SPLIT_SEED,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    options: dict[str, Any] | None = None,
    use: str = "train",
    log: Log | None = None,
    display: str | None = None,
    workers: int | None = None,
    face_crop: str = "none",
    face_margin: float = FACE_MARGIN,
) -> LoadedDataset:
    """Index, split, validate and decode the dataset ``data``, named ``NAME:PATH`` as everywhere
    in ferlab (``fer2013:/data/fer2013``, ``synthetic:wild``), at ``image_size`` x
    ``image_size`` x ``channels``.

    ``PATH`` is the dataset root (for ``synthetic``, the domain). The result's splits are
    memory-mapped arrays from the decode-once cache in ``cache_dir``. Bad files are dropped
    and listed (``on_bad_file="skip"``) or raise ``DatasetError`` naming them (``"error"``)
    before anything is added to the cache. ``display`` overrides the result's name (default:
    ``name``, or ``synthetic-<domain>``). ``use="test"`` makes the dataset evaluation-only:
    every image it has, whatever split its layout puts it in, is in its ``test`` split.
    ``options`` are the adapter's own: split settings there are refused, since ``split_seed``,
    ``val_fraction`` and ``test_fraction`` (the ``data:`` section's) are what both the loader
    and an adapter that splits by itself use (``adapter_options``).

    ``face_crop`` (``none``, ``haar`` or ``mtcnn``): detect the faces in every image at decode
    time and keep the largest, grown by ``face_margin`` of its size on each side and made
    square (``ferlab.face.crop_face``). Images where no face is found are kept uncropped; each
    split's ``no_face`` lists them and ``spec["face_crop_counts"]`` counts them. The settings
    are part of the fingerprint (the cache entry and the run key).
    """
    name, path = parse_spec(data)
    if on_bad_file not in ON_BAD_FILE:
        raise DatasetError(
            f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r} (data.on_bad_file)."
        )
    if use not in USES:
        raise DatasetError(f"use must be one of {list(USES)}, got {use!r} (datasets[].use).")
    face = face_crop_setting(face_crop, face_margin)
    check_face_tools(face)  # a missing OpenCV / facenet-pytorch fails before any decoding
    say = log or (lambda _msg: None)
    label = display or display_name(name, path)
    opts = adapter_options(
        name,
        options or {},
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )

    t0 = time.perf_counter()
    index = index_dataset(name, path, **opts)
    if use == "test":
        everything = [r for recs in index.splits.values() for r in recs]
        if not everything:
            raise DatasetError(f"{label}: no images found under {path!r} (use: test).")
        splits = {"test": everything}
        note = f"Declared evaluation-only (use: test): all {len(everything):,} images are its test split."
    else:
        splits, note = fill_splits(
            index.splits,
            seed=split_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            where=label,
        )
    protocol = f"{index.protocol} {note}".strip() if note else index.protocol
    say(
        f"{label}: indexed {', '.join(f'{s} {len(r):,}' for s, r in splits.items())} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if index.bad_files and on_bad_file == "error":
        # Name every bad file at once, the ones only decoding finds too (nothing is cached).

        records = [r for recs in splits.values() for r in recs]
        found = [BadFile(e.path, e.reason) for e in decode_problems(records, image_size, channels)]
        raise DatasetError(bad_files_message(label, merge_bad_files(index.bad_files, found)))

    spec = {
        "adapter": name,
        "path": path,
        "options": dict(options or {}),
        "split_seed": split_seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "use": use,
        "face_crop": face.detector if face is not None else "none",
        "face_margin": float(face_margin),
        # whether the source images are in colour: a 3-channel model trained on grey images
        # gets grey input at predict time too (``ferlab.predict``)
        "color": bool(index.color),
    }
    extra = {
        "adapter": name,
        "options": opts,
        "split_seed": split_seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "use": use,
    }
    arrays, decode_bad, fp = build_or_load(
        label,
        splits,
        size=image_size,
        channels=channels,
        cache_dir=Path(cache_dir).expanduser(),
        on_bad_file=on_bad_file,
        extra=extra,
        log=say,
        workers=workers,
        face=face,
    )
    if face is not None:
        spec["face_crop_counts"] = face_crop_counts(arrays)
    bad = merge_bad_files(index.bad_files, decode_bad)
    if bad:
        say(f"{label}: {len(bad)} bad file(s) left out (see the data report)")
    return LoadedDataset(
        name=label,
        labels=list(index.labels),
        splits=arrays,
        protocol=protocol,
        fingerprint=fp,
        bad_files=bad,
        excluded=dict(index.excluded),
        ignored=dict(index.ignored),
        spec=spec,
        root=index.root,
    )


def face_crop_counts(splits: dict[str, ArraySplit]) -> dict[str, dict[str, int]]:
    """Per split: images, and those where no face was found (kept uncropped)."""
    return {
        name: {"images": len(split), "no_face": len(split.no_face or [])}
        for name, split in splits.items()
    }


def adapter_options(
    name: str,
    options: dict[str, Any],
    *,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, Any]:
    """The options the adapter ``name`` is called with: the dataset's own ``options``, plus the
    split settings for an adapter that splits by itself (ExpW, a folder without split folders),
    so that its split and the loader's carving use the same, recorded settings.

    Split settings among the dataset's own options are refused (``DatasetError``): they come
    from the ``data:`` section only. An adapter that declared no options (see
    ``ferlab.data.adapters.utils.accept_options``) gets the split settings too.
    """
    get_adapter(name)  # registers the built-in adapters; an unknown name fails here
    refuse_split_options(name, options)
    opts = dict(options)
    accepted = accepted_options(name)
    if accepted is None or set(SPLIT_OPTIONS) <= accepted:
        opts.update(split_seed=split_seed, val_fraction=val_fraction, test_fraction=test_fraction)
    return opts


def load_from_config(
    ds: DatasetConfig,
    data: DataConfig,
    *,
    image_size: int = 48,
    channels: int = 1,
    log: Log | None = None,
) -> LoadedDataset:
    """``load_dataset`` from the experiment file's sections, decoded at a model's input
    geometry (``image_size`` x ``channels``, from its ``models:`` entry)."""
    path = ds.path if dataset_traits(ds.name).generated else str(Path(ds.path).expanduser())
    return load_dataset(
        f"{ds.name}:{path}",
        image_size=image_size,
        channels=channels,
        cache_dir=data.cache_dir,
        on_bad_file=data.on_bad_file,
        split_seed=data.split_seed,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        options=ds.options,
        use=ds.use,
        log=log,
        display=ds.display,
        face_crop=data.face_crop,
        face_margin=data.face_margin,
    )


def fill_splits(
    splits: dict[str, list[Record]],
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    where: str = "dataset",
) -> tuple[dict[str, list[Record]], str]:
    """Give ``splits`` a train, val and test split, carving missing ones from train.

    Only train: stratified train/val/test by the fractions. Train and test: val is carved from
    train. Train and val: test is carved from train. Returns the splits (in train, val, test
    order) and a sentence for the protocol ("" when nothing was carved).
    """
    have = {k: v for k, v in splits.items() if v}
    if "train" not in have:
        if "test" in have:  # an evaluation-only copy (e.g. FER+ Valid/Test without Train)
            return {s: have[s] for s in ("val", "test") if s in have}, (
                "No train split: usable for evaluation only."
            )
        given = ", ".join(f"{k} ({len(v)})" for k, v in splits.items()) or "none"
        raise DatasetError(
            f"{where}: no training or test images (splits found: {given}). Check that the "
            "dataset root holds its splits in the layout its adapter expects."
        )
    if val_fraction + test_fraction >= 1:
        raise DatasetError(
            f"{where}: val_fraction + test_fraction = {val_fraction + test_fraction} leaves "
            "nothing to train on; lower data.val_fraction or data.test_fraction."
        )
    missing = [s for s in ("val", "test") if s not in have]
    if not missing:
        return {s: have[s] for s in ("train", "val", "test")}, ""
    fractions = {"train": 1.0 - sum(_fraction(s, val_fraction, test_fraction) for s in missing)}
    fractions.update({s: _fraction(s, val_fraction, test_fraction) for s in missing})
    carved = stratified_split(have["train"], fractions, seed)
    out = {
        "train": carved["train"],
        "val": carved["val"] if "val" in missing else have["val"],
        "test": carved["test"] if "test" in missing else have["test"],
    }
    parts = " and ".join(f"{s} ({fractions[s]:.0%})" for s in missing)
    note = (
        f"{parts.capitalize()} carved from the given train split by a stratified split "
        f"with seed {seed}."
    )
    return out, note


def _fraction(split: str, val_fraction: float, test_fraction: float) -> float:
    return val_fraction if split == "val" else test_fraction


def merge_bad_files(*groups: list[BadFile]) -> list[BadFile]:
    """Bad files from the index and from decoding, each (path, reason) once, in order."""
    seen: set[tuple[str, str]] = set()
    out: list[BadFile] = []
    for group in groups:
        for b in group:
            if (b.path, b.reason) not in seen:
                seen.add((b.path, b.reason))
                out.append(b)
    return out
