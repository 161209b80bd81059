"""Cut a detected face out of an image in one framing: margin, square, edge padding, alignment.

The box is grown by ``margin`` of its width and height on every side, then (``square=True``)
widened to a square around its centre, so faces from any detector and any dataset get the same
framing. Where that region runs past the image, the edge pixels are repeated rather than the
crop shrunk or shifted: the face stays centred and its scale does not depend on where it sits
in the photo. The crop keeps the image's resolution (the caller resizes).

``align=True`` uses the first two landmarks (the eyes, MTCNN's) to rotate about the eyes'
midpoint so that the eyes are level, then crops the same framing in the rotated image. A face
without landmarks (haar, none) is cropped unrotated: ``align`` then does nothing.
"""

from __future__ import annotations

import math

import numpy as np

from ferlab.defaults import FACE_MARGIN
from ferlab.face.detectors import Face

# Eyes closer to level than this (radians, about 0.06 degrees) are not rotated.
_LEVEL = 1e-3


def crop_face(
    rgb: np.ndarray,
    face: Face,
    *,
    margin: float = FACE_MARGIN,
    align: bool = False,
    square: bool = True,
) -> np.ndarray:
    """The face of ``face.box`` cut out of ``rgb`` ((H, W, C) or (H, W) uint8) as a uint8 crop.

    The box grown by ``margin`` of its size on each side, made square around its centre
    (``square``), edge-padded where it runs past the image; with ``align`` and landmarks,
    rotated about the eyes' midpoint so the eyes are level. Any size: the caller resizes.
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ValueError(
            f"crop_face takes an (H, W, C) or (H, W) uint8 image, got {arr.dtype} {arr.shape}"
        )
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be >= 0 (a fraction of the box size), got {margin!r}")
    x0, y0, x1, y1 = (float(v) for v in face.box)
    w, h = x1 - x0, y1 - y0
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        raise ValueError(f"face box (x0, y0, x1, y1) = {face.box} is empty or inverted")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw, bh = w * (1 + 2 * margin), h * (1 + 2 * margin)
    if square:
        bw = bh = max(bw, bh)
    out_w, out_h = max(1, round(bw)), max(1, round(bh))

    marks = face.landmarks
    if align and marks is not None and len(marks) >= 2:
        (lx, ly), (rx, ry) = marks[0], marks[1]
        angle = math.atan2(ry - ly, rx - lx)
        if abs(angle) > _LEVEL:
            return _rotated_crop(arr, (cx, cy), ((lx + rx) / 2, (ly + ry) / 2), angle, out_w, out_h)

    left = round(cx - out_w / 2)
    top = round(cy - out_h / 2)
    rows = np.clip(np.arange(top, top + out_h), 0, arr.shape[0] - 1)
    cols = np.clip(np.arange(left, left + out_w), 0, arr.shape[1] - 1)
    return np.ascontiguousarray(arr[np.ix_(rows, cols)])


def _rotated_crop(
    arr: np.ndarray,
    centre: tuple[float, float],
    eyes: tuple[float, float],
    angle: float,
    out_w: int,
    out_h: int,
) -> np.ndarray:
    """The (out_h, out_w) crop centred on the box centre in the image rotated by ``-angle``
    about ``eyes`` (so a line at ``angle`` becomes level); bilinear, edge pixels repeated."""
    cos, sin = math.cos(angle), math.sin(angle)
    mx, my = eyes
    # The box centre in the rotated (aligned) frame: R(-angle) (centre - eyes) + eyes.
    dx, dy = centre[0] - mx, centre[1] - my
    acx, acy = mx + cos * dx + sin * dy, my - sin * dx + cos * dy
    # Pixel centres of the crop in the aligned frame, mapped back: R(angle) (p - eyes) + eyes.
    u = acx - out_w / 2 + 0.5 + np.arange(out_w, dtype=np.float64)  # (out_w,)
    v = acy - out_h / 2 + 0.5 + np.arange(out_h, dtype=np.float64)  # (out_h,)
    du, dv = np.meshgrid(u - mx, v - my)  # (out_h, out_w) each
    src_x = mx + cos * du - sin * dv - 0.5  # in pixel-index units (centres at integers)
    src_y = my + sin * du + cos * dv - 0.5
    return _bilinear(arr, src_x, src_y)


def _bilinear(arr: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``arr`` sampled at float pixel positions (x, y), clipped to the image (edge repeat)."""
    h, w = arr.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    xa = np.floor(x).astype(np.int64)
    ya = np.floor(y).astype(np.int64)
    xb = np.minimum(xa + 1, w - 1)
    yb = np.minimum(ya + 1, h - 1)
    fx, fy = x - xa, y - ya
    if arr.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return arr[yy, xx].astype(np.float32)  # gather first: never a float copy of a photo

    top = at(ya, xa) * (1 - fx) + at(ya, xb) * fx
    bottom = at(yb, xa) * (1 - fx) + at(yb, xb) * fx
    out = top * (1 - fy) + bottom * fy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
