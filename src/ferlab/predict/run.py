"""``ferlab.predict.predict``: classify every face in images, folders and videos.

    >>> summary = predict("runs/fer2013/ferlab_vgg-1234", ["photos/", "clip.mp4"], out="pred")
    >>> summary.faces, summary.no_face_files, summary.errors

``iter_predictions`` gives the same rows one by one without writing anything. The CLI
(``ferlab predict``) is a thin layer over ``predict``.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ferlab import face
from ferlab.config import ConfigError
from ferlab.data.facecrop import FaceCrop
from ferlab.defaults import FACE_MARGIN
from ferlab.layout import write_json
from ferlab.predict.backends import Classifier, load_classifier
from ferlab.predict.engine import ERROR, NO_FACE, STAGES, Engine, Item, SourceDone
from ferlab.predict.gallery import Gallery
from ferlab.predict.media import Inputs, expand_inputs
from ferlab.predict.outputs import (
    ANNOTATED,
    FORMATS,
    PREDICTIONS,
    SUMMARY,
    VIDEOS,
    Annotator,
    EmotionShares,
    OutputNames,
    RowWriter,
    annotated_name,
    rows_of,
)

DEFAULT_FPS = 10.0  # annotated copy of a video that does not say its frame rate


class PredictArgumentError(ConfigError):
    """An option of ``predict`` out of range or combined with one it needs and lacks."""


class PredictWarning(UserWarning):
    """A file predict could not read (reported in a row; the run goes on)."""


@dataclass
class PredictSummary:
    """What one ``predict`` run did. ``files`` counts the inputs' files (images, videos, and
    files that could not be read); ``faces`` the classified faces."""

    weights: str
    backend: str
    detector: str
    labels: list[str]
    files: int = 0
    images: int = 0
    videos: int = 0
    frames: int = 0  # video frames read (every --frame-step-th)
    faces: int = 0
    no_face_files: int = 0  # images, and videos with no face in any frame read
    no_face_frames: int = 0
    errors: int = 0  # files (or frames) that could not be read or processed
    error_files: list[dict[str, str]] = field(default_factory=list)
    truncated_videos: list[str] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)  # folder entries not read, by kind
    rows: int = 0
    load_s: float = 0.0  # loading the model and the detector
    seconds: float = 0.0  # the loop: reading, detection, cropping, classification, writing
    stage_s: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def faces_per_s(self) -> float | None:
        return self.faces / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["faces_per_s"] = None if self.faces_per_s is None else round(self.faces_per_s, 3)
        d["load_s"], d["seconds"] = round(self.load_s, 3), round(self.seconds, 3)
        d["stage_s"] = {k: round(v, 3) for k, v in self.stage_s.items()}
        return d

    def format(self) -> str:
        """A few lines for people."""
        video = (
            f", {_n(self.videos, 'video')}: {_n(self.frames, 'frame')} read" if self.videos else ""
        )
        rate = "n/a" if self.faces_per_s is None else f"{self.faces_per_s:.1f}"
        lines = [
            f"predict: {_n(self.files, 'file')} ({_n(self.images, 'image')}{video}), "
            f"{_n(self.faces, 'face')}, {_n(self.no_face_files, 'file')} without a face, "
            f"{_n(self.errors, 'error')}; {rate} faces/s ({self.seconds:.1f} s)",
            "  time per stage: "
            + ", ".join(f"{k} {self.stage_s.get(k, 0.0):.2f} s" for k in STAGES),
        ]
        if self.no_face_frames:
            lines.append(f"  video frames without a face: {self.no_face_frames}")
        for bad in self.error_files[:10]:
            lines.append(f"  error: {bad['file']}: {bad['reason']}")
        if len(self.error_files) > 10:
            lines.append(f"  ... and {len(self.error_files) - 10} more errors")
        for key in ("predictions", "summary", "annotated", "gallery"):
            if key in self.outputs:
                lines.append(f"  wrote {self.outputs[key]}")
        for v in self.outputs.get("videos", []):
            lines.append(f"  wrote {v['shares_csv']} and {v['shares_png']}")
        return "\n".join(lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


# ------------------------------------------------------------------------------ set-up


def check_options(
    *,
    detector: str | None,
    min_face: int,
    margin: float | None,
    frame_step: int,
    batch_size: int,
    fmt: str,
    out: str | os.PathLike[str] | None,
    annotate: bool,
) -> None:
    """Refuse option values that cannot work, naming the option and the accepted values."""
    problems = []
    if detector is not None and detector not in face.DETECTORS:
        problems.append(f"--detector {detector!r}: use one of {', '.join(face.DETECTORS)}")
    if not (isinstance(min_face, int) and min_face >= 1):
        problems.append(f"--min-face {min_face!r}: must be a whole number of pixels >= 1")
    if margin is not None and not (
        isinstance(margin, int | float) and math.isfinite(margin) and 0 <= margin <= 2
    ):
        problems.append(f"--margin {margin!r}: must be between 0 and 2 (a share of the box)")
    if not (isinstance(frame_step, int) and frame_step >= 1):
        problems.append(f"--frame-step {frame_step!r}: must be >= 1 (1 reads every frame)")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        problems.append(f"--batch-size {batch_size!r}: must be >= 1")
    if fmt not in FORMATS:
        problems.append(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    elif fmt == "csv" and out is None:
        problems.append("--format csv needs --out DIR (only JSON lines go to stdout)")
    if annotate and out is None:
        problems.append("--annotate needs --out DIR for the annotated copies")
    if problems:
        raise PredictArgumentError("; ".join(problems) + ".")


def _warn(message: str) -> None:
    warnings.warn(message, PredictWarning, stacklevel=3)


@dataclass
class _Setup:
    classifier: Classifier
    detector: Any
    framing: FaceCrop | None  # None: the whole image is the face
    grey: bool
    inputs: Inputs
    load_s: float
    align: bool
    frame_step: int
    batch_size: int

    def engine(self, *, keep_frames: bool = False, on_step: Any = None) -> Engine:
        """The engine that reads the inputs, finds and frames the faces, and classifies them."""
        return Engine(
            self.classifier,
            self.detector,
            framing=self.framing,
            grey=self.grey,
            align=self.align,
            frame_step=self.frame_step,
            batch_size=self.batch_size,
            keep_frames=keep_frames,
            on_step=on_step,
        )


# A model trained without data.face_crop saw its dataset's own framing; FER2013's 48 px faces are
# as large as either detector's box (bench/default_model.py --margins, 1,000 random Training
# images detected as decoding detects: Haar median margin -0.03, quartiles -0.05 to -0.01, on the
# 655 where it finds a face; MTCNN -0.04, quartiles -0.10 to 0.03, on 832), so by default such a
# model gets the detected box itself, made square: no margin.
TIGHT_MARGIN = 0.0
# The detector such a model gets: the best one installed. On ExpW's 297 photos (315 annotated
# faces) MTCNN finds 75.9% of the faces against Haar's 59.7%, and the default model is right
# on more of those it finds (34.7% against 33.0%; bench/RESULTS.md, the default model).
BEST_DETECTORS = ("mtcnn", "haar")


def best_detector() -> str:
    """The first of ``BEST_DETECTORS`` whose library is installed (Haar when none is: its
    error then says how to install the face extra)."""
    for name in BEST_DETECTORS[:-1]:
        if face.detector_available(name):
            return name
    return BEST_DETECTORS[-1]


def predict_framing(
    trained: dict[str, Any], detector: str | None, margin: float | None, min_face: int
) -> tuple[str, FaceCrop | None, bool]:
    """How ``predict`` frames faces for a model: (detector name, framing, grey).

    By default as the run's training data were framed: its ``data.face_crop`` detector and
    ``data.face_margin`` (on the image padded as decoding pads it); a model trained without
    ``face_crop`` gets the best installed detector (``best_detector``) and ``TIGHT_MARGIN``.
    ``detector``/``margin`` override either; ``detector="none"``: the whole image is the face.
    ``grey``: the training images were grey.
    """
    data = trained.get("data") or {}
    run_crop = str(data.get("face_crop") or "none")
    if detector is None:  # the best detector is looked up only when it is needed
        detector = run_crop if run_crop != "none" else best_detector()
    name = detector
    if margin is None:
        margin = float(data.get("face_margin", FACE_MARGIN)) if run_crop != "none" else TIGHT_MARGIN
    grey = data.get("color") is False
    if name == "none":
        return name, None, grey
    return name, FaceCrop(detector=name, margin=float(margin), min_face=min_face), grey


def _setup(
    weights: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    detector: str | None,
    min_face: int,
    margin: float | None,
    align: bool,
    frame_step: int,
    tta: bool,
    batch_size: int,
    backend: str | None,
    device: str | None,
    fmt: str = "jsonl",
    out: str | os.PathLike[str] | None = None,
    annotate: bool = False,
) -> _Setup:
    """The options checked, the inputs listed, then the classifier and the detector loaded."""
    check_options(
        detector=detector,
        min_face=min_face,
        margin=margin,
        frame_step=frame_step,
        batch_size=batch_size,
        fmt=fmt,
        out=out,
        annotate=annotate,
    )
    found = expand_inputs(inputs)  # missing inputs fail before the model is loaded
    t = time.perf_counter()
    classifier = load_classifier(
        weights, backend=backend, tta=tta, batch_size=batch_size, device=device
    )
    name, framing, grey = predict_framing(classifier.trained, detector, margin, min_face)
    det = face.make_detector(name, min_face=min_face, device=device)
    if align and name != "mtcnn":
        _warn(
            f"--align levels the eyes that MTCNN finds; the {name} detector gives no "
            "landmarks, so faces are not aligned (use --detector mtcnn)"
        )
    load_s = time.perf_counter() - t
    return _Setup(classifier, det, framing, grey, found, load_s, align, frame_step, batch_size)


def _progress_bar(enabled: bool | None, inputs: Inputs) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    kinds = {s.kind for s in inputs.sources}
    unit = "frame" if kinds == {"video"} else "image" if "video" not in kinds else "img|frame"
    total = len(inputs.sources) if "video" not in kinds else None
    return tqdm(total=total, desc="predict", unit=unit, dynamic_ncols=True, file=sys.stderr)


# ------------------------------------------------------------------------------ public


def iter_predictions(
    weights: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    detector: str | None = None,
    min_face: int = 20,
    margin: float | None = None,
    align: bool = False,
    frame_step: int = 1,
    tta: bool = False,
    batch_size: int = 64,
    backend: str | None = None,
    device: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows of ``predict`` (one per face; see ``ferlab.predict.outputs``), one by one,
    without writing anything. Unreadable files give ``error`` rows and a ``PredictWarning``."""
    s = _setup(
        weights,
        inputs,
        detector=detector,
        min_face=min_face,
        margin=margin,
        align=align,
        frame_step=frame_step,
        tta=tta,
        batch_size=batch_size,
        backend=backend,
        device=device,
    )
    for event in s.engine().run(s.inputs.sources):
        if isinstance(event, Item):
            if event.status == ERROR:
                _warn(f"{event.source.path}: {event.error}; reported in its row, going on")
            yield from rows_of(event, s.classifier.labels)


