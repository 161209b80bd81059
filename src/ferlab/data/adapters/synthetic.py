"""ferlab's built-in data: procedurally drawn faces whose expression shows in brows, eyes and mouth.

No download, any size, deterministic from a seed, in two visual domains:

- ``lab``: clean grayscale frontal faces on a plain background (think CK+ or JAFFE);
- ``wild``: colour skin tones, a random small rotation, scale and shift, a cluttered coloured
  background, a lighting gradient, sensor noise and now and then an occluder (think ExpW);
- ``mixed`` (or an empty domain): both, half and half within every class.

Each image is a function of ``(domain, seed)`` only. **The class is encoded in the seed**:
``seed % 8`` is the canonical label index (``ferlab.labels.CANONICAL``), so a record's
``draw=(domain, seed)`` is all ``render`` needs (see ``draw_seed`` and ``label_of_seed``).
Identity (face shape, eye spacing, skin tone, hair) and the intensity of the expression vary
per image, so the task is learnable but not trivial, and a model trained on ``lab`` meets a
real domain shift on ``wild``.

Drawing uses PIL polygons at 3x the requested size (2x above 64 px), shrunk with a box filter,
which anti-aliases the edges.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ferlab.data.adapters.utils import accept_options, check_options
from ferlab.data.base import DatasetError, DatasetIndex, Record, register_dataset
from ferlab.labels import CANONICAL, EMOTIONS, INDEX, UnknownLabelError, canonical_name

DOMAINS: tuple[str, ...] = ("lab", "wild")
_CLASS_SLOTS = 8  # seed = base * 8 + canonical label index
_SPLIT_BITS = 24  # each split owns 2**24 bases per dataset seed: split seeds never collide
_SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")
_DEFAULT_COUNTS: dict[str, int] = {"train": 1400, "val": 300, "test": 300}
OPTIONS = accept_options("synthetic", "n_train", "n_val", "n_test", "seed", "classes")


# --------------------------------------------------------------------------- seeds and labels


def draw_seed(base: int, label: int) -> int:
    """The render seed of image number ``base`` of canonical class index ``label``."""
    if not 0 <= label < len(CANONICAL):
        raise ValueError(f"label index {label} is outside 0..{len(CANONICAL) - 1}")
    if base < 0:
        raise ValueError(f"synthetic base seed must be >= 0, got {base}")
    return base * _CLASS_SLOTS + label


def label_of_seed(seed: int) -> int:
    """The canonical label index a render seed draws (its remainder modulo 8)."""
    return seed % _CLASS_SLOTS


# --------------------------------------------------------------------------- the adapter


def synthetic(root: str, **options: Any) -> DatasetIndex:
    """Index ferlab's synthetic faces; ``root`` names the domain: ``lab``, ``wild`` or ``mixed``.

    Options: ``n_train`` (1400), ``n_val`` (300), ``n_test`` (300), ``seed`` (0) and
    ``classes`` (the seven basic emotions; ``contempt`` may be added as an 8th). Every split
    is balanced over the classes (counts differ by at most one) and drawn from its own seed
    range, so no image appears in two splits.
    """
    check_options("synthetic", options)
    domain = _parse_domain(str(root))
    seed = _non_negative_int(options.get("seed", 0), "seed")
    labels = _parse_classes(options.get("classes"))
    counts = {
        split: _non_negative_int(options.get(f"n_{split}", default), f"n_{split}")
        for split, default in _DEFAULT_COUNTS.items()
    }
    if counts["train"] < len(labels):
        raise DatasetError(
            f"synthetic n_train={counts['train']} gives some class no training image; "
            f"use at least {len(labels)} (one per class)."
        )
    splits = {
        split: _split_records(domain, seed, _SPLIT_ORDER.index(split), n, labels)
        for split, n in counts.items()
        if n > 0
    }
    sizes = "/".join(f"{counts[s]}" for s in _SPLIT_ORDER)
    return DatasetIndex(
        name="synthetic",
        root=domain,
        labels=labels,
        splits=splits,
        protocol=(
            f"synthetic {domain} faces drawn from seed {seed}: train/val/test = {sizes} images "
            "from disjoint seed ranges, balanced over classes"
        ),
        color=domain != "lab",
    )


def _parse_domain(root: str) -> str:
    domain = root.strip().lower() or "mixed"
    if domain not in (*DOMAINS, "mixed"):
        raise DatasetError(
            f"Unknown synthetic domain {root!r}. Use synthetic:lab (clean grayscale), "
            "synthetic:wild (colour, cluttered) or synthetic:mixed (both)."
        )
    return domain


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"synthetic option {name}={value!r} must be a whole number >= 0.")
    return value


def _parse_classes(value: Any) -> list[str]:
    if value is None:
        return list(EMOTIONS)
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    try:
        names = {canonical_name(str(v), where="synthetic option classes") for v in value}
    except UnknownLabelError as err:
        raise DatasetError(str(err)) from err
    if len(names) < 2:
        raise DatasetError(f"synthetic option classes={value!r} needs at least two classes.")
    return [n for n in CANONICAL if n in names]


def _split_records(
    domain: str, seed: int, split_index: int, n: int, labels: list[str]
) -> list[Record]:
    """``n`` records cycling through the classes (and, for ``mixed``, through both domains)."""
    first = ((seed * 4 + split_index) << _SPLIT_BITS) * _CLASS_SLOTS
    if n > 1 << _SPLIT_BITS:
        raise DatasetError(f"synthetic splits hold at most {1 << _SPLIT_BITS} images, asked {n}.")
    records = []
    k = len(labels)
    for i in range(n):
        label = INDEX[labels[i % k]]
        d = domain if domain != "mixed" else DOMAINS[(i // k) % 2]
        s = first + i * _CLASS_SLOTS + label
        records.append(Record(path=f"synthetic:{d}", label=label, draw=(d, s)))
    return records


# --------------------------------------------------------------------------- expressions

# Deviations from the neutral face, at full intensity. Units: canvas half-widths (the canvas
# spans -1..1), ``eye`` and ``width`` are multipliers.
#   raise: both brows up (+) or down (-)        inner: inner brow ends up (+) or down-in (-)
#   eye: eye openness                           width: mouth width
#   curve: mouth corners up (+) or down (-)     open: mouth opening at the centre
#   smirk: one mouth corner up                  lip: upper lip raised on one side
#   wrinkle: nose wrinkles (0..1)               brow_asym: one brow higher than the other
_NEUTRAL: dict[str, float] = {
    "raise": 0.0,
    "inner": 0.0,
    "eye": 1.0,
    "width": 1.0,
    "curve": 0.0,
    "open": 0.0,
    "smirk": 0.0,
    "lip": 0.0,
    "wrinkle": 0.0,
    "brow_asym": 0.0,
}
_EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"raise": 0.02, "eye": 0.7, "width": 1.3, "curve": 0.15, "open": 0.1},
    "sad": {"inner": 0.1, "eye": 0.8, "width": 0.9, "curve": -0.13},
    "angry": {"raise": -0.08, "inner": -0.11, "eye": 0.75, "width": 0.75, "curve": -0.03},
    "surprise": {"raise": 0.15, "inner": 0.02, "eye": 1.6, "width": 0.6, "open": 0.28},
    "fear": {"raise": 0.12, "inner": 0.09, "eye": 1.5, "width": 1.25, "curve": -0.05, "open": 0.1},
    "disgust": {
        "raise": -0.05,
        "inner": -0.06,
        "eye": 0.65,
        "width": 0.9,
        "curve": -0.06,
        "open": 0.02,
        "lip": 0.1,
        "wrinkle": 1.0,
    },
    "contempt": {"eye": 0.9, "smirk": 0.13, "brow_asym": 0.04},
}
# Per-image noise on each parameter: people differ, so classes overlap a little.
_JITTER: dict[str, float] = {
    "raise": 0.02,
    "inner": 0.02,
    "eye": 0.1,
    "width": 0.08,
    "curve": 0.02,
    "open": 0.012,
    "smirk": 0.01,
    "lip": 0.01,
    "wrinkle": 0.0,
    "brow_asym": 0.01,
}


def _expression(label: int, rng: random.Random) -> dict[str, float]:
    """Expression parameters for a class at a random intensity, with per-image noise."""
    delta = _EXPRESSIONS[CANONICAL[label]]
    t = rng.uniform(0.5, 1.15)
    out = {}
    for key, base in _NEUTRAL.items():
        value = base + t * (delta.get(key, base) - base)
        out[key] = value + rng.gauss(0.0, _JITTER[key])
    out["open"] = max(0.0, out["open"])
    return out


# --------------------------------------------------------------------------- drawing

_CIRCLE = np.stack(
    [
        np.cos(np.linspace(0, 2 * np.pi, 28, endpoint=False)),
        np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False)),
    ],
    axis=1,
)  # (28, 2) unit circle
_S = np.linspace(-1.0, 1.0, 13)  # mouth samples along its width
_PROFILE = np.sqrt(np.clip(1.0 - _S**2, 0.0, None))  # opening along the mouth


@dataclass
class _Pen:
    """Maps face coordinates (canvas units, y down) to supersampled pixels and draws polygons."""

    draw: ImageDraw.ImageDraw
    matrix: np.ndarray  # (2, 2) rotation * scale, in pixels per canvas unit
    offset: np.ndarray  # (2,) pixel position of the face origin
    unit: float  # pixels per canvas unit (for line widths)

    def points(self, uv: np.ndarray) -> list[float]:
        xy = uv @ self.matrix.T + self.offset
        return list(xy.ravel().tolist())

    def ellipse(self, cu: float, cv: float, ru: float, rv: float, fill: Any) -> None:
        uv = _CIRCLE * (ru, rv) + (cu, cv)
        self.draw.polygon(self.points(uv), fill=fill)

    def polygon(self, uv: np.ndarray, fill: Any) -> None:
        self.draw.polygon(self.points(uv), fill=fill)

    def line(self, uv: np.ndarray, fill: Any, width: float) -> None:
        self.draw.line(
            self.points(uv), fill=fill, width=max(1, round(width * self.unit)), joint="curve"
        )


@dataclass
class _Palette:
    skin: Any
    feature: Any  # brows, lines, pupils
    sclera: Any
    mouth: Any
    lips: Any
    hair: Any


def render(domain: str, seed: int, size: int, channels: int) -> np.ndarray:
    """Draw one synthetic face: ``(size, size, channels)`` uint8, a pure function of its inputs.

    ``seed % 8`` is the canonical label index of the expression drawn (``label_of_seed``).
    """
    if domain not in DOMAINS:
        raise ValueError(f"synthetic domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    if size < 8:
        raise ValueError(f"synthetic image size must be >= 8 pixels, got {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if seed < 0:
        raise ValueError(f"synthetic seed must be >= 0, got {seed}")
    label = label_of_seed(seed)  # 8 slots for the 8 canonical classes
    rng = random.Random(seed)
    wild = domain == "wild"
    ss = 3 if size <= 64 else 2
    big = size * ss
    palette = _wild_palette(rng) if wild else _lab_palette(rng)
    if wild:
        background = _wild_background(rng, big)
    else:
        background = Image.new("L", (big, big), _grey(rng, 25, 95))  # plain backdrop
    draw = ImageDraw.Draw(background)
    pen = _pen(draw, rng, big, wild)
    _draw_face(pen, rng, palette, _expression(label, rng))
    if wild and rng.random() < 0.3:
        _draw_occluder(pen, rng)
    small = background.reduce(ss)
    image = np.asarray(small)
    if wild:
        image = _wild_finish(image, rng)
    return _to_channels(image, channels)


def _grey(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def _colour(rng: random.Random, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


def _lab_palette(rng: random.Random) -> _Palette:
    skin = _grey(rng, 150, 215)
    return _Palette(
        skin=skin,
        feature=_grey(rng, 15, 60),
        sclera=min(255, skin + rng.randint(25, 45)),
        mouth=_grey(rng, 10, 45),
        lips=max(0, skin - rng.randint(50, 80)),
        hair=_grey(rng, 10, 110),
    )


# Skin tones from light to dark (sRGB), interpolated.
_SKIN = np.array([[246, 214, 190], [225, 180, 145], [190, 140, 100], [140, 95, 65], [95, 62, 45]])


def _wild_palette(rng: random.Random) -> _Palette:
    t = rng.random() * (len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    tone = _SKIN[i] + (t - i) * (_SKIN[i + 1] - _SKIN[i])
    skin = tuple(int(c + rng.randint(-12, 12)) for c in tone)
    lips = tuple(max(0, int(c * 0.65)) for c in (tone[0] * 1.05, tone[1] * 0.8, tone[2] * 0.8))
    return _Palette(
        skin=skin,
        feature=_colour(rng, 10, 60),
        sclera=(rng.randint(215, 250),) * 3,
        mouth=(rng.randint(30, 70), rng.randint(5, 25), rng.randint(5, 25)),
        lips=lips,
        hair=_colour(rng, 10, 140),
    )


def _wild_background(rng: random.Random, big: int) -> Image.Image:
    """A coloured background cluttered with random rectangles, ellipses and bars."""
    image = Image.new("RGB", (big, big), _colour(rng, 30, 230))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(4, 9)):
        x0, y0 = rng.uniform(-0.2, 1.0) * big, rng.uniform(-0.2, 1.0) * big
        w, h = rng.uniform(0.1, 0.6) * big, rng.uniform(0.1, 0.6) * big
        box = (x0, y0, x0 + w, y0 + h)
        kind = rng.random()
        if kind < 0.4:
            draw.rectangle(box, fill=_colour(rng))
        elif kind < 0.75:
            draw.ellipse(box, fill=_colour(rng))
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=_colour(rng), width=max(1, big // 30))
    return image


def _pen(draw: ImageDraw.ImageDraw, rng: random.Random, big: int, wild: bool) -> _Pen:
    """Pose: a frontal face for ``lab``; rotated, scaled and shifted for ``wild``."""
    half = big / 2.0
    if wild:
        angle = math.radians(rng.uniform(-18.0, 18.0))
        scale = rng.uniform(0.72, 1.02)
        shift = (rng.uniform(-0.15, 0.15), rng.uniform(-0.12, 0.12))
    else:
        angle = 0.0
        scale = rng.uniform(0.88, 0.98)
        shift = (rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03))
    c, s = math.cos(angle) * scale * half, math.sin(angle) * scale * half
    matrix = np.array([[c, -s], [s, c]])
    offset = np.array([half * (1 + shift[0]), half * (1 + shift[1] + 0.04)])
    return _Pen(draw=draw, matrix=matrix, offset=offset, unit=scale * half)


def _draw_face(pen: _Pen, rng: random.Random, p: _Palette, e: dict[str, float]) -> None:
    """Head, hair, eyes, brows, nose and mouth; left/right asymmetries on a random side."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    rx, ry = rng.uniform(0.56, 0.68), rng.uniform(0.74, 0.86)
    if rng.random() < 0.75:  # hair: a cap behind the top of the head
        pen.ellipse(0.0, -ry * rng.uniform(0.15, 0.3), rx * 1.1, ry * 0.85, p.hair)
    pen.ellipse(0.0, 0.0, rx, ry, p.skin)

    eye_gap = rng.uniform(0.23, 0.3) * rx / 0.62
    eye_v = rng.uniform(-0.2, -0.12)
    eye_w = rng.uniform(0.1, 0.13)
    eye_h = max(0.012, 0.055 * e["eye"])
    pupil = min(rng.uniform(0.038, 0.05), eye_h)
    brow_v = eye_v - rng.uniform(0.13, 0.17)
    for sgn in (-1.0, 1.0):
        u = sgn * eye_gap
        pen.ellipse(u, eye_v, eye_w, eye_h, p.sclera)
        pen.ellipse(u, eye_v, pupil, pupil * min(1.0, eye_h / pupil), p.feature)
        lift = e["raise"] + (e["brow_asym"] if sgn == side else 0.0)
        inner = (u - sgn * 0.12, brow_v - lift - e["inner"])
        middle = (u + sgn * 0.01, brow_v - lift - 0.5 * e["inner"] - 0.025)
        outer = (u + sgn * 0.15, brow_v - lift + 0.01 + 0.2 * e["inner"])
        pen.line(np.array([inner, middle, outer]), p.feature, 0.05)

    nose_v = rng.uniform(0.1, 0.16)
    pen.line(np.array([(0.0, eye_v + 0.04), (0.02, nose_v), (-0.04, nose_v + 0.01)]), p.lips, 0.025)
    if e["wrinkle"] > 0.5:  # disgust: wrinkled nose bridge
        for dv in (0.0, 0.05):
            pen.line(
                np.array([(-0.08, eye_v + 0.07 + dv), (0.08, eye_v + 0.09 + dv)]), p.feature, 0.02
            )
            pen.line(
                np.array([(-0.08, eye_v + 0.09 + dv), (0.08, eye_v + 0.07 + dv)]), p.feature, 0.02
            )
    _draw_mouth(pen, p, e, nose_v + rng.uniform(0.2, 0.26), side)


