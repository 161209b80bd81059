"""ferlab.face: detectors (haar, mtcnn, none) on real faces pasted on a canvas, and crop_face."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from conftest import shared_dataset
from ferlab.config import ConfigError
from ferlab.face import (
    DETECTORS,
    Face,
    FaceToolsMissing,
    crop_face,
    largest_face,
    make_detector,
)

# Two 160 px ExpW crops (their label.lst boxes) that haar finds at IoU >= 0.78 wherever they
# are pasted on the canvas (48 positions tried), and MTCNN too.
FACE_FILES = ("angry/angry_black_58_0.jpg", "angry/angry_husband_64_0.jpg")


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def real_faces() -> list[np.ndarray]:
    root = shared_dataset("expw/Expw-F")
    paths = [root / f for f in FACE_FILES]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"the ExpW crops {FACE_FILES} are not in {root}")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def canvas_with(faces: list[np.ndarray], corners: list[tuple[int, int]]) -> tuple[np.ndarray, list]:
    """A grey 320 x 480 canvas with each face pasted at (x, y); returns it and the pasted boxes."""
    canvas = np.full((320, 480, 3), 128, dtype=np.uint8)
    boxes = []
    for face, (x, y) in zip(faces, corners, strict=True):
        h, w = face.shape[:2]
        canvas[y : y + h, x : x + w] = face
        boxes.append((x, y, x + w, y + h))
    return canvas, boxes


def assert_found(found: list[Face], pasted: list[tuple[int, int, int, int]]) -> None:
    """One detection per pasted face, each overlapping it at IoU >= 0.5."""
    assert len(found) == len(pasted), found
    for box in pasted:
        best = max(iou(f.box, box) for f in found)
        assert best >= 0.5, (box, [f.box for f in found])


# --------------------------------------------------------------------------- no data needed


def test_none_is_one_face_covering_the_image() -> None:
    det = make_detector("none")
    img = np.zeros((30, 50, 3), dtype=np.uint8)
    assert det.name == "none"
    assert det.detect(img) == [Face(box=(0.0, 0.0, 50.0, 30.0), score=None, landmarks=None)]
    assert [len(f) for f in det.detect_batch([img, img[:10]])] == [1, 1]
    assert det.detect_batch([img, img[:10]])[1][0].box == (0.0, 0.0, 50.0, 10.0)


def test_unknown_detector_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'haar'") as e:
        make_detector("hair")
    for name in DETECTORS:
        assert name in str(e.value)
    with pytest.raises(ConfigError, match="min_face"):
        make_detector("haar", min_face=0)


def test_missing_libraries_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now fails
    with pytest.raises(FaceToolsMissing, match=r"pip install 'ferlab\[face\]'"):
        make_detector("haar")
    for name in ["facenet_pytorch", *[m for m in sys.modules if m.startswith("facenet_pytorch.")]]:
        monkeypatch.setitem(sys.modules, name, None)  # also when another test imported it
    with pytest.raises(FaceToolsMissing, match=r"facenet-pytorch.*pip install 'ferlab\[face\]'"):
        make_detector("mtcnn", device="cpu")
    assert issubclass(FaceToolsMissing, ConfigError)  # the CLI prints it, exit 2


def test_import_is_light() -> None:
    code = (
        "import sys, ferlab.face; "
        "print([m for m in ('cv2', 'torch', 'facenet_pytorch') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_haar_finds_nothing_in_a_blank_or_tiny_image() -> None:
    det = make_detector("haar", min_face=24)
    assert det.detect(np.full((200, 300, 3), 90, dtype=np.uint8)) == []
    assert det.detect(np.zeros((10, 10), dtype=np.uint8)) == []  # smaller than min_face


def test_largest_face() -> None:
    small = Face((0, 0, 10, 10), None)
    big = Face((5, 5, 40, 30), 0.95)
    assert largest_face([small, big, small]) is big
    assert largest_face([]) is None


def coords_image(h: int = 100, w: int = 120) -> np.ndarray:
    """Channel 0 = x, channel 1 = y: every pixel says where it came from."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs, ys, np.zeros_like(xs)], axis=2).astype(np.uint8)


def test_crop_grows_by_the_margin_on_each_side() -> None:
    img = coords_image()
    out = crop_face(img, Face((40, 30, 60, 50), None), margin=0.5)  # 20 px box, 10 px each side
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert (out[0, 0, 0], out[0, 0, 1]) == (30, 20)
    assert (out[-1, -1, 0], out[-1, -1, 1]) == (69, 59)
    assert np.array_equal(out, img[20:60, 30:70])


def test_crop_is_square_around_the_centre_or_not() -> None:
    img = coords_image()
    box = Face((40, 20, 60, 60), None)  # 20 wide, 40 tall, centre (50, 40)
    sq = crop_face(img, box, margin=0.0)
    assert sq.shape == (40, 40, 3)
    assert np.array_equal(sq, img[20:60, 30:70])
    tall = crop_face(img, box, margin=0.0, square=False)
    assert tall.shape == (40, 20, 3) and np.array_equal(tall, img[20:60, 40:60])


