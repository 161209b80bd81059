"""Face detectors behind one small interface: ``make_detector(name).detect(rgb) -> [Face]``.

- ``haar``: OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``, shipped
  in ``cv2.data.haarcascades`` by opencv-python-headless<5; the 5.x wheels dropped it), run on a
  grey copy. Fast, frontal faces only, no score and no landmarks.
- ``mtcnn``: the three-stage MTCNN of facenet-pytorch 2.5.3, whose wheel ships the P-, R- and
  O-net weights. Slower, finds turned and small faces, gives a score and five landmarks (the
  eyes, the nose, the mouth corners) that ``crop_face(..., align=True)`` uses.
- ``none``: one face covering the whole image (datasets that are already cropped).

Faces are listed largest first. Boxes are floats (x0, y0, x1, y1) in pixels of the image given;
MTCNN's may run past the image edge (``crop_face`` pads rather than shrinks).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ferlab.config import ConfigError

DETECTORS: tuple[str, ...] = ("haar", "mtcnn", "none")
INSTALL_HINT = "pip install 'ferlab[face]'"

# Bump when a detector's output for the same image and settings changes (the data layer's
# face-crop cache key includes it through ``detector_settings``).
DETECTOR_VERSION = 1

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.1  # pyramid step: smaller finds more faces, slower
HAAR_MIN_NEIGHBORS = 5  # overlapping hits a face needs: higher gives fewer false faces

MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R-, O-net stage thresholds (facenet-pytorch's)
MTCNN_FACTOR = 0.709  # pyramid step (facenet-pytorch's)
MTCNN_SCORE_THRESHOLD = 0.9  # faces below this final score are dropped
MTCNN_BATCH = 32  # same-sized images detected in one call, at most


@dataclass(frozen=True)
class Face:
    """One detected face: its box, the detector's confidence and landmarks when it gives them."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image given
    score: float | None  # detector confidence (None for haar and none)
    # mtcnn: left eye, right eye, nose, mouth left, mouth right, as (x, y); "left" as seen in
    # the image. None for haar and none.
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class FaceToolsMissing(ConfigError):
    """A detector's library (OpenCV or facenet-pytorch) is not installed."""


class Detector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]: ...


def make_detector(
    name: str,
    *,
    min_face: int = 20,
    device: str | None = None,
    score_threshold: float = MTCNN_SCORE_THRESHOLD,
) -> Detector:
    """The detector ``name`` (one of ``DETECTORS``), finding faces of ``min_face`` pixels or more.

    ``device`` (mtcnn only): ``auto``/``None`` picks CUDA, MPS or the CPU (``ferlab.device``).
    ``score_threshold`` (mtcnn only): faces scored below it are dropped. A missing library
    raises ``FaceToolsMissing`` with the install command; an unknown name lists the known ones.
    """
    key = str(name).strip().lower()
    if key not in _BUILDERS:
        close = difflib.get_close_matches(key, DETECTORS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown face detector {name!r}.{hint} Known detectors: {', '.join(DETECTORS)} "
            "(none: each image is one face, for datasets that are already cropped)."
        )
    if isinstance(min_face, bool) or not isinstance(min_face, int) or min_face < 1:
        raise ConfigError(f"min_face must be a positive number of pixels, got {min_face!r}.")
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"score_threshold must be in [0, 1], got {score_threshold!r}.")
    return _BUILDERS[key](min_face, device, score_threshold)


def detector_settings(
    name: str, *, min_face: int = 20, score_threshold: float = MTCNN_SCORE_THRESHOLD
) -> dict[str, Any]:
    """Everything that decides what detector ``name`` finds, as a JSON-able dict (cache keys)."""
    settings: dict[str, Any] = {"detector": name, "min_face": min_face, "version": DETECTOR_VERSION}
    if name == "haar":
        settings.update(
            cascade=HAAR_CASCADE, scale_factor=HAAR_SCALE_FACTOR, min_neighbors=HAAR_MIN_NEIGHBORS
        )
    elif name == "mtcnn":
        settings.update(
            thresholds=list(MTCNN_THRESHOLDS),
            factor=MTCNN_FACTOR,
            score_threshold=score_threshold,
        )
    return settings


