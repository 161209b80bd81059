"""Decode one record (image file, CSV pixel row or synthetic draw) into a uint8 array.

Every image a model sees passes through ``decode_record``: it normalises what real datasets
contain (grey, palette, alpha, CMYK, 16-bit and EXIF-rotated files), crops the face box,
resizes to a square and gives 1 (luma) or 3 (RGB) channels. Faces in FER datasets are already
cropped, so the whole image (or box) is resized to ``size x size`` without an aspect-preserving
crop: a slightly non-square crop is squashed rather than losing the chin or the brows.

With a ``FaceCrop`` (``data.face_crop``), the face is detected in the image (after the box
crop, before the resize), and the largest one is cut out with its margin; an image without a
face is kept whole and its key reported (``ferlab.data.facecrop``).

Anything that cannot be decoded raises ``BadImageError`` naming the file and the reason, so the
cache can report or skip it before any training starts. ``decode_many`` decodes a list with a
small process pool when the list is long.
"""

from __future__ import annotations

import contextlib
import errno
import math
import multiprocessing as mp
import os
import stat
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ferlab.data.base import Record, renderer_of
from ferlab.data.facecrop import BLOCK, crop_faces, fork_safe, single_threaded

if TYPE_CHECKING:
    from ferlab.data.facecrop import FaceCrop

# Our own decompression-bomb limit, checked from the header before any pixel is decoded.
# Far above any face photo (a 50 MP photo is 8660 x 5773); raise it here if you must.
MAX_IMAGE_PIXELS = 50_000_000

# Transparent pixels are composited on this grey level (0 = black): a transparent
# background then looks like the dark padding the augmentations also use.
ALPHA_BACKGROUND = 0

# A CSV row of 2304 values is FER2013's 48 x 48 face; any square count is accepted.
CSV_SIDE = 48

# Decode lists longer than this with a process pool; shorter ones in this process.
POOL_THRESHOLD = 2000
POOL_CHUNK = 512

# With face cropping, a JPEG is draft-decoded at no less than this many times the model size:
# the face, not the whole photo, must stay at least ``size`` pixels across.
FACE_DRAFT_FACTOR = 4

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