def _draw_mouth(pen: _Pen, p: _Palette, e: dict[str, float], mouth_v: float, side: float) -> None:
    """Mouth from its centre line (curve, smirk) and its opening (open, one-sided lip raise)."""
    half_w = 0.2 * max(0.3, e["width"])
    u = _S * half_w
    s_side = np.clip(_S * side, 0.0, None)  # 0 on one half, rising to 1 at the other corner
    centre = mouth_v - e["curve"] * _S**2 - e["smirk"] * s_side**2
    lip_raise = e["lip"] * 4.0 * s_side * (1.0 - s_side)
    upper = centre - 0.4 * e["open"] * _PROFILE - lip_raise
    lower = centre + 0.6 * e["open"] * _PROFILE
    if e["open"] + e["lip"] > 0.03:
        outline = np.concatenate([np.stack([u, upper], 1), np.stack([u, lower], 1)[::-1]])
        pen.polygon(outline, p.mouth)
        pen.line(np.stack([u, upper], 1), p.lips, 0.03)
        pen.line(np.stack([u, lower], 1), p.lips, 0.035)
    else:
        pen.line(np.stack([u, centre], 1), p.lips, 0.045)


def _draw_occluder(pen: _Pen, rng: random.Random) -> None:
    """A random blob over part of the face (a hand, a cup, a microphone)."""
    cu, cv = rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.7)
    pen.ellipse(cu, cv, rng.uniform(0.12, 0.28), rng.uniform(0.1, 0.25), _colour(rng))