def largest_face(faces: Sequence[Face]) -> Face | None:
    """The face with the largest box (the first of equals), or None when there is none."""
    best: Face | None = None
    for f in faces:
        if best is None or f.area > best.area:
            best = f
    return best


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from an (H, W, 3), (H, W, 4) (alpha dropped), (H, W, 1) or (H, W) array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"a face detector takes uint8 images, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[:, :, :3])
    raise ValueError(f"a face detector takes (H, W, 3) RGB images, got shape {arr.shape}")


def _sorted(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: -f.area)  # stable: equal areas keep detector order


# --------------------------------------------------------------------------- none


class WholeImage:
    """``none``: the whole image is one face (score None): for datasets already cropped."""

    name = "none"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = np.asarray(rgb).shape[:2]
        return [Face(box=(0.0, 0.0, float(w), float(h)), score=None, landmarks=None)]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self.detect(im) for im in images]


# --------------------------------------------------------------------------- haar


def import_cv2() -> Any:
    """OpenCV, or ``FaceToolsMissing`` with the install command."""
    try:
        import cv2
    except ImportError as e:
        raise FaceToolsMissing(
            f"The haar face detector needs OpenCV (opencv-python-headless<5), which is not "
            f"installed ({e}). Install the face extra: {INSTALL_HINT}"
        ) from e
    return cv2


class HaarDetector:
    """OpenCV's frontal-face Haar cascade on a grey copy of the image."""

    name = "haar"

    def __init__(self, min_face: int) -> None:
        cv2 = import_cv2()
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = os.path.join(folder, HAAR_CASCADE)
        if not os.path.isfile(path):
            raise FaceToolsMissing(
                f"OpenCV {cv2.__version__} has no {HAAR_CASCADE} (looked in {folder!r}): "
                "the 5.x wheels dropped the Haar cascades. Install opencv-python-headless<5: "
                f"{INSTALL_HINT}"
            )
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise FaceToolsMissing(f"OpenCV could not read the Haar cascade {path}; reinstall it.")
        self._cv2 = cv2
        self._cascade = cascade
        self.min_face = min_face

    def detect(self, rgb: np.ndarray) -> list[Face]:
        arr = np.asarray(rgb)
        if arr.ndim == 2 and arr.dtype == np.uint8:
            grey = np.ascontiguousarray(arr)
        else:
            grey = self._cv2.cvtColor(as_rgb(arr), self._cv2.COLOR_RGB2GRAY)
        if min(grey.shape) < self.min_face:
            return []
        found = self._cascade.detectMultiScale(
            grey,
            scaleFactor=HAAR_SCALE_FACTOR,
            minNeighbors=HAAR_MIN_NEIGHBORS,
            minSize=(self.min_face, self.min_face),
        )
        faces = [
            Face(box=(float(x), float(y), float(x + w), float(y + h)), score=None)
            for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist()
        ]
        return _sorted(faces)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self.detect(im) for im in images]


# --------------------------------------------------------------------------- mtcnn


def _import_facenet() -> tuple[Any, Any]:
    """(facenet_pytorch's mtcnn module, its detect_face function) or ``FaceToolsMissing``."""
    try:
        from facenet_pytorch.models import mtcnn as nets
        from facenet_pytorch.models.utils.detect_face import detect_face
    except ImportError as e:
        raise FaceToolsMissing(
            f"The mtcnn face detector needs facenet-pytorch==2.5.3, which is not installed or "
            f"cannot be imported ({e}). Install the face extra: {INSTALL_HINT}"
        ) from e
    return nets, detect_face


