"""``gallery.html`` of ``ferlab predict --annotate --out DIR``: one card per image with its
annotated copy (boxes and top labels drawn), and per face a thumbnail, the top label and a bar
per class; videos link their annotated copy and emotion-share plot.

The page is one file beside ``predictions.jsonl``: the face thumbnails are embedded (small
JPEGs), the annotated images and videos are linked relatively (``annotated/...``), so the
folder can be moved or zipped as a whole. Above ``MAX_IMAGES`` images the rest are counted,
not shown (the rows are all in the predictions file).
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from ferlab.layout import TEMPLATES_DIR, atomic_write
from ferlab.predict.engine import NO_FACE, OK, Item

GALLERY = "gallery.html"
MAX_IMAGES = 500  # cards on the page; the predictions file holds every row
THUMB = 96  # face thumbnail side in pixels


@dataclass
class FaceCard:
    thumb: str  # data: URI of a small JPEG ("" when it could not be encoded)
    label: str
    prob: float
    bars: list[tuple[str, float]]  # every class in the model's order


@dataclass
class ImageCard:
    file: str
    annotated: str  # relative to the gallery ("" when no copy was written)
    status: str
    faces: list[FaceCard] = field(default_factory=list)


@dataclass
class VideoCard:
    file: str
    annotated: str
    shares_png: str


class Gallery:
    """Collects the cards while ``predict`` runs; ``write`` renders the page."""

    def __init__(self, out_dir: Path, labels: list[str]) -> None:
        from ferlab.predict.media import import_cv2  # lazy: OpenCV

        self.cv2 = import_cv2()
        self.out_dir = out_dir
        self.labels = labels
        self.images: list[ImageCard] = []
        self.videos: list[VideoCard] = []
        self.hidden = 0  # images past MAX_IMAGES
        self.top = Counter[str]()

    def _thumb(self, rgb: np.ndarray, box: Any) -> str:
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            return ""
        face = rgb[y0:y1, x0:x1]
        side = max(face.shape[:2])
        scale = THUMB / side
        size = (max(1, round(face.shape[1] * scale)), max(1, round(face.shape[0] * scale)))
        small = self.cv2.resize(face, size, interpolation=self.cv2.INTER_AREA)
        ok, jpg = self.cv2.imencode(".jpg", self.cv2.cvtColor(small, self.cv2.COLOR_RGB2BGR))
        return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode() if ok else ""

    def add_image(self, item: Item, annotated: Path | None) -> None:
        """One image's card (call before its pixels are dropped)."""
        faces = []
        if item.status == OK and item.probs is not None:
            for face, p in zip(item.faces, item.probs, strict=True):
                k = int(np.argmax(p))
                self.top[self.labels[k]] += 1
                faces.append(
                    FaceCard(
                        thumb="" if item.rgb is None else self._thumb(item.rgb, face.box),
                        label=self.labels[k],
                        prob=float(p[k]),
                        bars=[(n, float(v)) for n, v in zip(self.labels, p, strict=True)],
                    )
                )
        if len(self.images) >= MAX_IMAGES:
            self.hidden += 1
            return
        rel = "" if annotated is None else annotated.relative_to(self.out_dir).as_posix()
        self.images.append(ImageCard(item.source.path, rel, item.status, faces))

    def add_video(self, file: str, annotated: Path | None, shares_png: Path | None) -> None:
        def rel(p: Path | None) -> str:
            return "" if p is None else p.relative_to(self.out_dir).as_posix()

        self.videos.append(VideoCard(file, rel(annotated), rel(shares_png)))

    def write(self, title: str, weights: str) -> Path:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        html = env.get_template(GALLERY).render(
            title=title,
            weights=weights,
            labels=self.labels,
            images=self.images,
            videos=self.videos,
            hidden=self.hidden,
            faces=sum(self.top.values()),
            top=[(n, self.top[n]) for n in self.labels if self.top[n]],
            no_face=sum(1 for c in self.images if c.status == NO_FACE),
        )
        return atomic_write(self.out_dir / GALLERY, html)