def predict(
    weights: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    detector: str | None = None,
    min_face: int = 20,
    margin: float | None = None,
    align: bool = False,
    frame_step: int = 1,
    tta: bool = False,
    batch_size: int = 64,
    out: str | os.PathLike[str] | None = None,
    format: str = "jsonl",
    annotate: bool = False,
    backend: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    stream: IO[str] | None = None,
) -> PredictSummary:
    """Find and classify every face in ``inputs`` with ``weights``; returns the summary.

    ``weights``: a run folder, its ``weights.safetensors``, or an ``.onnx`` file from
    ``ferlab export`` (``backend`` None: onnxruntime for ``.onnx``, PyTorch otherwise;
    ``"onnxruntime"`` with a run folder uses its ``model.onnx``). ``inputs``: image files,
    folders (recursive, litter ignored) and video files. Faces are framed as the run framed its
    training images (``predict_framing``): ``detector`` (``haar``, ``mtcnn``, or ``none``: the
    whole image is the face) and ``margin`` (the share of the box added on each side) default
    to the run's (a run trained without ``face_crop``: ``best_detector()``, margin 0);
    ``align`` levels the eyes (MTCNN's landmarks); ``frame_step`` reads every n-th video frame;
    ``tta`` runs the views of the run's evaluation (its ``eval.tta``, recorded in ``meta.json``;
    the flip alone for weights that do not record it) with the temperature applied to every view, as ``ferlab evaluate --tta`` does; faces are classified
    ``batch_size`` at a time.

    With ``out``: ``out/predictions.jsonl`` (or ``.csv`` with ``format="csv"``),
    ``out/summary.json``, per video ``out/videos/<name>.emotions.csv`` and ``.png`` (the share
    of each emotion per second), and with ``annotate`` the copies in ``out/annotated/``.
    Without ``out`` the rows go to ``stream`` (stdout) as JSON lines. Unreadable files give
    ``error`` rows and a ``PredictWarning``; the run goes on.
    """
    s = _setup(
        weights,
        inputs,
        detector=detector,
        min_face=min_face,
        margin=margin,
        align=align,
        frame_step=frame_step,
        tta=tta,
        batch_size=batch_size,
        backend=backend,
        device=device,
        fmt=format,
        out=out,
        annotate=annotate,
    )
    labels = s.classifier.labels
    summary = PredictSummary(
        weights=str(s.classifier.source),
        backend=s.classifier.backend,
        detector=getattr(s.detector, "name", str(detector)),
        labels=list(labels),
        ignored=dict(sorted(s.inputs.ignored.items())),
        load_s=s.load_s,
    )
    out_dir = None if out is None else Path(out).expanduser()
    if out_dir is not None:
        _make_folder(out_dir)
    bar = _progress_bar(progress, s.inputs)

    def step(item: Item) -> None:  # one image or video frame read
        if bar is not None:
            bar.update(1)

    engine = s.engine(keep_frames=annotate, on_step=step)
    handle: IO[str]
    if out_dir is None:
        handle = stream if stream is not None else sys.stdout
    else:
        handle = open(out_dir / f"{PREDICTIONS}.{format}", "w", newline="", encoding="utf-8")  # noqa: SIM115
    outputs = _Outputs(summary, RowWriter(handle, format, labels), out_dir, annotate, frame_step)
    start = time.perf_counter()
    try:
        for event in engine.run(s.inputs.sources):
            if isinstance(event, Item):
                outputs.item(event)
            else:
                outputs.done(event)
    finally:
        if bar is not None:
            bar.close()
        if out_dir is not None:
            handle.close()
        else:
            handle.flush()
    summary.seconds = time.perf_counter() - start
    summary.stage_s = dict(engine.timer.seconds)
    summary.rows = outputs.writer.rows
    if out_dir is not None:
        summary.outputs["predictions"] = str(out_dir / f"{PREDICTIONS}.{format}")
        if annotate:
            summary.outputs["annotated"] = str(out_dir / ANNOTATED)
            summary.outputs["annotated_files"] = outputs.annotated
        if outputs.gallery is not None:
            title = f"ferlab predict: {len(s.inputs.sources)} input file(s)"
            summary.outputs["gallery"] = str(outputs.gallery.write(title, summary.weights))
        summary.outputs["videos"] = outputs.videos
        summary.outputs["summary"] = str(out_dir / SUMMARY)
        write_json(out_dir / SUMMARY, summary.to_dict())
    return summary