def load_mtcnn_nets(device: Any) -> tuple[Any, Any, Any]:
    """facenet-pytorch's P-, R- and O-nets with the weights its wheel ships, loaded safely.

    facenet-pytorch's own constructors call ``torch.load(path)`` without ``weights_only``,
    which is safe only while torch's default stays ``weights_only=True`` (an environment
    variable can turn it off). So the nets are built empty and their files are read here as
    plain tensor state dicts with ``weights_only=True``: nothing in them can run code, and
    nothing is downloaded.
    """
    import torch

    nets, _ = _import_facenet()
    folder = os.path.join(os.path.dirname(nets.__file__), os.pardir, "data")
    out = []
    for cls, stem in ((nets.PNet, "pnet"), (nets.RNet, "rnet"), (nets.ONet, "onet")):
        path = os.path.normpath(os.path.join(folder, f"{stem}.pt"))
        if not os.path.isfile(path):
            raise FaceToolsMissing(
                f"facenet-pytorch's MTCNN weights {path} are missing; reinstall it: {INSTALL_HINT}"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise FaceToolsMissing(
                f"{path} is not a state dict of tensors; reinstall facenet-pytorch."
            )
        net = cls(pretrained=False)
        net.load_state_dict(state, strict=True)
        out.append(net.to(device).eval())
    return out[0], out[1], out[2]


class MTCNNDetector:
    """facenet-pytorch's MTCNN (``detect_face``, as ``MTCNN(keep_all=True).detect(...,
    landmarks=True)`` runs it) with safely loaded weights; batched over same-sized images."""

    name = "mtcnn"

    def __init__(self, min_face: int, device: str | None, score_threshold: float) -> None:
        from ferlab.device import pick_device  # lazy: torch

        _, self._detect_face = _import_facenet()
        try:
            self.device = pick_device(device or "auto", setting="the mtcnn detector's device")
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.pnet, self.rnet, self.onet = load_mtcnn_nets(self.device)
        self.min_face = min_face
        self.score_threshold = score_threshold

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detect_batch([rgb])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image; images of one size are detected together (MTCNN's batch mode)."""
        rgbs = [as_rgb(im) for im in images]
        out: list[list[Face]] = [[] for _ in rgbs]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(rgbs):
            if min(im.shape[:2]) >= self.min_face:  # smaller: no pyramid level, no face
                by_shape.setdefault(im.shape, []).append(i)
        for indices in by_shape.values():
            for s in range(0, len(indices), MTCNN_BATCH):
                part = indices[s : s + MTCNN_BATCH]
                for i, faces in zip(
                    part, self._run(np.stack([rgbs[i] for i in part])), strict=True
                ):
                    out[i] = faces
        return out

    def _run(self, batch: np.ndarray) -> list[list[Face]]:
        import torch

        with torch.inference_mode():
            boxes, points = self._detect_face(
                batch,
                self.min_face,
                self.pnet,
                self.rnet,
                self.onet,
                list(MTCNN_THRESHOLDS),
                MTCNN_FACTOR,
                self.device,
            )
        result = []
        for b, p in zip(boxes, points, strict=True):
            b = np.asarray(b, dtype=np.float64).reshape(-1, 5)  # x0, y0, x1, y1, score
            p = np.asarray(p, dtype=np.float64).reshape(-1, 5, 2)
            faces = [
                Face(
                    box=(float(x0), float(y0), float(x1), float(y1)),
                    score=float(score),
                    landmarks=tuple((float(x), float(y)) for x, y in marks),
                )
                for (x0, y0, x1, y1, score), marks in zip(b.tolist(), p.tolist(), strict=True)
                if score >= self.score_threshold
            ]
            result.append(_sorted(faces))
        return result


def _whole(min_face: int, device: str | None, score_threshold: float) -> Detector:
    return WholeImage()


def _haar(min_face: int, device: str | None, score_threshold: float) -> Detector:
    return HaarDetector(min_face)


def _mtcnn(min_face: int, device: str | None, score_threshold: float) -> Detector:
    return MTCNNDetector(min_face, device, score_threshold)


_BUILDERS: dict[str, Callable[[int, str | None, float], Detector]] = {
    "haar": _haar,
    "mtcnn": _mtcnn,
    "none": _whole,
}

_LIBRARIES: dict[str, Callable[[], Any]] = {"haar": import_cv2, "mtcnn": _import_facenet}


def detector_available(name: str) -> bool:
    """Whether the library the detector ``name`` needs imports (``none`` needs none)."""
    try:
        _LIBRARIES.get(name, lambda: None)()
    except FaceToolsMissing:
        return False
    return True
