"""The streaming loop of ``ferlab predict``: read, detect, crop, classify in batches.

Each image and each kept video frame becomes an ``Item``. Items read are detected a few at a
time (``DETECT_BATCH``: the detector's ``detect_batch``, which runs same-sized video frames
through MTCNN together); each face is then framed as the training images were
(``ferlab.data.facecrop``: the same detector on the same padded image, the same margin, made
square) and prepared at the model's input by the data layer's resize and grey/colour
conversion, so a face looks like the training images did. Items then wait until
``batch_size`` faces are pending (or ``max_items`` items, so that frames without faces do not
pile up), all their faces go through the classifier at once, and the items come out in input
order with their probabilities. Only the waiting items are in memory: a long video is never
held whole.

The ``none`` detector takes the whole image as the face: an image file is then decoded exactly
as the data layer decodes a pre-cropped dataset (``decode_record``), so ``predict --detector
none`` on a dataset's files sees what training and ``ferlab evaluate`` saw.

Bad input never stops the loop: an unreadable image or video, or a detector failure, becomes an
item with status ``error`` and its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ferlab.data.base import Record
from ferlab.data.decode import BadImageError, _finish, decode_record
from ferlab.data.facecrop import FaceCrop, detect_faces, frame_face
from ferlab.face import crop_face
from ferlab.predict.media import BadVideoError, Source, VideoReader, load_rgb

if TYPE_CHECKING:
    from ferlab.face import Face
    from ferlab.predict.backends import Classifier

OK = "ok"
NO_FACE = "no_face"
ERROR = "error"
STAGES = ("decode", "detect", "crop", "classify")
MAX_HELD_FRAMES = 16  # whole frames kept for annotation while their faces wait for a batch
# Images and frames detected together (MTCNN runs same-sized images as one batch: 8 video
# frames took 2.5x less time than one by one here), at most this many or this many pixels.
DETECT_BATCH = 8
DETECT_BATCH_PIXELS = 8 * 1920 * 1080


@dataclass
class Item:
    """One image, or one frame of a video, with its faces and (after a batch) their probabilities."""

    source: Source
    frame: int | None = None
    timestamp_s: float | None = None
    status: str = OK
    error: str | None = None
    faces: list[Face] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)  # (S, S, C) uint8 per face
    probs: np.ndarray | None = None  # (F, K) once classified
    rgb: np.ndarray | None = None  # the whole image, kept only for annotation
    fps: float = 0.0  # a video's frame rate (0 for an image, or when the video does not say)


@dataclass
class SourceDone:
    """All items of ``source`` have come out; per-file counts for the caller."""

    source: Source
    kind: str  # image | video | error
    frames: int = 0
    faces: int = 0  # faces found in the file
    fps: float = 0.0
    truncated: bool = False
    declared_frames: int = 0


Event = Item | SourceDone


@dataclass
class Timer:
    """Seconds spent in each stage (``STAGES``), summed over the run."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


def prepare_face(crop: np.ndarray, size: int, channels: int, grey: bool = False) -> np.ndarray:
    """A face crop (uint8 RGB) -> the model's input, resized and converted as the data layer
    decodes training images: ``(size, size, channels)`` uint8. ``grey``: converted to grey
    first (a 3-channel model trained on grey images sees grey faces, replicated)."""
    from PIL import Image

    im = Image.fromarray(crop)
    return _finish(im.convert("L") if grey else im, size, channels)


