"""The decode-once cache: each split decoded once per machine into a memory-mappable array.

One folder per (dataset, fingerprint)::

    <cache_dir>/<name>-<fp16>/
        meta.json                      keys per split, bad files, counts, fingerprint, created
        <split>.images.npy             (N, H, W, C) uint8
        <split>.labels.npy             (N,) int64, canonical indices
        <split>.soft.npy               (N, len(CANONICAL)) float32, only when records carry votes

The fingerprint hashes the record list (keys, labels, soft labels, each file's size and mtime)
and the preprocessing (size, channels, decoder version, face cropping, ``extra``), so a changed
file or setting gives a new folder instead of stale arrays. With face cropping
(``data.face_crop``), ``meta.json`` also lists per split the images where no face was found. A folder is built under a temporary name in
``cache_dir`` and renamed into place when complete: a reader never sees half an entry, a
killed build leaves only a temporary folder that later runs remove, and of two concurrent
builders the one that renames second simply uses the first one's result.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferlab.data import decode
from ferlab.data.base import ArraySplit, BadFile, DatasetError, Record, renderer_of
from ferlab.labels import CANONICAL
from ferlab.provenance import code_digest
from ferlab.record import pid_alive

if TYPE_CHECKING:
    from ferlab.data.facecrop import FaceCrop

Log = Callable[[str], None]

META = "meta.json"
_TMP_PREFIX = ".tmp-"
_OWNER = "owner.json"
# A temporary folder whose owner cannot be checked (another host) is stale after this long.
STALE_TMP_SECONDS = 24 * 3600
MAX_LISTED_BAD = 20
ON_BAD_FILE = ("error", "skip")


# --- fingerprint ----------------------------------------------------------------------------


def fingerprint(
    records: Sequence[Record], *, size: int, channels: int, extra: dict[str, Any] | None = None
) -> str:
    """A sha256 (hex) of what the cached arrays depend on.

    Covers every record's key, label and soft label, the size and mtime of each source file
    (a CSV file or a photo with many face boxes is stat'ed once), ``size``, ``channels``,
    ``extra`` and the digest of the decoding code (``provenance.code_digest("decode")``: an edit
    of decoding or face cropping decodes again). Synthetic records add a hash of the renderer's
    source, so changing the drawing code invalidates them too.
    """
    h = hashlib.sha256()
    header = {
        "decoder": code_digest("decode"),
        "size": size,
        "channels": channels,
        "extra": extra or {},
    }
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    files = {r.path for r in records if r.draw is None}
    stats = {path: _stat(path) for path in files}
    lines = [
        f"{r.key}\t{r.label}\t{_soft(r.soft)}\t{stats.get(r.path, '')}\t{r.source}\n"
        for r in records
    ]
    h.update("".join(lines).encode())
    drawn = {r.path.partition(":")[0]: r for r in records if r.draw is not None}  # per adapter
    renderers = {renderer_of(r) for r in drawn.values()}
    for render in sorted(renderers, key=lambda f: f"{f.__module__}.{f.__qualname__}"):
        h.update(_source_hash(render).encode())
    return h.hexdigest()


def _soft(soft: tuple[float, ...] | None) -> str:
    return "" if soft is None else ",".join(f"{v:.6g}" for v in soft)


def _stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _source_hash(fn: Callable[..., Any]) -> str:
    """The sha256 of the file that defines ``fn`` (a generated dataset's renderer): an edit to
    it draws the images again."""
    src = inspect.getsourcefile(fn)
    if not src:
        return f"{fn.__module__}.{fn.__qualname__}"
    return hashlib.sha256(Path(src).read_bytes()).hexdigest()


def split_fingerprint(
    splits: dict[str, list[Record]],
    *,
    size: int,
    channels: int,
    extra: dict[str, Any] | None,
    face: FaceCrop | None = None,
) -> str:
    """The fingerprint of all splits: records in split order, split names and sizes in ``extra``,
    and the face-crop settings when faces are cropped (none: the fingerprint of before)."""
    full = dict(extra or {})
    full["_splits"] = {name: len(recs) for name, recs in splits.items()}
    if face is not None:
        full["_face_crop"] = face.key()
    records = [r for recs in splits.values() for r in recs]
    return fingerprint(records, size=size, channels=channels, extra=full)


# --- build or load --------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A file-system-safe folder name for a dataset display name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "dataset"


def entry_dir(cache_dir: Path, name: str, fp: str) -> Path:
    return Path(cache_dir).expanduser() / f"{safe_name(name)}-{fp[:16]}"


def build_or_load(
    name: str,
    splits: dict[str, list[Record]],
    *,
    size: int,
    channels: int,
    cache_dir: Path,
    on_bad_file: str = "skip",
    extra: dict[str, Any] | None = None,
    log: Log | None = None,
    workers: int | None = None,
    face: FaceCrop | None = None,
) -> tuple[dict[str, ArraySplit], list[BadFile], str]:
    """Decoded splits from the cache, decoding and caching them first when absent.

    ``on_bad_file="error"``: any undecodable image raises ``DatasetError`` listing them,
    and nothing is added to the cache. ``"skip"``: they are dropped and returned (and kept in
    ``meta.json``). ``face``: faces are cropped at decode time (``ferlab.data.facecrop``);
    each split's ``no_face`` lists the images kept uncropped. Returns (splits as
    memory-mapped ``ArraySplit``, bad files, fingerprint).
    """
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, got {on_bad_file!r}")
    say = log or (lambda _msg: None)
    cache_dir = Path(cache_dir).expanduser()
    fp = split_fingerprint(splits, size=size, channels=channels, extra=extra, face=face)
    final = entry_dir(cache_dir, name, fp)
    loaded = _try_load(final, fp, splits)
    if loaded is not None:
        if on_bad_file == "error" and loaded[1]:  # built earlier under "skip"
            raise DatasetError(bad_files_message(name, loaded[1]))
        say(f"{name}: using the decoded cache {final}")
        return (*loaded, fp)

    cache_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(cache_dir)
    tmp = _new_tmp(cache_dir, final.name)
    try:
        bad = _build(tmp, name, splits, size, channels, fp, on_bad_file, say, workers, face)
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = _try_load(final, fp, splits)
    if loaded is None:
        raise DatasetError(
            f"The cache entry {final} was written but cannot be read back; delete it and rerun."
        )
    if not bad:
        bad = loaded[1]
    return loaded[0], bad, fp


def _build(
    tmp: Path,
    name: str,
    splits: dict[str, list[Record]],
    size: int,
    channels: int,
    fp: str,
    on_bad_file: str,
    say: Log,
    workers: int | None,
    face: FaceCrop | None = None,
) -> list[BadFile]:
    """Decode every split into ``tmp``; raise before publishing if bad files are not allowed."""
    meta: dict[str, Any] = {
        "name": name,
        "fingerprint": fp,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "size": size,
        "channels": channels,
        "decoder_code": code_digest("decode"),
        "face_crop": face.key() if face is not None else None,
        "splits": {},
        "bad_files": [],
    }
    all_bad: list[BadFile] = []
    for split, records in splits.items():
        t0 = time.perf_counter()
        say(f"{name}: decoding {split} ({len(records):,} images at {size}x{size}x{channels})")
        path = tmp / f"{split}.images.npy"
        images = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(len(records), size, size, channels)
        )
        no_face: list[str] = []
        errors = decode.decode_many(
            records, size, channels, images, workers=workers, face=face, no_face=no_face
        )
        bad_keys = {e.path for e in errors}
        all_bad.extend(BadFile(path=e.path, reason=e.reason) for e in errors)
        keep = [i for i, r in enumerate(records) if r.key not in bad_keys]
        images.flush()
        if len(keep) < len(records):
            _compact(path, images, keep)
        del images
        _write_labels(tmp, split, records, keep)
        meta["splits"][split] = {
            "count": len(keep),
            "bad": len(records) - len(keep),
            "keys": [records[i].key for i in keep],
            "sources": _sources([records[i] for i in keep]),
        }
        found = ""
        if face is not None:
            meta["splits"][split]["no_face"] = no_face
            found = f", no face found in {len(no_face)} (kept uncropped)"
        say(
            f"{name}: {split} decoded in {time.perf_counter() - t0:.1f} s, {len(errors)} bad"
            + found
        )
    if all_bad and on_bad_file == "error":
        raise DatasetError(bad_files_message(name, all_bad))
    meta["bad_files"] = [{"path": b.path, "reason": b.reason} for b in all_bad]
    _write_json(tmp / META, meta)
    return all_bad


def _compact(path: Path, images: np.ndarray, keep: list[int]) -> None:
    """Rewrite ``path`` with only the rows in ``keep`` (bad images dropped)."""
    kept = path.with_suffix(".kept.npy")
    out = np.lib.format.open_memmap(
        kept, mode="w+", dtype=np.uint8, shape=(len(keep), *images.shape[1:])
    )
    _copy_rows(images, out, np.asarray(keep, dtype=np.int64))
    out.flush()
    del out
    os.replace(kept, path)


def _write_labels(tmp: Path, split: str, records: Sequence[Record], keep: list[int]) -> None:
    labels = np.asarray([records[i].label for i in keep], dtype=np.int64)
    np.save(tmp / f"{split}.labels.npy", labels)
    if any(records[i].soft is not None for i in keep):
        soft = np.zeros((len(keep), len(CANONICAL)), dtype=np.float32)
        for row, i in enumerate(keep):
            r = records[i]
            if r.soft is None:
                soft[row, r.label] = 1.0
            else:
                soft[row, : len(r.soft)] = r.soft
        np.save(tmp / f"{split}.soft.npy", soft)


def _copy_rows(src: np.ndarray, dst: np.ndarray, rows: np.ndarray, step: int = 4096) -> None:
    """Copy in blocks so that a large split never needs to fit in memory."""
    for s in range(0, len(rows), step):
        dst[s : s + step] = src[rows[s : s + step]]


def _sources(records: Sequence[Record]) -> list[str] | None:
    return [r.source for r in records] if any(r.source for r in records) else None


def bad_files_message(name: str, bad: Sequence[BadFile]) -> str:
    """The ``on_bad_file: error`` message: the count, up to 20 files with reasons, the fix."""
    listed = "\n".join(f"  {b.path}: {b.reason}" for b in bad[:MAX_LISTED_BAD])
    more = f"\n  ... and {len(bad) - MAX_LISTED_BAD} more" if len(bad) > MAX_LISTED_BAD else ""
    return (
        f"{name}: {len(bad)} bad file(s) found before training:\n{listed}{more}\n"
        "Remove or replace the files, or set data.on_bad_file: skip to leave them out "
        "(they are then listed in the data report)."
    )


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; if another process won the race, keep theirs."""
    (tmp / _OWNER).unlink(missing_ok=True)
    if final.exists() and not (final / META).exists():
        # Not from us (entries are renamed into place with meta.json inside): set it aside.
        trash = final.with_name(f"{_TMP_PREFIX}{final.name}-broken-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / META).exists():
            raise
        # A concurrent builder published the same fingerprint first: its arrays are equal.


def _try_load(
    final: Path, fp: str, splits: dict[str, list[Record]]
) -> tuple[dict[str, ArraySplit], list[BadFile]] | None:
    """The memory-mapped entry, or None when it is absent or does not match ``fp``."""
    meta_path = final / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fp or set(meta["splits"]) != set(splits):
            return None
        out = {split: _load_split(final, split, meta["splits"][split]) for split in splits}
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(
            f"The cache entry {final} is damaged ({e}). Delete the folder and rerun: it is "
            "rebuilt from the dataset files."
        ) from e
    bad = [BadFile(path=b["path"], reason=b["reason"]) for b in meta.get("bad_files", [])]
    return out, bad


def _load_split(folder: Path, split: str, info: dict[str, Any]) -> ArraySplit:
    images = np.load(folder / f"{split}.images.npy", mmap_mode="r")
    labels = np.load(folder / f"{split}.labels.npy")
    soft_path = folder / f"{split}.soft.npy"
    soft = np.load(soft_path, mmap_mode="r") if soft_path.exists() else None
    keys = list(info["keys"])
    if not (len(images) == len(labels) == len(keys) == info["count"]):
        raise ValueError(
            f"{split}: {len(images)} images, {len(labels)} labels, {len(keys)} keys, "
            f"meta.json says {info['count']}"
        )
    no_face = info.get("no_face")
    return ArraySplit(
        images=images,
        labels=labels,
        keys=keys,
        soft=soft,
        sources=info.get("sources"),
        no_face=list(no_face) if no_face is not None else None,
    )


# --- temporary folders ----------------------------------------------------------------------


def _new_tmp(cache_dir: Path, final_name: str) -> Path:
    tmp = cache_dir / f"{_TMP_PREFIX}{final_name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "created": time.time()}
    _write_json(tmp / _OWNER, owner)
    return tmp


def clean_stale_tmp(cache_dir: Path) -> list[Path]:
    """Remove temporary folders left by killed builds; those of live builders stay.

    A folder is stale when its owner process (same host) is gone, or when its owner cannot
    be checked (another host, unreadable owner file) and it is older than a day.
    """
    removed = []
    for entry in Path(cache_dir).glob(f"{_TMP_PREFIX}*"):
        if entry.is_dir() and _is_stale(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _is_stale(tmp: Path) -> bool:
    try:
        owner = json.loads((tmp / _OWNER).read_text())
        host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        host, pid = None, None
    if host == socket.gethostname() and pid is not None:
        return not pid_alive(pid)
    try:
        age = time.time() - tmp.stat().st_mtime
    except OSError:
        return False
    return age > STALE_TMP_SECONDS


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)
        f.flush()
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
