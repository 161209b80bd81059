"""Face cropping at decode time (``data.face_crop``): one face framing for every dataset.

Datasets frame faces differently (FER2013 tight, ExpW's crops looser, lab sets whole heads), and
a model trained on one framing loses accuracy on another. With ``face_crop: haar | mtcnn`` the
decoder detects the faces in every image before it resizes it to the model's size, keeps the
largest, and crops it with ``face_margin`` (``ferlab.face.crop_face``: square, edge-padded).
An image where no face is found is kept uncropped and counted. The settings (detector, margin,
minimum face size, the detector's own parameters) are part of the decode-cache fingerprint, so
cropped and uncropped arrays never mix and a model trained on cropped data has its own run key.

Detection runs on the CPU in the decoding processes: each process makes its detector once, on
first use (``detector_for``), and a process forked from one that has a detector makes its own.
Forking is made safe for OpenCV by ``fork_safe``: a child forked while OpenCV's thread pool is
alive hangs in its first OpenCV call (seen here: in ``cv2.setNumThreads``), so the pool is
stopped for the time the workers are forked and run, and each worker runs one thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

import ferlab.face
from ferlab.data.base import DatasetError
from ferlab.defaults import FACE_MARGIN
from ferlab.face import Face, crop_face, detector_settings
from ferlab.face.detectors import _import_facenet, import_cv2

FACE_CROPS: tuple[str, ...] = ("none", "haar", "mtcnn")
# Smallest face searched for, in pixels of the decoded image (before the resize): a 48 x 48
# FER2013 face is found, specks in a large photo are not.
MIN_FACE = 20
MAX_MARGIN = 2.0
# Detection runs on the image padded by this fraction of its longer side (edge pixels): a face
# that fills the frame (FER2013's tight crops, ExpW's) lacks the context the Haar cascade needs.
# Measured on 100 random images each: haar finds a face in 27% of FER2013's 48 px crops
# unpadded and 66% padded, in 49% / 65% of ExpW's; MTCNN does not need it (89% / 86% FER2013).
DETECT_PAD = {"haar": 0.25, "mtcnn": 0.0}
# Images decoded, then detected together (same-sized images share one MTCNN call).
BLOCK = 64


@dataclass(frozen=True)
class FaceCrop:
    """How decoding crops faces: the detector and the margin (a fraction of the box size)."""

    detector: str
    margin: float = FACE_MARGIN
    min_face: int = MIN_FACE

    def key(self) -> dict[str, Any]:
        """What the cropped images depend on, for the cache fingerprint (the cropping code is
        keyed there too, by ``provenance.code_digest("decode")``: no version to bump)."""
        return {
            "margin": float(self.margin),
            "detect_pad": DETECT_PAD.get(self.detector, 0.0),
            **detector_settings(self.detector, min_face=self.min_face),
        }


def face_crop_setting(face_crop: str, face_margin: float) -> FaceCrop | None:
    """The ``FaceCrop`` of the ``data.face_crop`` / ``data.face_margin`` values (None for
    ``none``); bad values raise ``DatasetError`` naming the setting and the allowed values."""
    name = str(face_crop).strip().lower()
    if name not in FACE_CROPS:
        raise DatasetError(
            f"face_crop must be one of {', '.join(FACE_CROPS)}, got {face_crop!r} (data.face_crop)."
        )
    margin = float(face_margin)
    if not 0 <= margin < MAX_MARGIN:
        raise DatasetError(
            f"face_margin must be >= 0 and < {MAX_MARGIN:g} (a fraction of the face box "
            f"added on each side), got {face_margin!r} (data.face_margin)."
        )
    if name == "none":
        return None
    return FaceCrop(detector=name, margin=margin)


def check_face_tools(face: FaceCrop | None) -> None:
    """Fail before decoding starts (``FaceToolsMissing``) when the detector's library is absent."""
    if face is None:
        return

    import_cv2()  # both detectors' installs come with the face extra
    if face.detector == "mtcnn":
        _import_facenet()


# One detector per (process, settings): made on first use in each decoding process.
_DETECTORS: dict[tuple[int, str, int], Any] = {}
_SINGLE_THREAD = False