class _Outputs:
    """Everything ``predict`` writes, event by event: rows, counts, per-video shares and
    annotated copies."""

    def __init__(
        self,
        summary: PredictSummary,
        writer: RowWriter,
        out_dir: Path | None,
        annotate: bool,
        frame_step: int,
    ) -> None:
        self.summary = summary
        self.writer = writer
        self.out_dir = out_dir
        self.frame_step = frame_step
        labels = summary.labels
        self.annotator = (
            Annotator(out_dir / ANNOTATED, labels) if annotate and out_dir is not None else None
        )
        self.names = OutputNames()  # annotated images
        self.video_names = OutputNames()  # annotated videos and their emotion shares
        self.shares: EmotionShares | None = None  # of the video being read
        self.video_rel = ""
        self.annotated = 0
        self.videos: list[dict[str, str]] = []
        self.gallery = Gallery(out_dir, labels) if self.annotator is not None and out_dir else None

    def item(self, item: Item) -> None:
        for row in rows_of(item, self.summary.labels):
            self.writer.write(row)
        _count_item(self.summary, item)
        if item.frame is not None:  # a video frame
            if self.shares is None:
                self.shares = EmotionShares(self.summary.labels)
                self.video_rel = self.video_names.get(item.source.name, "")
            self.shares.add(item)
            if self.annotator is not None:
                fps = item.fps / self.frame_step if item.fps > 0 else DEFAULT_FPS
                self.annotator.frame(item, self.video_rel, fps)
        elif self.annotator is not None and item.status != ERROR:
            written = self.annotator.image(item, annotated_name(self.names, item))
            self.annotated += written is not None
            if self.gallery is not None:
                self.gallery.add_image(item, written)
        item.rgb = None  # the frame is no longer needed

    def done(self, done: SourceDone) -> None:
        _count_file(self.summary, done)
        if self.shares is None:
            return
        video = self.annotator.close_video() if self.annotator is not None else None
        self.annotated += video is not None
        if self.out_dir is not None and done.kind == "video":
            base = self.out_dir / VIDEOS / self.video_rel
            csv_path, png_path = self.shares.write(
                base.with_name(base.name + ".emotions.csv"),
                base.with_name(base.name + ".emotions.png"),
                title=f"{done.source.name}: share of each emotion",
            )
            self.videos.append(
                {"file": done.source.path, "shares_csv": str(csv_path), "shares_png": str(png_path)}
            )
            if self.gallery is not None:
                self.gallery.add_video(done.source.path, video, png_path)
        self.shares = None