class BadImageError(ValueError):
    """A file (or CSV row) that is not a decodable image; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``args``; keep both fields across process boundaries.
        return (BadImageError, (self.path, self.reason))


def decode_record(
    record: Record, size: int, channels: int, *, face: FaceCrop | None = None
) -> np.ndarray:
    """Decode ``record`` into a ``(size, size, channels)`` uint8 array.

    The source is the CSV pixel string when present, else the synthetic draw, else the image
    file at ``record.path`` (cropped to ``record.box`` first, clipped to the image). With
    ``face``, the largest face found is cropped out before the resize (none found: the whole
    image is kept; ``decode_many`` reports which).
    """
    _check_geometry(size, channels)
    if face is not None:
        [result] = _decode_with_faces([record], size, channels, face)
        if isinstance(result, BadImageError):
            raise result
        return result[0]
    if record.pixels is not None:
        return _finish(_pixels_image(record), size, channels)
    if record.draw is not None:
        return _render(record, size, channels)
    return _decode_file(record.path, record.box, size, channels)


def _check_geometry(size: int, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size!r}")


def _source_image(record: Record, size: int, channels: int) -> Image.Image:
    """The record as an 'L' or 'RGB' image before the resize (face cropping works on it)."""
    if record.pixels is not None:
        return _pixels_image(record)
    if record.draw is not None:
        arr = _render(record, size, channels)
        return Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
    return _decode_file(record.path, record.box, size, channels, keep_size=True)


def _decode_with_faces(
    records: Sequence[Record], size: int, channels: int, face: FaceCrop
) -> list[tuple[np.ndarray, bool] | BadImageError]:
    """Per record: (array, whether a face was found), or the ``BadImageError`` (path = key).

    The images are decoded first and then detected together (one MTCNN call per size).
    """
    results: list[tuple[np.ndarray, bool] | BadImageError | None] = []
    images: list[Image.Image] = []
    slots: list[int] = []
    for rec in records:
        try:
            images.append(_source_image(rec, size, channels))
        except BadImageError as e:
            results.append(BadImageError(rec.key, e.reason))
            continue
        slots.append(len(results))
        results.append(None)  # filled once the faces are found
    crops, found = crop_faces(images, face)
    for slot, im, ok in zip(slots, crops, found, strict=True):
        results[slot] = (_finish(im, size, channels), ok)
    return [r for r in results if r is not None]


def _pixels_image(record: Record) -> Image.Image:
    where = record.key
    try:
        values = np.array(record.pixels.split() if record.pixels else [], dtype=np.int64)
    except ValueError as e:
        raise BadImageError(where, f"pixel string holds a non-integer value ({e})") from e
    side = math.isqrt(values.size)
    if values.size == 0 or side * side != values.size:
        raise BadImageError(
            where,
            f"pixel string has {values.size} values; expected a square count "
            f"({CSV_SIDE * CSV_SIDE} for a {CSV_SIDE}x{CSV_SIDE} FER2013 face)",
        )
    if values.min() < 0 or values.max() > 255:
        raise BadImageError(
            where,
            f"pixel values must be 0..255, found {int(values.min())}..{int(values.max())}",
        )
    return Image.fromarray(values.astype(np.uint8).reshape(side, side), mode="L")


def _render(record: Record, size: int, channels: int) -> np.ndarray:
    """A generated record's image, drawn by its adapter's renderer (``DatasetTraits.render``)."""
    assert record.draw is not None
    domain, seed = record.draw
    arr = np.asarray(renderer_of(record)(domain, seed, size, channels))
    if arr.shape != (size, size, channels) or arr.dtype != np.uint8:
        raise BadImageError(
            record.key,
            f"render() returned {arr.dtype} {arr.shape}, expected uint8 {(size, size, channels)}",
        )
    return arr


def _decode_file(
    path: str,
    box: tuple[int, int, int, int] | None,
    size: int,
    channels: int,
    *,
    keep_size: bool = False,
) -> Any:
    """The file decoded to (size, size, channels); ``keep_size``: the 'L'/'RGB' image before
    the resize instead (in colour when the file is, and large enough to find the face in)."""
    with open_image(path) as im:
        try:
            if keep_size:
                out = _open_image_source(im, path, box, size * FACE_DRAFT_FACTOR, 3)
                return out.copy() if out is im else out  # outlives the file
            return _finish(_open_image_source(im, path, box, size, channels), size, channels)
        except BadImageError:
            raise
        except Exception as e:
            # PIL reports truncated and corrupt data as OSError ("image file is truncated"),
            # SyntaxError, ValueError, struct.error, zlib.error... depending on the format
            # plugin; whatever a hostile file raises, it is a bad file, never a crashed run.
            raise BadImageError(path, f"cannot decode the image ({type(e).__name__}: {e})") from e


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file lazily (header only), with every guard ferlab applies.

    The one way ferlab opens an image (decoding, the folder adapter's colour guess, ExpW's
    photo sizes): a missing, empty, unreadable or non-image file, a symbolic link loop or
    dangling link, a folder or pipe, and an image over ``MAX_IMAGE_PIXELS`` (a decompression
    bomb: checked from the header before any pixel is decoded) raise
    ``BadImageError(path, reason)``. Use it as a context manager (``with open_image(p) as im:``)
    so that the file is closed.
    """
    where = os.fspath(path)
    problem = unreadable_reason(where)
    if problem is not None:
        raise BadImageError(where, problem)
    try:
        with warnings.catch_warnings():
            # PIL's own (higher) limit only warns below 2x; ours is applied right after.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(where)
    except UnidentifiedImageError as e:
        raise BadImageError(where, "not an image file (no image format recognised)") from e
    except Image.DecompressionBombError as e:
        raise BadImageError(
            where,
            f"image is over the pixel limit of {MAX_IMAGE_PIXELS:,} pixels ({e}); "
            "a decompression bomb or an unexpected photo",
        ) from e
    except PermissionError as e:
        raise BadImageError(where, "permission denied: the file cannot be read") from e
    except OSError as e:
        raise BadImageError(where, f"cannot read the file ({e.strerror or e})") from e
    except Exception as e:  # a format plugin choking on a damaged header
        raise BadImageError(where, f"cannot read the image header ({type(e).__name__}: {e})") from e
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise BadImageError(
            where,
            f"image is {w} x {h} = {w * h:,} pixels, over the pixel limit of "
            f"{MAX_IMAGE_PIXELS:,} (a decompression bomb or an unexpected photo); raise "
            "ferlab.data.decode.MAX_IMAGE_PIXELS if the file is genuine",
        )
    if w < 1 or h < 1:
        im.close()
        raise BadImageError(where, f"image has no pixels ({w} x {h})")
    return im


