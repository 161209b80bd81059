"""``ferlab predict`` end to end on real photos and a video made from them.

    python bench/predict.py --weights RUN                 # photos, video, memory, accuracy
    python bench/predict.py --weights RUN --detectors haar --json
    python bench/predict.py --smoke                       # wiring check (numbers meaningless)

Data: the ExpW photographs of ``../shared/datasets/expw-origin`` (``origin/*.jpg`` and
``label.lst``: ``image_name face_id top left right bottom confidence label``, label 0 angry,
1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral). ``--weights`` is a FER2013-trained
run, needed for the accuracy part; make one with

    ferlab train --data fer2013:../shared/datasets/fer2013 --model ferlab_vgg --set train.epochs=3

Without ``--weights`` an untrained ``ferlab_vgg`` (same size and speed) is used and accuracy is
left out.

What each part measures (every number is wall-clock on this machine, one run):

photos      ``ferlab.predict.predict`` on every photo, per detector: faces per second end to
            end (reading, detection, crop, classification and writing the rows; model loading
            not included) and the seconds spent in each stage (``decode``: reading the file;
            ``detect``; ``crop``: the face module's crop/alignment and the data layer's resize;
            ``classify``: the model on batches of ``--batch-size`` faces).
accuracy    the detected faces whose box matches a ``label.lst`` box at IoU >= 0.5 (each
            annotated box matched at most once, best IoU first) are scored against its label:
            accuracy and balanced accuracy; beside it the same model on the annotated boxes
            themselves, cropped the same way (the accuracy a perfect detector would give).
detection   recall and precision at IoU >= 0.5 per detector come from ``bench/detect.py``
            (``detection_scores``) when it is there; the matched counts above are not a
            substitute (they ignore duplicates).
video       the first ``--video-photos`` photos, each resized to 640x480 and shown for
            ``--frames-per-photo`` frames at ``--fps`` (MJPG .avi written with OpenCV), through
            ``predict`` with every frame read: frames per second and faces per second.
memory      peak RSS (``VmHWM`` of /proc, ``ru_maxrss`` elsewhere) of a child process that only
            runs ``predict`` (with ``--annotate``, which holds the most frames) on videos of
            ``--rss-frames`` lengths (50, 500, 1500 frames by default): flat memory means the
            peaks are about equal.

Prints the JSON object (``--json``: nothing else on stdout) after a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C

DEFAULT_ORIGIN = C.REPO_ROOT.parent / "shared" / "datasets" / "expw-origin"
EXPW_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # 0..6
IOU_MATCH = 0.5
VIDEO_SIZE = (640, 480)
TRAIN_HINT = (
    "ferlab train --data fer2013:../shared/datasets/fer2013 --model ferlab_vgg "
    "--set train.epochs=3 --out /tmp/predict_model"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--weights", default=None, help=f"FER2013-trained run (make one: {TRAIN_HINT})")
    ap.add_argument("--data", default=None, help=f"ExpW photos + label.lst ({DEFAULT_ORIGIN})")
    ap.add_argument("--detectors", nargs="+", default=["haar", "mtcnn"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--video-photos", type=int, default=60, help="photos in the speed video")
    ap.add_argument("--frames-per-photo", type=int, default=3)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument(
        "--rss-frames",
        nargs="+",
        type=int,
        default=[50, 500, 1500],
        metavar="N",
        help="video lengths (frames) of the peak-memory children, shortest first",
    )
    ap.add_argument("--rss-detector", default="haar")
    ap.add_argument(
        "--out", default=None, help="keep the photos' predictions and annotated copies here"
    )
    ap.add_argument("--smoke", action="store_true", help="a few photos and frames")
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# -- data -----------------------------------------------------------------------------------------
def origin_path(given: str | None) -> Path:
    root = Path(given).expanduser() if given else DEFAULT_ORIGIN
    if not (root / "label.lst").is_file() or not (root / "origin").is_dir():
        raise SystemExit(
            f"ExpW photos not found at {root} (expected origin/*.jpg and label.lst); pass --data"
        )
    return root


def read_label_lst(root: Path) -> dict[str, list[tuple[tuple[float, ...], str]]]:
    """photo name -> [(box (x0, y0, x1, y1), label)] from ``label.lst``."""
    faces: dict[str, list[tuple[tuple[float, ...], str]]] = defaultdict(list)
    for line in (root / "label.lst").read_text().splitlines():
        f = line.split()
        if len(f) != 8:
            continue
        top, left, right, bottom = (float(v) for v in f[2:6])
        faces[f[0]].append(((left, top, right, bottom), EXPW_LABELS[int(f[7])]))
    return dict(faces)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(
    detected: list[dict[str, Any]], truth: list[tuple[tuple[float, ...], str]]
) -> list[tuple[dict[str, Any], str]]:
    """(row, true label) pairs: greedy by IoU, each box on either side used once, IoU >= 0.5."""
    pairs = sorted(
        (
            (iou(r["box"], box), i, j)
            for i, r in enumerate(detected)
            for j, (box, _) in enumerate(truth)
        ),
        reverse=True,
    )
    used_d: set[int] = set()
    used_t: set[int] = set()
    out = []
    for v, i, j in pairs:
        if v < IOU_MATCH:
            break
        if i in used_d or j in used_t:
            continue
        used_d.add(i)
        used_t.add(j)
        out.append((detected[i], truth[j][1]))
    return out


def scores(pred: list[str], true: list[str]) -> dict[str, Any]:
    if not true:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "per_class_recall": {}}
    per_class = {}
    for name in EXPW_LABELS:
        idx = [k for k, t in enumerate(true) if t == name]
        if idx:
            per_class[name] = round(sum(pred[k] == name for k in idx) / len(idx), 4)
    acc = sum(p == t for p, t in zip(pred, true, strict=True)) / len(true)
    return {
        "n": len(true),
        "accuracy": round(acc, 4),
        "balanced_accuracy": round(sum(per_class.values()) / len(per_class), 4),
        "per_class_recall": per_class,
    }


def write_video(photos: Sequence[Path], frames: int, per_photo: int, fps: float, path: Path) -> int:
    """``frames`` frames cycling through ``photos`` (each resized to 640x480, ``per_photo``
    frames each); returns the frames written."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, VIDEO_SIZE)
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write an MJPG video at {path}")
    cache: dict[Path, Any] = {}
    n = 0
    try:
        for k in range(frames):
            photo = photos[(k // per_photo) % len(photos)]
            if photo not in cache:
                if len(cache) > 64:
                    cache.clear()
                img = cv2.imread(str(photo))
                cache[photo] = cv2.resize(img, VIDEO_SIZE, interpolation=cv2.INTER_AREA)
            writer.write(cache[photo])
            n += 1
    finally:
        writer.release()
    return n


# -- model ----------------------------------------------------------------------------------------
def model_for(weights: str | None, tmp: Path) -> tuple[str, bool]:
    """(weights to use, whether they are trained)."""
    if weights:
        return weights, True
    import torch

    from ferlab.models import ModelMeta, create_model, save_model

    torch.manual_seed(0)
    model = create_model("ferlab_vgg", 7, 1, image_size=48)
    meta = ModelMeta("ferlab_vgg", EXPW_LABELS, 48, 1, (0.5,), (0.25,))
    save_model(model.eval(), meta, tmp / "untrained")
    return str(tmp / "untrained"), False


def stage_table(summary: Any) -> dict[str, Any]:
    total = sum(summary.stage_s.values())
    return {
        "seconds": {k: C.rnd(v, 3) for k, v in summary.stage_s.items()},
        "share": {k: C.rnd(v / total, 3) if total else None for k, v in summary.stage_s.items()},
    }


def annotated_box_accuracy(
    weights: str, root: Path, truth: dict[str, list[tuple[tuple[float, ...], str]]], margin: float
) -> dict[str, Any]:
    """The model on the label.lst boxes themselves (crop_face with the same margin)."""
    import numpy as np

    from ferlab.face import Face, crop_face
    from ferlab.predict.backends import load_classifier
    from ferlab.predict.engine import prepare_face
    from ferlab.predict.media import load_rgb

    clf = load_classifier(weights)
    inputs, true = [], []
    for name, faces in sorted(truth.items()):
        rgb = load_rgb(str(root / "origin" / name))
        h, w = rgb.shape[:2]
        for box, label in faces:
            x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
            if x1 <= x0 or y1 <= y0:
                continue
            face = Face(box=(x0, y0, x1, y1), score=None, landmarks=None)
            crop = crop_face(rgb, face, margin=margin)
            inputs.append(prepare_face(crop, clf.image_size, clf.channels))
            true.append(label)
    probs = clf.probs(np.stack(inputs))
    pred = [clf.labels[int(k)] for k in probs.argmax(axis=1)]
    return scores(pred, true)


# -- parts ----------------------------------------------------------------------------------------
def photos_part(
    args: argparse.Namespace,
    weights: str,
    trained: bool,
    root: Path,
    photos: list[Path],
    truth: dict[str, list[tuple[tuple[float, ...], str]]],
    tmp: Path,
) -> dict[str, Any]:
    from ferlab.predict import predict

    inputs = [str(root / "origin")] if not args.smoke else [str(p) for p in photos]
    out: dict[str, Any] = {}
    for k, det in enumerate(args.detectors):
        C.log(f"photos: {det} on {len(photos)} photos ...")
        where = Path(args.out) / det if args.out else tmp / f"photos_{det}"
        s = predict(
            weights,
            inputs,
            detector=det,
            margin=args.margin,
            batch_size=args.batch_size,
            out=where,
            annotate=bool(args.out) and k == 0,
            progress=False,
        )
        rows = [
            json.loads(line) for line in Path(s.outputs["predictions"]).read_text().splitlines()
        ]
        by_photo: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if r["status"] == "ok":
                by_photo[Path(r["file"]).name].append(r)
        pairs = [p for name, faces in truth.items() for p in match(by_photo.get(name, []), faces)]
        annotated = sum(len(truth.get(p.name, [])) for p in photos)
        entry: dict[str, Any] = {
            "photos": s.files,
            "rows": s.rows,
            "faces_detected": s.faces,
            "photos_without_face": s.no_face_files,
            "errors": s.errors,
            "faces_annotated": annotated,
            "faces_matched_iou_0.5": len(pairs),
            "seconds": C.rnd(s.seconds, 2),
            "faces_per_s": C.rnd(s.faces_per_s, 2),
            "photos_per_s": C.rnd(s.files / s.seconds if s.seconds else None, 2),
            "model_load_s": C.rnd(s.load_s, 2),
            "stages": stage_table(s),
        }
        if trained:
            entry["accuracy_on_matched_faces"] = scores(
                [r["label"] for r, _ in pairs], [t for _, t in pairs]
            )
        if args.out and k == 0:
            entry["kept"] = {"predictions": s.outputs["predictions"], "annotated": str(where)}
        out[det] = entry
        C.log(f"  {det}: {s.faces} faces, {entry['faces_per_s']} faces/s, {len(pairs)} matched")
    return out


def detection_part(
    detectors: Sequence[str], root: Path, limit: int | None = None
) -> dict[str, Any]:
    """Recall and precision at IoU >= 0.5 from ``bench/detect.py`` (its per-photo list left out)."""
    try:
        import detect as D  # bench/detect.py, beside this file
    except ImportError:
        return {"todo": "bench/detect.py (detection_scores) is not there; run it when it is"}
    out = {}
    for d in detectors:
        C.log(f"detection: {d} (bench/detect.py) ...")
        scores = D.detection_scores(d, root, limit=limit)
        out[d] = {k: v for k, v in scores.items() if k != "per_photo"}
    return out


def video_part(
    args: argparse.Namespace, weights: str, photos: list[Path], tmp: Path
) -> dict[str, Any]:
    from ferlab.predict import predict

    n_photos = min(args.video_photos, len(photos))
    video = tmp / "speed.avi"
    frames = write_video(
        photos[:n_photos], n_photos * args.frames_per_photo, args.frames_per_photo, args.fps, video
    )
    out: dict[str, Any] = {"frames": frames, "size": list(VIDEO_SIZE), "fps": args.fps}
    for det in args.detectors:
        C.log(f"video: {det} on {frames} frames ...")
        s = predict(
            weights,
            [str(video)],
            detector=det,
            margin=args.margin,
            batch_size=args.batch_size,
            out=tmp / f"video_{det}",
            progress=False,
        )
        out[det] = {
            "frames_read": s.frames,
            "faces": s.faces,
            "frames_without_face": s.no_face_frames,
            "seconds": C.rnd(s.seconds, 2),
            "frames_per_s": C.rnd(s.frames / s.seconds if s.seconds else None, 2),
            "faces_per_s": C.rnd(s.faces_per_s, 2),
            "stages": stage_table(s),
        }
    return out


def memory_part(
    args: argparse.Namespace, weights: str, photos: list[Path], tmp: Path
) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    out: dict[str, Any] = {"detector": args.rss_detector, "annotate": True, "runs": []}
    for frames in args.rss_frames:
        video = tmp / f"rss_{frames}.avi"
        write_video(photos, frames, args.frames_per_photo, args.fps, video)
        C.log(f"memory: child on a {frames}-frame video ...")
        a = {
            "weights": weights,
            "video": str(video),
            "detector": args.rss_detector,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "out": str(tmp / f"rss_out_{frames}"),
        }
        row = C.run_child([me, "--child", "rss", "--child-args", json.dumps(a)])
        row["video_mb"] = C.rnd(video.stat().st_size / 2**20, 1)
        out["runs"].append(row)
        video.unlink()
    runs = out["runs"]
    if len(runs) >= 2 and runs[0]["peak_rss_mb"]:
        out["longest_over_shortest_peak"] = C.ratio(runs[-1]["peak_rss_mb"], runs[0]["peak_rss_mb"])
        out["longest_over_shortest_frames"] = C.ratio(runs[-1]["frames"], runs[0]["frames"])
    return out


def vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return C.peak_rss_mb()


def child_rss(a: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(a["threads"])
    from ferlab.predict import predict

    s = predict(
        a["weights"],
        [a["video"]],
        detector=a["detector"],
        batch_size=a["batch_size"],
        out=a["out"],
        annotate=True,
        progress=False,
    )
    return {
        "frames": s.frames,
        "faces": s.faces,
        "seconds": C.rnd(s.seconds, 1),
        "peak_rss_mb": C.rnd(vm_hwm_mb(), 1),
    }


# -- report ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    root = origin_path(args.data)
    truth = read_label_lst(root)
    photos = sorted(p for p in (root / "origin").iterdir() if p.suffix.lower() == ".jpg")
    if args.smoke:
        photos = photos[:8]
        truth = {p.name: truth[p.name] for p in photos if p.name in truth}
        args.video_photos, args.frames_per_photo = 4, 2
        args.rss_frames = [10, 30]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-predict-") as tmp_name:
        tmp = Path(tmp_name)
        weights, trained = model_for(args.weights, tmp)
        res: dict[str, Any] = {
            "benchmark": "predict",
            "smoke": bool(args.smoke),
            "date": C.now_iso(),
            "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "config": {
                "weights": weights if trained else "untrained ferlab_vgg (no --weights)",
                "data": str(root),
                "detectors": args.detectors,
                "batch_size": args.batch_size,
                "margin": args.margin,
                "threads": args.threads,
                "iou_match": IOU_MATCH,
            },
            "machine": C.machine_info(args.threads),
        }
        res["photos"] = photos_part(args, weights, trained, root, photos, truth, tmp)
        C.log(f"photos: {json.dumps(res['photos'])}")
        if trained:
            C.log("accuracy on the annotated boxes ...")
            res["accuracy_on_annotated_boxes"] = annotated_box_accuracy(
                weights, root, truth, args.margin
            )
        else:
            res["accuracy_on_annotated_boxes"] = f"needs --weights (make them: {TRAIN_HINT})"
        res["detection"] = detection_part(args.detectors, root, len(photos) if args.smoke else None)
        C.log(f"accuracy on the annotated boxes: {json.dumps(res['accuracy_on_annotated_boxes'])}")
        res["video"] = video_part(args, weights, photos, tmp)
        C.log(f"video: {json.dumps(res['video'])}")
        res["memory"] = memory_part(args, weights, photos, tmp)
    res["machine"]["load_avg_1m_at_end"] = (
        round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    )
    res["wall_s"] = round(time.time() - started, 1)
    return res


def table(res: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = [
        f"## ferlab predict on ExpW photos ({res['date']}, {res['machine']['cpu']}, "
        f"{res['config']['threads']} torch threads)",
        "",
        "| detector | photos | faces found | matched (IoU>=0.5) / annotated | faces/s | "
        "decode s | detect s | crop s | classify s | accuracy on matched |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for det, e in res["photos"].items():
        st = e["stages"]["seconds"]
        acc = e.get("accuracy_on_matched_faces", {}).get("accuracy")
        lines.append(
            f"| {det} | {e['photos']} | {e['faces_detected']} | {e['faces_matched_iou_0.5']} / "
            f"{e['faces_annotated']} | {e['faces_per_s']} | {st['decode']} | {st['detect']} | "
            f"{st['crop']} | {st['classify']} | {pct(acc)} |"
        )
    ab = res["accuracy_on_annotated_boxes"]
    if isinstance(ab, dict):
        lines += ["", f"Accuracy on the annotated boxes themselves: {pct(ab['accuracy'])} "
                      f"(balanced {pct(ab['balanced_accuracy'])}, n={ab['n']})."]  # fmt: skip
    v = res["video"]
    lines += [
        "",
        f"Video: {v['frames']} frames at {v['size'][0]}x{v['size'][1]}",
        "",
        "| detector | frames/s | faces/s | detect share | classify share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for det in res["config"]["detectors"]:
        e = v[det]
        sh = e["stages"]["share"]
        lines.append(
            f"| {det} | {e['frames_per_s']} | {e['faces_per_s']} | {pct(sh['detect'])} | "
            f"{pct(sh['classify'])} |"
        )
    m = res["memory"]
    lines += ["", f"Peak RSS ({m['detector']}, annotated copy written):", ""]
    lines += [
        f"- {r['frames']} frames: {r['peak_rss_mb']} MiB ({r['seconds']} s)" for r in m["runs"]
    ]
    if "longest_over_shortest_peak" in m:
        lines.append(
            f"- longest / shortest: {m['longest_over_shortest_frames']}x the frames, "
            f"{m['longest_over_shortest_peak']}x the peak"
        )
    det = res["detection"]
    if "todo" in det:
        lines += ["", f"Detection recall/precision: TODO ({det['todo']})."]
    else:
        lines += [
            "",
            "Detection at IoU >= 0.5 (bench/detect.py):",
            "",
            "| detector | recall | precision | ms/photo (median) |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {d} | {pct(e.get('recall'))} | {pct(e.get('precision'))} | "
            f"{e.get('ms_per_photo_median')} |"
            for d, e in det.items()
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_rss(json.loads(args.child_args))))
        return 0
    res = run(args)
    C.emit(res, as_json=args.json, table=table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