class Engine:
    """Turns sources into events; see the module docstring."""

    def __init__(
        self,
        classifier: Classifier,
        detector: Any,
        *,
        framing: FaceCrop | None = None,
        grey: bool = False,
        align: bool = False,
        frame_step: int = 1,
        batch_size: int = 64,
        keep_frames: bool = False,
        on_step: Callable[[Item], None] | None = None,
    ) -> None:
        self.classifier = classifier
        self.detector = detector
        self.framing = framing  # None: the whole image is the face (``--detector none``)
        self.grey = grey
        self.align = align
        self.frame_step = frame_step
        self.batch_size = batch_size
        self.keep_frames = keep_frames
        self.max_items = min(batch_size, MAX_HELD_FRAMES) if keep_frames else max(batch_size, 1)
        self.on_step = on_step  # called for every image or frame read (progress)
        self.timer = Timer()
        self._pending: list[Event] = []
        self._pending_faces = 0
        self._pending_items = 0
        # events in input order (images and frames with their pixels) waiting for the detector
        self._to_detect: list[tuple[Event, np.ndarray | None]] = []
        self._to_detect_images = self._to_detect_pixels = 0
        self._source_faces = 0  # faces found so far in the file being read

    @property
    def whole_image(self) -> bool:
        return getattr(self.detector, "name", "") == "none"

    # -------------------------------------------------------------------- the loop

    def run(self, sources: Iterable[Source]) -> Iterator[Event]:
        for source in sources:
            yield from self._source(source)
        yield from self._detect_pending()
        yield from self._flush()

    def _queue(self, event: Event) -> Iterator[Event]:
        """Queue an event for classification, in input order."""
        self._pending.append(event)
        if isinstance(event, Item):
            self._pending_items += 1
            self._pending_faces += len(event.inputs)
            if self.on_step is not None:
                self.on_step(event)
        if self._pending_faces >= self.batch_size or self._pending_items >= self.max_items:
            yield from self._flush()

    def _event(self, event: Event, rgb: np.ndarray | None = None) -> Iterator[Event]:
        """An image or frame read (with its ``rgb``), or an event that needs no detection: it
        waits for the detector with the others of its batch, so that the output keeps input
        order."""
        self._to_detect.append((event, rgb))
        if rgb is not None:
            self._to_detect_images += 1
            self._to_detect_pixels += rgb.shape[0] * rgb.shape[1]
        if (
            self._to_detect_images >= DETECT_BATCH
            or self._to_detect_pixels >= DETECT_BATCH_PIXELS
            or len(self._to_detect) >= 4 * DETECT_BATCH
        ):
            yield from self._detect_pending()

    def _failed(self, source: Source, reason: str | None) -> Iterator[Event]:
        yield from self._event(Item(source, status=ERROR, error=reason))
        yield from self._event(SourceDone(source, "error"))

    def _detect_pending(self) -> Iterator[Event]:
        batch, self._to_detect = self._to_detect, []
        self._to_detect_images = self._to_detect_pixels = 0
        images = [rgb for _, rgb in batch if rgb is not None]
        found: list[list[Face]] | None = None
        if images:
            t = time.perf_counter()
            try:
                found = self._detect(images)
            except Exception:  # one bad image: detect them one by one to tell which
                found = None
            self.timer.add("detect", t)
        k = 0
        for event, rgb in batch:
            if isinstance(event, Item) and rgb is not None:
                self._prepare(event, rgb, None if found is None else found[k])
                k += 1
                self._source_faces += len(event.faces)
            elif isinstance(event, SourceDone):
                event.faces, self._source_faces = self._source_faces, 0
            yield from self._queue(event)

    def _source(self, source: Source) -> Iterator[Event]:
        if source.kind == "bad":
            yield from self._failed(source, source.problem)
            return
        if source.kind == "video":
            yield from self._video(source)
            return
        # an image, or a file of unknown type: an image when PIL reads it, else maybe a video

        t = time.perf_counter()
        try:
            rgb = load_rgb(source.path)
        except BadImageError as e:
            self.timer.add("decode", t)
            if source.kind == "unknown" and e.reason.startswith("not an image file"):
                yield from self._video(source, unknown=True)
                return
            yield from self._failed(source, e.reason)
            return
        self.timer.add("decode", t)
        yield from self._event(Item(source), rgb)
        yield from self._event(SourceDone(source, "image", frames=1))

    def _video(self, source: Source, unknown: bool = False) -> Iterator[Event]:
        t = time.perf_counter()
        try:
            reader = VideoReader(source.path)
        except BadVideoError as e:
            self.timer.add("decode", t)
            reason = "neither an image PIL reads nor a video OpenCV opens" if unknown else e.reason
            yield from self._failed(source, reason)
            return
        with reader:
            frames = reader.frames(self.frame_step)
            while True:
                t = time.perf_counter()
                try:
                    frame = next(frames)
                except StopIteration:
                    self.timer.add("decode", t)
                    break
                except BadVideoError as e:
                    self.timer.add("decode", t)
                    yield from self._failed(source, e.reason)
                    return
                self.timer.add("decode", t)
                item = Item(source, frame.index, frame.timestamp_s, fps=reader.fps)
                yield from self._event(item, frame.rgb)
        yield from self._event(
            SourceDone(
                source,
                "video",
                frames=reader.decoded,
                fps=reader.fps,
                truncated=reader.truncated(),
                declared_frames=reader.declared,
            )
        )

    def _detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        if self.framing is None:
            return [list(f) for f in self.detector.detect_batch(images)]
        return detect_faces(images, self.framing, self.detector)  # as training data are

    def _crop(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        assert self.framing is not None
        if self.align:  # an explicit choice: the eyes levelled, not the training framing
            return crop_face(rgb, face, margin=self.framing.margin, align=True)
        return frame_face(rgb, face, self.framing)

    def _prepare(self, item: Item, rgb: np.ndarray, faces: list[Face] | None) -> None:
        """Fill ``item`` with the faces of ``rgb`` (detected here when ``faces`` is None) and
        their model inputs."""
        if self.keep_frames:
            item.rgb = rgb
        size, channels = self.classifier.image_size, self.classifier.channels
        if faces is None:
            t = time.perf_counter()
            try:
                faces = self._detect([rgb])[0]
            except Exception as e:  # a detector choking on one image must not stop the run
                self.timer.add("detect", t)
                item.status, item.error = ERROR, f"face detection failed ({type(e).__name__}: {e})"
                return
            self.timer.add("detect", t)
        t = time.perf_counter()
        try:
            if self.whole_image and item.frame is None:
                # exactly as the data layer decodes a pre-cropped dataset's file
                record = Record(path=item.source.path, label=0)
                if self.grey and channels == 3:  # grey training images: grey, replicated
                    inputs = [np.repeat(decode_record(record, size, 1), 3, axis=2)]
                else:
                    inputs = [decode_record(record, size, channels)]
            elif self.whole_image:
                inputs = [prepare_face(rgb, size, channels, self.grey)]
            else:
                inputs = [
                    prepare_face(self._crop(rgb, face), size, channels, self.grey) for face in faces
                ]
        except Exception as e:
            self.timer.add("crop", t)
            item.status, item.error = ERROR, f"cannot crop the face ({type(e).__name__}: {e})"
            return
        self.timer.add("crop", t)
        item.faces, item.inputs = faces, inputs
        if not faces:
            item.status = NO_FACE

    def _flush(self) -> Iterator[Event]:
        pending, self._pending = self._pending, []
        self._pending_faces = self._pending_items = 0
        items = [e for e in pending if isinstance(e, Item) and e.inputs]
        if items:
            t = time.perf_counter()
            batch = np.stack([x for it in items for x in it.inputs])  # (F, S, S, C)
            probs = self.classifier.probs(batch)  # (F, K)
            self.timer.add("classify", t)
            lo = 0
            for it in items:
                n = len(it.inputs)
                it.probs = probs[lo : lo + n]
                it.inputs = []  # no longer needed: free the crops
                lo += n
        yield from pending
