"""Face detection on real photographs: recall and precision of each detector against ExpW's boxes.

    python bench/detect.py                              # haar and mtcnn on all of expw-origin
    python bench/detect.py --detectors haar --limit 50 --json

Data: ``../shared/datasets/expw-origin`` (``--root``): the photographs in ``origin/`` and
``label.lst``, whose rows are ``image_name face_id top left right bottom confidence label``.
Each annotated box (clipped to its photo, as ferlab's ExpW adapter does) is a ground-truth face.

Protocol: every photo is read once (ferlab's ``open_image`` guards, EXIF orientation applied),
then each detector runs on the (H, W, 3) RGB array, timed alone (detection only; the read is
timed separately). Detections are matched one-to-one to the annotated boxes, greedily by IoU
(highest first); a match at IoU >= ``--iou`` (0.5) is a true positive. ``recall`` = matched
boxes / annotated boxes, ``precision`` = matched detections / all detections. ExpW annotates
the faces it labels, not always every face in a photo, so a correct detection of an unannotated
face counts against precision: read precision as a lower bound.

``bench/predict.py`` reuses ``detection_scores(detector_name, root)``, ``read_label_lst`` and
``match``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, emit, log, now_iso, rnd

DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "datasets" / "expw-origin"
Box = tuple[float, float, float, float]


def read_label_lst(root: str | Path) -> dict[str, list[Box]]:
    """Annotated face boxes (x0, y0, x1, y1) per photo file name, from ``root/label.lst``."""
    path = Path(root) / "label.lst"
    if not path.is_file():
        raise SystemExit(f"{path} not found: expected ExpW's label.lst beside origin/ (--root).")
    faces: dict[str, list[Box]] = defaultdict(list)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 8:
            raise SystemExit(f"{path}:{n}: expected 8 fields, got {len(fields)}: {line!r}")
        top, left, right, bottom = (float(v) for v in fields[2:6])
        faces[fields[0]].append((left, top, right, bottom))
    return dict(faces)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(
    detected: Sequence[Box], truth: Sequence[Box], threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """One-to-one (detection index, truth index, IoU) pairs at IoU >= ``threshold``, greedily
    from the highest IoU."""
    pairs = sorted(
        ((iou(d, t), i, j) for i, d in enumerate(detected) for j, t in enumerate(truth)),
        reverse=True,
    )
    used_d: set[int] = set()
    used_t: set[int] = set()
    out = []
    for score, i, j in pairs:
        if score < threshold:
            break
        if i in used_d or j in used_t:
            continue
        used_d.add(i)
        used_t.add(j)
        out.append((i, j, score))
    return out


def clip(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))


def read_photo(path: Path) -> Any:
    """The photo as an (H, W, 3) uint8 RGB array, upright, through ferlab's image guards."""
    import numpy as np
    from PIL import ImageOps

    from ferlab.data.decode import open_image

    with open_image(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def load_photos(
    root: str | Path, limit: int | None = None
) -> list[tuple[str, Any, list[Box], float]]:
    """(name, RGB array, clipped truth boxes, read seconds) per annotated photo, in name order."""
    root = Path(root)
    faces = read_label_lst(root)
    names = sorted(faces)[:limit] if limit else sorted(faces)
    out = []
    for name in names:
        t0 = time.perf_counter()
        rgb = read_photo(root / "origin" / name)
        read_s = time.perf_counter() - t0
        h, w = rgb.shape[:2]
        truth = [clip(b, w, h) for b in faces[name]]
        out.append((name, rgb, [b for b in truth if b[2] > b[0] and b[3] > b[1]], read_s))
    return out


def detection_scores(
    detector_name: str,
    root: str | Path = DEFAULT_ROOT,
    *,
    limit: int | None = None,
    min_face: int = 20,
    iou_threshold: float = 0.5,
    photos: list[tuple[str, Any, list[Box], float]] | None = None,
) -> dict[str, Any]:
    """Recall, precision and time per photo of ``detector_name`` on ExpW's annotated photos.

    ``photos`` (from ``load_photos``) lets several detectors share one read of the data.
    """
    from ferlab.face import make_detector

    photos = photos if photos is not None else load_photos(root, limit)
    t0 = time.perf_counter()
    detector = make_detector(detector_name, min_face=min_face, device="cpu")
    init_s = time.perf_counter() - t0
    if photos:
        detector.detect(photos[0][1])  # warm-up (first-call allocations), not timed
    n_truth = n_det = tp = 0
    ious: list[float] = []
    times: list[float] = []
    per_photo = []
    for name, rgb, truth, _ in photos:
        t0 = time.perf_counter()
        faces = detector.detect(rgb)
        times.append(time.perf_counter() - t0)
        pairs = match([f.box for f in faces], truth, iou_threshold)
        n_truth += len(truth)
        n_det += len(faces)
        tp += len(pairs)
        ious += [s for _, _, s in pairs]
        per_photo.append(
            {"photo": name, "truth": len(truth), "found": len(faces), "matched": len(pairs)}
        )
    pixels = [rgb.shape[0] * rgb.shape[1] for _, rgb, _, _ in photos]
    return {
        "detector": detector_name,
        "photos": len(photos),
        "annotated_faces": n_truth,
        "detections": n_det,
        "matched": tp,
        "recall": rnd(tp / n_truth if n_truth else None, 4),
        "precision": rnd(tp / n_det if n_det else None, 4),
        "mean_iou_matched": rnd(statistics.fmean(ious) if ious else None, 4),
        "ms_per_photo_mean": rnd(1000 * statistics.fmean(times) if times else None, 1),
        "ms_per_photo_median": rnd(1000 * statistics.median(times) if times else None, 1),
        "megapixels_median": rnd(statistics.median(pixels) / 1e6 if pixels else None, 3),
        "init_s": rnd(init_s, 2),
        "iou_threshold": iou_threshold,
        "min_face": min_face,
        "per_photo": per_photo,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--root", default=str(DEFAULT_ROOT), help="expw-origin folder (origin/ + label.lst)"
    )
    ap.add_argument(
        "--detectors", nargs="+", default=["haar", "mtcnn"], choices=["haar", "mtcnn", "none"]
    )
    ap.add_argument(
        "--limit", type=int, default=None, help="first N annotated photos only (a smoke run)"
    )
    ap.add_argument("--min-face", type=int, default=20)
    ap.add_argument("--iou", type=float, default=0.5, help="IoU for a detection to match a box")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--per-photo", action="store_true", help="keep the per-photo rows in the JSON")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.root).expanduser().resolve()
    log(f"reading the annotated photos in {root}")
    photos = load_photos(root, args.limit)
    read_ms = statistics.fmean(r for *_, r in photos) * 1000 if photos else None
    results = []
    for name in args.detectors:
        log(f"detecting with {name} on {len(photos)} photos")
        res = detection_scores(
            name, root, min_face=args.min_face, iou_threshold=args.iou, photos=photos
        )
        if not args.per_photo:
            res.pop("per_photo")
        results.append(res)
    summary = {
        "benchmark": "detect",
        "date": now_iso(),
        "root": str(root),
        "torch_threads": torch.get_num_threads(),
        "read_ms_per_photo_mean": rnd(read_ms, 1),
        "detectors": results,
    }
    table = "\n".join(
        f"{r['detector']:>6}: recall {r['recall']}  precision {r['precision']}  "
        f"({r['matched']}/{r['annotated_faces']} boxes, {r['detections']} detections)  "
        f"{r['ms_per_photo_mean']} ms/photo"
        for r in results
    )
    emit(summary, as_json=args.json, table=table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