def test_crop_past_the_border_pads_with_edge_pixels() -> None:
    img = coords_image()
    out = crop_face(img, Face((-10, -20, 20, 10), None), margin=0.0)  # 30 px, off the corner
    assert out.shape == (30, 30, 3)
    assert np.array_equal(out[20:, 10:], img[0:10, 0:20])  # the part inside the image
    assert np.all(out[:20, 10:] == img[0:1, 0:20])  # rows above: the first row repeated
    assert np.all(out[20:, :10] == img[0:10, 0:1])  # columns left: the first column repeated
    assert np.all(out[:20, :10] == img[0, 0])
    grey = crop_face(img[:, :, 0], Face((100, 80, 130, 110), None), margin=0.0)
    assert grey.shape == (30, 30) and grey[-1, -1] == 119  # (H, W) images work too


def test_crop_refuses_bad_boxes_and_margins() -> None:
    img = coords_image()
    with pytest.raises(ValueError, match="empty or inverted"):
        crop_face(img, Face((10, 10, 10, 30), None))
    with pytest.raises(ValueError, match="margin"):
        crop_face(img, Face((10, 10, 20, 30), None), margin=-0.1)


def two_eyes(angle_deg: float) -> tuple[np.ndarray, Face]:
    """White image with two dark eyes 40 px apart on a line tilted by ``angle_deg``."""
    img = np.full((160, 160, 3), 255, dtype=np.uint8)
    mx, my = 80.0, 70.0
    a = math.radians(angle_deg)
    eyes = [
        (mx - 20 * math.cos(a), my - 20 * math.sin(a)),
        (mx + 20 * math.cos(a), my + 20 * math.sin(a)),
    ]
    ys, xs = np.mgrid[0:160, 0:160] + 0.5
    for ex, ey in eyes:
        img[(xs - ex) ** 2 + (ys - ey) ** 2 <= 16] = 0
    marks = (*eyes, (80.0, 90.0), (65.0, 105.0), (95.0, 105.0))
    return img, Face((40, 40, 120, 120), 0.99, marks)


def eye_centres(crop: np.ndarray) -> list[tuple[float, float]]:
    ys, xs = np.nonzero(crop[:, :, 0] < 128)
    left = xs < xs.mean()
    return [(xs[m].mean(), ys[m].mean()) for m in (left, ~left)]


def test_align_levels_the_eyes() -> None:
    img, face = two_eyes(25.0)
    plain = crop_face(img, face, margin=0.1)
    (lx, ly), (rx, ry) = eye_centres(plain)
    assert ry - ly > 10  # tilted before
    out = crop_face(img, face, margin=0.1, align=True)
    assert out.shape == plain.shape == (96, 96, 3)
    (lx, ly), (rx, ry) = eye_centres(out)
    assert abs(ry - ly) < 0.75
    assert math.hypot(rx - lx, ry - ly) == pytest.approx(40, abs=1.0)  # not rescaled


def test_align_without_landmarks_does_nothing() -> None:
    img, face = two_eyes(25.0)
    bare = Face(face.box, None, None)
    assert np.array_equal(crop_face(img, bare, align=True), crop_face(img, bare))


# --------------------------------------------------------------------------- real faces


@pytest.mark.realdata
def test_haar_counts_and_places_real_faces() -> None:
    a, b = real_faces()
    det = make_detector("haar")
    one, [box] = canvas_with([a], [(60, 90)])
    assert_found(det.detect(one), [box])
    two, boxes = canvas_with([a, b], [(40, 30), (300, 150)])
    found = det.detect(two)
    assert_found(found, boxes)
    assert found[0].area >= found[1].area  # largest first
    assert all(f.score is None and f.landmarks is None for f in found)
    assert det.detect(np.full((320, 480, 3), 128, dtype=np.uint8)) == []


@pytest.mark.realdata
@pytest.mark.slow
def test_mtcnn_counts_places_and_scores_real_faces() -> None:
    a, b = real_faces()
    det = make_detector("mtcnn", device="cpu")
    one, [box] = canvas_with([a], [(60, 90)])
    two, boxes = canvas_with([a, b], [(40, 30), (300, 150)])
    blank = np.full((320, 480, 3), 128, dtype=np.uint8)
    # same-sized images go through MTCNN together; the batch agrees with one-by-one detection
    batch = det.detect_batch([one, two, blank, one[:270, :260]])
    assert_found(batch[0], [box])
    assert_found(batch[1], boxes)
    assert batch[2] == []
    assert_found(batch[3], [box])
    alone = [c for f in det.detect(two) for c in f.box]
    assert alone == pytest.approx([c for f in batch[1] for c in f.box], abs=0.5)
    for f in batch[1]:
        assert f.score is not None and f.score >= 0.9
        assert f.landmarks is not None and len(f.landmarks) == 5
        (lx, ly), (rx, ry) = f.landmarks[:2]
        x0, y0, x1, y1 = f.box
        assert x0 < lx < rx < x1 and y0 < ly < y1 and y0 < ry < y1  # eyes inside, left first
    strict = make_detector("mtcnn", device="cpu", score_threshold=1.0)
    assert strict.detect(two) == []
