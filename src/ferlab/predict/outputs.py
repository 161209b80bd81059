"""What ``ferlab predict`` writes: rows (JSON lines or CSV), per-video emotion shares, annotation.

One row per face::

    file, frame, timestamp_s   frame index and time in a video (None/empty for an image)
    face                       index of the face in its image or frame (None without a face)
    status, error              ok | no_face | error, and the reason of an error
    box                        x0, y0, x1, y1 in pixels of the image (CSV: four columns)
    score, landmarks           detector confidence and MTCNN's five points, when it gives them
    label, probs               the most probable emotion and the probability of every class
                               (CSV: one ``prob_<label>`` column each)

An image without a face, a video frame without one, and an unreadable file each give one row
that says so.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ferlab.layout import safe_name
from ferlab.predict.backends import label_columns
from ferlab.predict.engine import ERROR, NO_FACE, OK, Item, SourceDone
from ferlab.predict.media import import_cv2

FORMATS = ("jsonl", "csv")
PREDICTIONS = "predictions"  # predictions.jsonl / predictions.csv in --out
SUMMARY = "summary.json"
ANNOTATED = "annotated"  # folder of annotated copies in --out
VIDEOS = "videos"  # folder of per-video emotion shares in --out
SHARE_BIN_S = 1.0  # width of a time bin of the per-video emotion shares
FIXED_COLUMNS = ["file", "frame", "timestamp_s", "face", "status", "error"]
BOX_COLUMNS = ["x0", "y0", "x1", "y1"]
_WRITABLE_IMAGES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _num(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def rows_of(item: Item, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The output rows of one image or frame (see the module docstring)."""
    base: dict[str, Any] = {
        "file": item.source.path,
        "frame": item.frame,
        "timestamp_s": _num(item.timestamp_s, 4),
    }
    empty: dict[str, Any] = {
        "face": None,
        "box": None,
        "score": None,
        "landmarks": None,
        "label": None,
        "probs": None,
    }
    if item.status == ERROR:
        return [{**base, "status": ERROR, "error": item.error, **empty}]
    if not item.faces or item.probs is None:
        return [{**base, "status": NO_FACE, "error": None, **empty}]
    rows = []
    for i, (face, p) in enumerate(zip(item.faces, item.probs, strict=True)):
        rows.append(
            {
                **base,
                "face": i,
                "status": OK,
                "error": None,
                "box": [_num(v, 2) for v in face.box],
                "score": _num(face.score, 5),
                "landmarks": None
                if face.landmarks is None
                else [[_num(x, 2), _num(y, 2)] for x, y in face.landmarks],
                "label": labels[int(np.argmax(p))],
                "probs": {name: _num(v, 12) for name, v in zip(labels, p, strict=True)},
            }
        )
    return rows


class RowWriter:
    """Rows to a JSON-lines or CSV stream."""

    def __init__(self, stream: IO[str], fmt: str, labels: Sequence[str]) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.labels = list(labels)
        self.rows = 0
        self._csv: csv.DictWriter[str] | None = None
        if fmt == "csv":
            columns = [*FIXED_COLUMNS, *BOX_COLUMNS, "score", "landmarks", "label"]
            self._csv = csv.DictWriter(stream, fieldnames=columns + label_columns(self.labels))
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if self._csv is None:
            self.stream.write(json.dumps(row, allow_nan=False) + "\n")
            return
        flat = {k: ("" if row[k] is None else row[k]) for k in FIXED_COLUMNS}
        box = row["box"] or [None] * 4
        flat.update({k: ("" if v is None else v) for k, v in zip(BOX_COLUMNS, box, strict=True)})
        flat["score"] = "" if row["score"] is None else row["score"]
        flat["landmarks"] = "" if row["landmarks"] is None else json.dumps(row["landmarks"])
        flat["label"] = row["label"] or ""
        probs = row["probs"] or {}
        for name, col in zip(self.labels, label_columns(self.labels), strict=True):
            flat[col] = probs.get(name, "")
        self._csv.writerow(flat)


