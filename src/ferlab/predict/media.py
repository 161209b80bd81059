"""What ``ferlab predict`` reads: the inputs named on the command line, images and video frames.

Folders are walked recursively with the data layer's listing rules (``list_dir``): OS and tool
litter (``.DS_Store``, ``__MACOSX/``, ``._*``, hidden entries) is left out and counted; images
are recognised by the data layer's image extensions and videos by ``VIDEO_EXTENSIONS``; other
files (notes, spreadsheets) are counted, not read. Images are opened with the data layer's
guarded ``open_image`` (pixel limit, links, special files) and EXIF-rotated as decoding does.
Videos are read frame by frame with OpenCV, so memory does not grow with their length.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ferlab.config import ConfigError
from ferlab.face import FaceToolsMissing

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
)

Kind = Literal["image", "video", "unknown", "bad"]


class PredictInputError(ConfigError):
    """Inputs that cannot be predicted on at all (missing paths, nothing to read)."""


class BadVideoError(ValueError):
    """A video file OpenCV cannot read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Source:
    """One file to read. ``name`` is its path relative to the input it was found under
    (prefixed by that folder's name), used to name annotated copies and per-video files."""

    path: str
    kind: Kind
    name: str
    problem: str | None = None  # kind "bad": why it cannot be read


@dataclass
class Inputs:
    sources: list[Source]
    ignored: Counter[str]  # entries of the input folders that were not read, by kind


def kind_of(name: str) -> Kind:
    from ferlab.data.adapters.utils import IMAGE_EXTENSIONS  # lazy: PIL

    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return "unknown"


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> Inputs:
    """Every image and video named by ``inputs`` (files and folders, folders recursively), in
    the order given and, within a folder, sorted by path. Missing inputs are an error naming
    them all; a folder without any image or video is an error too."""
    from ferlab.data.adapters.utils import path_problem  # lazy: PIL

    if not inputs:
        raise PredictInputError("No input given: name image files, folders or video files.")
    missing = [str(p) for p in inputs if not os.path.lexists(p)]
    if missing:
        raise PredictInputError(
            f"Input not found: {', '.join(repr(m) for m in missing)}. Name existing image "
            "files, folders or video files."
        )
    sources: list[Source] = []
    ignored: Counter[str] = Counter()
    empty: list[str] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = list(_walk(path, Path(path.resolve().name or "input"), ignored))
            if not found:
                empty.append(str(path))
            sources += found
        elif path.is_file():
            sources.append(Source(str(path), kind_of(path.name), path.name))
        else:
            sources.append(Source(str(path), "bad", path.name, path_problem(str(path))))
    if empty and not sources:
        raise PredictInputError(
            f"No image or video found in {', '.join(repr(e) for e in empty)} (looked for "
            f"image and video files, recursively; ignored: {_describe(ignored) or 'nothing'})."
        )
    return Inputs(sources, ignored)


def _describe(ignored: Counter[str]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(ignored.items()))


def _walk(folder: Path, name: Path, ignored: Counter[str]) -> Iterator[Source]:
    from ferlab.data.adapters.utils import BROKEN_LINK, list_dir, unused_kind  # lazy: PIL

    listing = list_dir(folder, ignored)
    for entry in listing.files:
        kind = kind_of(entry.name)
        if kind == "unknown":
            ignored[unused_kind(entry.name, is_dir=False)] += 1
        else:
            yield Source(entry.path, kind, str(name / entry.name))
    for entry, problem in listing.broken:
        if kind_of(entry.name) == "unknown":
            ignored[BROKEN_LINK] += 1
        else:
            yield Source(entry.path, "bad", str(name / entry.name), problem)
    for entry in listing.dirs:
        yield from _walk(Path(entry.path), name / entry.name, ignored)


# ------------------------------------------------------------------------------ images


def load_rgb(path: str) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``, upright (EXIF orientation applied).

    Opened with ``ferlab.data.decode.open_image`` (its guards: pixel limit, links, special
    files); every failure is a ``BadImageError(path, reason)``.
    """
    from PIL import ImageOps

    from ferlab.data.decode import BadImageError, _to_basic_mode, open_image  # lazy: PIL

    with open_image(path) as im:
        try:
            im.load()  # decode now: truncated files fail here
            upright = ImageOps.exif_transpose(im)
            rgb = _to_basic_mode(upright).convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
        except BadImageError:
            raise
        except Exception as e:  # whatever a damaged file makes a format plugin raise
            raise BadImageError(path, f"cannot decode the image ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------ videos


def import_cv2() -> Any:
    """OpenCV, or the face module's error saying how to install it."""
    try:
        import cv2
    except ImportError as e:
        raise FaceToolsMissing(
            "ferlab predict needs OpenCV for videos and annotated copies: "
            "pip install 'ferlab[face]'"
        ) from e
    return cv2


@dataclass(frozen=True)
class Frame:
    index: int  # in the video, counting from 0
    timestamp_s: float
    rgb: np.ndarray  # (H, W, 3) uint8


class VideoReader:
    """A video read frame by frame (one frame in memory at a time).

    ``frames(step)`` yields every ``step``-th frame (0, step, 2*step, ...); skipped frames are
    only grabbed, not decoded. ``decoded`` counts the frames read, ``declared`` is the frame
    count the container claims (0 when unknown).
    """

    def __init__(self, path: str) -> None:
        from ferlab.data.decode import unreadable_reason  # lazy: PIL

        problem = unreadable_reason(path)
        if problem is not None:
            raise BadVideoError(path, problem)
        cv2 = import_cv2()
        self.path = path
        self._cv2 = cv2
        self._cap = cv2.VideoCapture(path)
        if not self._cap.isOpened():
            self._cap.release()
            raise BadVideoError(
                path,
                "OpenCV cannot open it as a video (corrupt file, or a container or codec this "
                "OpenCV build does not read)",
            )
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and 0 < fps < 10_000 else 0.0
        declared = self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0
        self.declared = int(declared) if np.isfinite(declared) and declared > 0 else 0
        self.decoded = 0
        self.positions = 0  # frames passed (grabbed or read)

    def frames(self, step: int = 1) -> Iterator[Frame]:
        cv2 = self._cv2
        index = 0
        while True:
            if index % step == 0:
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                self.decoded += 1
                self.positions = index + 1
                yield Frame(index, self._timestamp(index), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            else:
                if not self._cap.grab():
                    break
                self.positions = index + 1
            index += 1
        if self.decoded == 0:
            raise BadVideoError(
                self.path, "no frame could be decoded (a corrupt or truncated video)"
            )

    def _timestamp(self, index: int) -> float:
        if self.fps > 0:
            return index / self.fps
        return float(self._cap.get(self._cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0

    def truncated(self) -> bool:
        """Fewer frames than the container declares (beyond a small tolerance)."""
        return self.declared > 0 and self.positions < self.declared - max(2, self.declared // 100)

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