def _wild_finish(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """Lighting gradient, colour cast and sensor noise on the final-size colour image."""
    size = image.shape[0]
    ramp = _ramp(size)
    gx, gy = rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.35)
    light = rng.uniform(0.8, 1.15) + gx * ramp[None, :] + gy * ramp[:, None]  # (H, W)
    tint = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], dtype=np.float32)
    bank = _noise_bank(max(192, 2 * size))
    top, left = rng.randrange(bank.shape[0] - size), rng.randrange(bank.shape[1] - size)
    noise = bank[top : top + size, left : left + size] * np.float32(rng.uniform(2.0, 10.0))
    out = image.astype(np.float32) * (light[:, :, None] * tint) + noise
    return np.clip(out, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _ramp(size: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, size, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _noise_bank(side: int) -> np.ndarray:
    """Fixed standard-normal noise (side, side, 3); images take random windows of it (fast)."""
    return np.random.default_rng(20240601).standard_normal((side, side, 3), dtype=np.float32)


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) grey or (H, W, 3) colour to (H, W, channels), using ITU-R 601 luma for grey."""
    if image.ndim == 2:
        grey = image[:, :, None]
        return np.ascontiguousarray(np.repeat(grey, 3, axis=2) if channels == 3 else grey)
    if channels == 3:
        return np.ascontiguousarray(image)
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]


__all__ = ["DOMAINS", "draw_seed", "label_of_seed", "render", "synthetic"]


register_dataset("synthetic", generated=True, render=render)(synthetic)