class OutputNames:
    """File-name-safe relative paths for per-file outputs, unique within one run."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def get(self, name: str, suffix: str) -> str:
        parts = [safe_name(p) for p in Path(name).parts[:-1]]
        stem = safe_name(Path(name).stem)
        base = "/".join([*parts, stem])
        candidate, n = base + suffix, 1
        while candidate.lower() in self._used:
            n += 1
            candidate = f"{base}_{n}{suffix}"
        self._used.add(candidate.lower())
        return candidate


# ------------------------------------------------------------------------------ video shares


class EmotionShares:
    """The share of each predicted emotion among a video's faces, per ``bin_s`` seconds.

    Only the counts per bin are kept (one small row per bin), so memory stays small however
    long the video is.
    """

    def __init__(self, labels: Sequence[str], bin_s: float = SHARE_BIN_S) -> None:
        self.labels = list(labels)
        self.bin_s = bin_s
        self._bins: dict[int, np.ndarray] = {}  # bin -> [frames, faces, count per label]

    def add(self, item: Item) -> None:
        b = math.floor((item.timestamp_s or 0.0) / self.bin_s)
        counts = self._bins.setdefault(b, np.zeros(2 + len(self.labels), dtype=np.int64))
        counts[0] += 1
        if item.status == OK and item.probs is not None:
            counts[1] += len(item.probs)
            for k in np.argmax(item.probs, axis=1):
                counts[2 + int(k)] += 1

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for b in sorted(self._bins):
            c = self._bins[b]
            row: dict[str, Any] = {
                "start_s": round(b * self.bin_s, 4),
                "end_s": round((b + 1) * self.bin_s, 4),
                "frames": int(c[0]),
                "faces": int(c[1]),
            }
            for k, name in enumerate(self.labels):
                row[name] = round(float(c[2 + k]) / c[1], 6) if c[1] else None
            rows.append(row)
        return rows

    def write(self, csv_path: Path, png_path: Path, title: str) -> tuple[Path, Path]:
        rows = self.table()
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["start_s", "end_s", "frames", "faces", *self.labels])
            w.writeheader()
            for row in rows:
                w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        _plot_shares(rows, self.labels, png_path, title)
        return csv_path, png_path


def _plot_shares(rows: list[dict[str, Any]], labels: list[str], path: Path, title: str) -> None:
    from ferlab.reporting import plots  # lazy: matplotlib

    plt = plots.plt
    t = np.array([(r["start_s"] + r["end_s"]) / 2 for r in rows], dtype=float)
    shares = np.array([[r[n] or 0.0 for r in rows] for n in labels], dtype=float)  # (K, T)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    colours = [plt.get_cmap("tab10")(k % 10) for k in range(len(labels))]
    if len(t) == 1:  # a one-bin video: bars, a stack of zero width would not show
        bottom = 0.0
        for k, name in enumerate(labels):
            ax.bar([t[0]], [shares[k, 0]], bottom=bottom, width=1.0, label=name, color=colours[k])
            bottom += shares[k, 0]
    else:
        ax.stackplot(t, shares, labels=labels, colors=colours, step="mid")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("share of faces")
    ax.set_ylim(0, 1)
    ax.set_title(plots.plain_text(title))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    plots.save_figure(fig, path)


# ------------------------------------------------------------------------------ annotation


class Annotator:
    """Copies of the inputs with every face's box and label drawn (OpenCV)."""

    def __init__(self, folder: Path, labels: Sequence[str]) -> None:
        self.cv2 = import_cv2()
        self.folder = folder
        self.labels = list(labels)
        self._video: Any = None  # cv2.VideoWriter of the video being written
        self._video_path: Path | None = None
        self._frame_hw: tuple[int, int] = (0, 0)
        self._video_failed = False

    def _draw(self, item: Item) -> np.ndarray:
        cv2 = self.cv2
        assert item.rgb is not None
        bgr = cv2.cvtColor(item.rgb, cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        thick = max(1, round(min(h, w) / 300))
        scale = max(0.4, min(h, w) / 800)
        if item.status == OK and item.probs is not None:
            for face, p in zip(item.faces, item.probs, strict=True):
                x0, y0, x1, y1 = (round(v) for v in face.box)
                k = int(np.argmax(p))
                cv2.rectangle(bgr, (x0, y0), (x1, y1), (0, 255, 0), thick)
                if face.landmarks is not None:
                    for x, y in face.landmarks:
                        cv2.circle(bgr, (round(x), round(y)), thick + 1, (0, 200, 255), -1)
                text = f"{self.labels[k]} {float(p[k]):.2f}"
                (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
                ty = y0 - base - 2 if y0 - th - base - 2 >= 0 else y1 + th + 2
                cv2.rectangle(bgr, (x0, ty - th - 2), (x0 + tw + 2, ty + base), (0, 255, 0), -1)
                cv2.putText(
                    bgr, text, (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick
                )
        elif item.status == NO_FACE:
            cv2.putText(
                bgr, "no face", (5, int(20 * scale) + 5), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 255), thick,
            )  # fmt: skip
        return bgr

    def image(self, item: Item, rel: str) -> Path | None:
        """Write the annotated copy of an image as ``folder/rel``; None when it failed."""
        if item.rgb is None:
            return None
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path if self.cv2.imwrite(str(path), self._draw(item)) else None

    def frame(self, item: Item, rel_stem: str, fps: float) -> None:
        """Append an annotated frame to the video being written (opened at its first frame)."""
        if item.rgb is None:
            return
        cv2 = self.cv2
        bgr = self._draw(item)
        if self._video is None:
            if self._video_failed:
                return
            h, w = bgr.shape[:2]
            for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
                path = self.folder / f"{rel_stem}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
                if writer.isOpened():
                    self._video, self._video_path, self._frame_hw = writer, path, (h, w)
                    break
                writer.release()
            if self._video is None:
                self._video_failed = True
                return
        if bgr.shape[:2] != self._frame_hw:  # a stream that changes size mid-way
            bgr = cv2.resize(bgr, (self._frame_hw[1], self._frame_hw[0]))
        self._video.write(bgr)

    def close_video(self) -> Path | None:
        """Finish the video being written; its path (None when none was written)."""
        path = self._video_path
        if self._video is not None:
            self._video.release()
        self._video, self._video_path = None, None
        self._video_failed = False
        return path


def annotated_name(names: OutputNames, done: SourceDone | Item) -> str:
    """The relative output name of an annotated image (same format when OpenCV writes it)."""
    src = done.source
    suffix = Path(src.path).suffix.lower()
    return names.get(src.name, suffix if suffix in _WRITABLE_IMAGES else ".png")