def _make_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise PredictArgumentError(f"--out {str(path)!r} is a file; name a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PredictArgumentError(
            f"--out {str(path)!r} cannot be created ({e.strerror or e}); name a writable folder."
        ) from e


def _count_item(summary: PredictSummary, item: Item) -> None:
    if item.status == ERROR:
        summary.errors += 1
        summary.error_files.append({"file": item.source.path, "reason": str(item.error)})
        where = item.source.path if item.frame is None else f"{item.source.path} frame {item.frame}"
        _warn(f"{where}: {item.error}; reported in its row, going on")
        return
    if item.frame is not None:
        summary.frames += 1
        if item.status == NO_FACE:
            summary.no_face_frames += 1
    elif item.status == NO_FACE:
        summary.no_face_files += 1
    summary.faces += len(item.faces) if item.probs is not None else 0


def _count_file(summary: PredictSummary, done: SourceDone) -> None:
    summary.files += 1
    if done.kind == "image":
        summary.images += 1
    elif done.kind == "video":
        summary.videos += 1
        if done.faces == 0:
            summary.no_face_files += 1
        if done.truncated:
            summary.truncated_videos.append(done.source.path)
            _warn(
                f"{done.source.path}: read {done.frames} frames but its header declares "
                f"{done.declared_frames}: the file may be truncated or damaged"
            )