def unreadable_reason(path: str) -> str | None:
    """Why ``path`` is not a readable, non-empty regular file, in words; None when it is one."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop: the link leads (through links) back to itself"
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symbolic link: its target {target!r} does not exist"
        if isinstance(err, FileNotFoundError):
            return "file not found"
        if isinstance(err, PermissionError):
            return "permission denied: the file cannot be read"
        return f"cannot read the file ({err.strerror or err})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):  # reading a pipe would block: never open one
        return "not a regular file (a pipe, socket or device)"
    if st.st_size == 0:
        return "file is empty (0 bytes)"
    if not os.access(path, os.R_OK):
        return "permission denied: the file cannot be read"
    return None


def _open_image_source(
    im: Image.Image,
    path: str,
    box: tuple[int, int, int, int] | None,
    size: int,
    channels: int,
) -> Image.Image:
    """The open file decoded, upright, box-cropped, in 'L' or 'RGB' (a JPEG draft-decoded as
    small as keeps the region at least ``size`` pixels, and in grey when ``channels`` is 1)."""
    w, h = im.size
    orientation = _orientation(im)
    disp_w, disp_h = (h, w) if orientation in _SWAPS_AXES else (w, h)
    if im.format == "JPEG":
        _draft(im, box, size, channels, disp_w, disp_h)
    im.load()  # decode now: truncated files fail here, not later
    if orientation not in (None, 1):
        im = ImageOps.exif_transpose(im)
    if box is not None:
        im = _crop(im, path, box, disp_w, disp_h)
    return _to_basic_mode(im)


def _orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block must not make a good image unreadable
        return None
    return int(value) if isinstance(value, int) else None


def _draft(
    im: Image.Image,
    box: tuple[int, int, int, int] | None,
    size: int,
    channels: int,
    disp_w: int,
    disp_h: int,
) -> None:
    """Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while the crop stays >= ``size``."""
    if box is None:
        region_w, region_h = disp_w, disp_h
    else:
        region_w = max(1, min(box[2], disp_w) - max(box[0], 0))
        region_h = max(1, min(box[3], disp_h) - max(box[1], 0))
    scale = min(region_w / size, region_h / size)
    mode = "L" if channels == 1 and im.mode == "RGB" else im.mode
    if scale < 2 and mode == im.mode:
        return
    # draft() takes the size in stored (not EXIF-rotated) orientation.
    want_w = max(1, math.ceil(disp_w / max(scale, 1)))
    want_h = max(1, math.ceil(disp_h / max(scale, 1)))
    if (disp_w, disp_h) != im.size:
        want_w, want_h = want_h, want_w
    im.draft(mode, (want_w, want_h))


def _crop(
    im: Image.Image, path: str, box: tuple[int, int, int, int], disp_w: int, disp_h: int
) -> Image.Image:
    """Crop the face box (in full-resolution, upright coordinates), clipped to the image."""
    left, top, right, bottom = box
    cl, ct = max(left, 0), max(top, 0)
    cr, cb = min(right, disp_w), min(bottom, disp_h)
    if cr <= cl or cb <= ct:
        raise BadImageError(
            path,
            f"face box (left, top, right, bottom) = {tuple(box)} lies outside the "
            f"{disp_w} x {disp_h} image or is empty",
        )
    # The image may be smaller than full resolution after a JPEG draft: scale the box.
    sx, sy = im.size[0] / disp_w, im.size[1] / disp_h
    crop = (
        math.floor(cl * sx),
        math.floor(ct * sy),
        max(math.ceil(cr * sx), math.floor(cl * sx) + 1),
        max(math.ceil(cb * sy), math.floor(ct * sy) + 1),
    )
    return im.crop(crop)


def _to_basic_mode(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB' (alpha composited on ``ALPHA_BACKGROUND``)."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        has_alpha = "transparency" in im.info or (
            im.palette is not None and im.palette.mode == "RGBA"
        )
        if not has_alpha:
            return im.convert("RGB")
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "PA"):
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(im)
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit grey -> 8-bit by scaling the value range, never by clipping.

    ``I;16*`` files use the full 0..65535 range: divide by 257. ``I``/``F`` data has no fixed
    range: 0..255 data is kept, 0..65535 is divided by 257, 0..1 floats are multiplied by 255,
    anything else is stretched from its min..max.
    """
    arr = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        scaled = arr / 257.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        if im.mode == "F" and lo >= 0 and hi <= 1:
            scaled = arr * 255.0
        elif lo >= 0 and hi <= 255:
            scaled = arr
        elif lo >= 0 and hi <= 65535:
            scaled = arr / 257.0
        else:
            scaled = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _finish(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """Resize (bilinear; Pillow antialiases when shrinking) and give 1 or 3 channels."""
    if channels == 1 and im.mode != "L":
        im = im.convert("L")  # ITU-R 601 luma, before resizing: cheaper
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    if channels == 3 and im.mode != "RGB":
        im = im.convert("RGB")  # grey replicated into R, G and B
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


# --- many records ---------------------------------------------------------------------------

Progress = Callable[[int, int], None]


def default_workers() -> int:
    """Processes for decoding: the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def decode_many(
    records: Sequence[Record],
    size: int,
    channels: int,
    out: np.ndarray,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    face: FaceCrop | None = None,
    no_face: list[str] | None = None,
) -> list[BadImageError]:
    """Decode ``records`` into ``out[i]`` (shape (N, size, size, channels), e.g. a memmap).

    Bad records leave their row zero and come back as ``BadImageError`` with ``path`` set to
    the record's key; the caller decides to skip them or fail. Lists longer than
    ``POOL_THRESHOLD`` use a process pool of ``workers`` (default: the usable cores). With
    ``face``, faces are cropped (each process makes its detector once) and the keys of the
    images where none was found, kept whole, are appended to ``no_face`` in record order.
    """
    n = len(records)
    if out.shape != (n, size, size, channels):
        raise ValueError(f"out has shape {out.shape}, expected {(n, size, size, channels)}")
    _check_geometry(size, channels)
    workers = default_workers() if workers is None else max(1, workers)
    if n <= POOL_THRESHOLD or workers == 1 or not _can_fork_pool():
        bad, missing = _decode_serial(records, size, channels, out, progress, face)
    else:
        bad, missing = _decode_pool(records, size, channels, out, workers, progress, face)
    if no_face is not None:
        no_face.extend(missing)
    return bad


def decode_problems(
    records: Sequence[Record], size: int, channels: int, *, chunk: int = 2048
) -> list[BadImageError]:
    """Decode ``records`` only to find the bad ones (nothing is kept): a fixed-size buffer per
    chunk, so memory does not grow with the dataset."""
    errors: list[BadImageError] = []
    todo = [r for r in records if r.draw is None]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        out = np.empty((len(part), size, size, channels), dtype=np.uint8)
        errors += decode_many(part, size, channels, out)
    return errors


def _decode_serial(
    records: Sequence[Record],
    size: int,
    channels: int,
    out: np.ndarray,
    progress: Progress | None,
    face: FaceCrop | None = None,
) -> tuple[list[BadImageError], list[str]]:
    """Decode in this process: (bad records, keys of the images without a face)."""
    if face is not None:
        return _decode_serial_faces(records, size, channels, out, progress, face)
    bad: list[BadImageError] = []
    n = len(records)
    for i, rec in enumerate(records):
        try:
            out[i] = decode_record(rec, size, channels)
        except BadImageError as e:
            bad.append(BadImageError(rec.key, e.reason))
        if progress is not None and (i + 1) % POOL_CHUNK == 0:
            progress(i + 1, n)
    if progress is not None:
        progress(n, n)
    return bad, []


def _decode_serial_faces(
    records: Sequence[Record],
    size: int,
    channels: int,
    out: np.ndarray,
    progress: Progress | None,
    face: FaceCrop,
) -> tuple[list[BadImageError], list[str]]:
    bad: list[BadImageError] = []
    missing: list[str] = []
    n = len(records)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        for i, res in enumerate(_decode_with_faces(records[start:stop], size, channels, face)):
            if isinstance(res, BadImageError):
                bad.append(res)
                continue
            out[start + i], found = res
            if not found:
                missing.append(records[start + i].key)
        if progress is not None and stop % POOL_CHUNK == 0:
            progress(stop, n)
    if progress is not None:
        progress(n, n)
    return bad, missing


# Set in the pool's worker processes by _init_worker (inherited through fork, not pickled).
_WORK: tuple[Sequence[Record], int, int, FaceCrop | None] | None = None


def _init_worker(
    records: Sequence[Record], size: int, channels: int, face: FaceCrop | None = None
) -> None:
    global _WORK
    _WORK = (records, size, channels, face)
    if face is not None:
        single_threaded()


def _decode_chunk(
    bounds: tuple[int, int],
) -> tuple[int, np.ndarray, list[BadImageError], list[str]]:
    assert _WORK is not None, "worker not initialised"
    records, size, channels, face = _WORK
    start, stop = bounds
    arr = np.zeros((stop - start, size, size, channels), dtype=np.uint8)
    bad, missing = _decode_serial(records[start:stop], size, channels, arr, None, face)
    return start, arr, bad, missing


def _decode_pool(
    records: Sequence[Record],
    size: int,
    channels: int,
    out: np.ndarray,
    workers: int,
    progress: Progress | None,
    face: FaceCrop | None = None,
) -> tuple[list[BadImageError], list[str]]:
    n = len(records)
    chunks = [(s, min(s + POOL_CHUNK, n)) for s in range(0, n, POOL_CHUNK)]
    bad: list[BadImageError] = []
    missing: list[str] = []
    done = 0
    ctx = mp.get_context("fork")
    initargs = (records, size, channels, face)
    safe: Any = contextlib.nullcontext()
    if face is not None:
        safe = fork_safe()
    with safe, ctx.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        for start, arr, chunk_bad, chunk_missing in pool.imap_unordered(_decode_chunk, chunks):
            out[start : start + len(arr)] = arr
            bad.extend(chunk_bad)
            missing.extend(chunk_missing)
            done += len(arr)
            if progress is not None:
                progress(done, n)
    order = {r.key: i for i, r in enumerate(records)}
    bad.sort(key=lambda e: order.get(e.path, n))
    missing.sort(key=lambda k: order.get(k, n))
    return bad, missing


def _can_fork_pool() -> bool:
    """Forking is fast and passes the record list without pickling; only where it is safe."""
    if sys.platform != "linux":  # macOS forks unsafely, Windows cannot fork
        return False
    # A daemon process (a DataLoader or pool worker) may not have children.
    return not mp.current_process().daemon