@contextlib.contextmanager
def fork_safe() -> Iterator[None]:
    """Around forking decode workers: OpenCV's thread pool stopped (``setNumThreads(1)`` joins
    its threads) so that no child inherits a pool whose threads it does not have; restored
    after. torch needs nothing here: its children run one thread (``single_threaded``)."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None:  # not loaded: the workers load their own
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def single_threaded() -> None:
    """Called in each decode worker: one detector thread per process (the pool is the
    parallelism), so N workers do not each start a thread per core."""
    global _SINGLE_THREAD
    _SINGLE_THREAD = True


def detector_for(face: FaceCrop) -> Any:
    """This process's detector for ``face``, made once (CPU: decoding runs in forked workers,
    where CUDA cannot be used)."""
    key = (os.getpid(), face.detector, face.min_face)
    if key not in _DETECTORS:
        if _SINGLE_THREAD:
            _limit_threads(face.detector)
        for old in [k for k in _DETECTORS if k[0] != key[0]]:  # inherited through fork
            del _DETECTORS[old]
        _DETECTORS[key] = ferlab.face.make_detector(
            face.detector, min_face=face.min_face, device="cpu"
        )
    return _DETECTORS[key]


def _limit_threads(detector: str) -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # reported by make_detector
        pass
    if detector == "mtcnn":
        import torch

        torch.set_num_threads(1)


def _pad(arr: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """``arr`` padded by ``fraction`` of its longer side with edge pixels, and the pad width."""
    p = round(fraction * max(arr.shape[:2]))
    if p == 0:
        return arr, 0
    widths = ((p, p), (p, p)) + (((0, 0),) if arr.ndim == 3 else ())
    return np.pad(arr, widths, mode="edge"), p


def _shifted(face: Any, d: float) -> Any:
    """``face`` moved by ``d`` pixels along both axes (back from the padded image)."""
    x0, y0, x1, y1 = face.box
    marks = face.landmarks
    return Face(
        box=(x0 + d, y0 + d, x1 + d, y1 + d),
        score=face.score,
        landmarks=None if marks is None else tuple((x + d, y + d) for x, y in marks),
    )


def detect_faces(
    arrays: Sequence[np.ndarray], face: FaceCrop, detector: Any = None
) -> list[list[Any]]:
    """The faces (``ferlab.face.Face``, largest first) of each image as ``face`` finds them:
    its detector and minimum size, on the image padded by ``DETECT_PAD`` (boxes given in the
    image's own coordinates). Decoding and ``ferlab predict`` both detect through this;
    ``detector``: one made for ``face`` elsewhere (predict's, on its device), else this
    process's (``detector_for``)."""
    pad = DETECT_PAD.get(face.detector, 0.0)
    padded = [_pad(np.asarray(arr), pad) for arr in arrays]
    det = detector if detector is not None else detector_for(face)
    found = det.detect_batch([p for p, _ in padded]) if padded else []
    out = []
    for (_, shift), faces in zip(padded, found, strict=True):
        shifted = [_shifted(f, -shift) if shift else f for f in faces]
        out.append(sorted(shifted, key=lambda f: -f.area))  # stable: ties keep detector order
    return out


def frame_face(arr: np.ndarray, box: Any, face: FaceCrop) -> np.ndarray:
    """The crop of one detected face as ``face`` frames it (its margin, made square, edge-padded
    past the image): the one framing of training data and of ``ferlab predict``."""
    return crop_face(arr, box, margin=face.margin, square=True)


def crop_faces(
    images: Sequence[Image.Image], face: FaceCrop
) -> tuple[list[Image.Image], list[bool]]:
    """Each image ('L' or 'RGB') cropped to its largest face; one without a face unchanged.

    Returns the images and, per image, whether a face was found.
    """
    arrays = [np.asarray(im) for im in images]
    out: list[Image.Image] = []
    ok: list[bool] = []
    for im, arr, faces in zip(images, arrays, detect_faces(arrays, face), strict=True):
        ok.append(bool(faces))
        out.append(Image.fromarray(frame_face(arr, faces[0], face)) if faces else im)
    return out, ok
