"""One face, one framing, one number: ``ferlab predict`` frames a face as the run framed its
training images, runs the evaluation's TTA views, and so gives the probabilities ``ferlab
evaluate`` gives for the same image.

A fake detector (the bright rectangle of each image) stands in for Haar so that every image has
a known face; the framing (padding for detection, margin, square crop, resize) is ferlab's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import ferlab
import ferlab.face
from face_fakes import BrightSquare
from ferlab.data import facecrop
from ferlab.data.base import ArraySplit
from ferlab.data.loading import load_dataset
from ferlab.evaluation import evaluate as evaluate_model
from ferlab.evaluation.tta import recorded_tta
from ferlab.labels import INDEX
from ferlab.models import load_model
from ferlab.predict import backends
from ferlab.predict.run import TIGHT_MARGIN, iter_predictions, predict_framing

SIZE = 32
CLASSES = ("happy", "sad", "surprise")


@pytest.fixture
def bright_box(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ferlab.face, "make_detector", lambda name, **kw: BrightSquare())
    monkeypatch.setattr(facecrop, "_DETECTORS", {})


def write_folder(root: Path, per_class: int = 10) -> None:
    """Colour photos (70 x 90) with a bright 'face' whose place and size vary, every fifth one
    without a face; the class shows in the face's texture."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(20, 120, size=(70, 90, 3), dtype=np.uint8)
            if i % 5 != 4:
                h, w = int(rng.integers(22, 36)), int(rng.integers(18, 30))
                y, x = int(rng.integers(8, 70 - h - 8)), int(rng.integers(8, 90 - w - 8))
                face = np.full((h, w, 3), 230, dtype=np.uint8)
                face[:, :, 1:] = rng.integers(100, 255, size=(h, w, 2)) // (c + 1)
                arr[y : y + h, x : x + w] = face
            Image.fromarray(arr).save(root / name / f"{name}_{i:02d}.png")


def train(tmp_path: Path, root: Path, *extra: str) -> Path:
    result = ferlab.train(
        f"folder:{root}",
        "ferlab_vgg",
        out=tmp_path / "exp",
        progress=False,
        console=False,
        overrides=[
            "train.epochs=1",
            "train.batch_size=16",
            "eval.bootstrap=0",
            f"data.cache_dir={tmp_path / 'cache'}",
            "models.0.kwargs={width_mult: 0.25}",
            f"models.0.image_size={SIZE}",
            *extra,
        ],
    )
    return result.run_dir


def all_images(root: Path, cache: Path, **kw: Any) -> tuple[np.ndarray, list[str], set[str]]:
    """Every image of the dataset as the data layer decodes it (``evaluate --split all``), its
    keys, and the keys where no face was found."""
    data = load_dataset(f"folder:{root}", image_size=SIZE, channels=1, cache_dir=cache, **kw)
    splits = list(data.splits.values())
    images = np.concatenate([np.asarray(s.images) for s in splits])
    keys = [k for s in splits for k in s.keys]
    no_face = {k for s in splits for k in (s.no_face or [])}
    return images, keys, no_face


def predicted(
    monkeypatch: pytest.MonkeyPatch, weights: Path, root: Path, **kw: Any
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """predict's rows, and the model inputs it built (in row order)."""
    seen: list[np.ndarray] = []
    probs = backends.TorchClassifier.probs

    def spy(self: Any, faces: np.ndarray) -> np.ndarray:
        seen.extend(np.array(f) for f in faces)
        return probs(self, faces)

    monkeypatch.setattr(backends.TorchClassifier, "probs", spy)
    rows = list(iter_predictions(weights, [root], **kw))
    monkeypatch.setattr(backends.TorchClassifier, "probs", probs)
    return rows, seen


def evaluated(weights: Path, images: np.ndarray, tta: bool) -> np.ndarray:
    """``ferlab evaluate``'s calibrated probabilities for ``images`` (its own code path)."""
    model, meta = load_model(weights)
    labels = list(meta.labels)
    n = len(images)  # every image given a class the model knows: none is left out
    split = ArraySplit(images=images, labels=np.full(n, INDEX["happy"]), keys=[""] * n)
    views = recorded_tta((meta.extra or {}).get("tta")) if tta else None
    res = evaluate_model(model, meta, split, labels, tta=views, bootstrap=0)
    out = res.calibrated_tta if tta else res.calibrated_plain
    assert out is not None
    return np.asarray(out)


def _probs(rows: list[dict[str, Any]], labels: list[str]) -> np.ndarray:
    return np.array([[r["probs"][name] for name in labels] for r in rows])


@pytest.mark.slow
def test_predict_frames_faces_and_runs_tta_as_the_run_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bright_box: None
) -> None:
    root = tmp_path / "photos"
    write_folder(root)
    weights = train(
        tmp_path, root, "data.face_crop=haar", "data.face_margin=0.15",
        "eval.tta={hflip: true, crops: 5}",
    )  # fmt: skip
    _, meta = load_model(weights)
    assert meta.extra["tta"]["crops"] == 5 and meta.extra["data"]["face_crop"] == "haar"
    images, keys, no_face = all_images(root, tmp_path / "cache", face_crop="haar", face_margin=0.15)
    assert 0 < len(no_face) < len(keys)  # both kinds are there
    # Defaults only: the run's detector and margin.
    rows, inputs = predicted(monkeypatch, weights, root)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["file"] for r in rows if r["status"] == "no_face"} == no_face
    assert len(ok) == len(inputs) == len(keys) - len(no_face)  # one face per photo
    index = {k: i for i, k in enumerate(keys)}
    want = images[[index[r["file"]] for r in ok]]
    assert np.array_equal(np.stack(inputs), want)  # the same input tensors, pixel for pixel
    labels = list(meta.labels)
    np.testing.assert_allclose(_probs(ok, labels), evaluated(weights, want, tta=False), atol=1e-5)
    # --tta: the run's 7 views, calibrated the way evaluate calibrates them.
    rows_tta, _ = predicted(monkeypatch, weights, root, tta=True)
    ok_tta = [r for r in rows_tta if r["status"] == "ok"]
    got = _probs(ok_tta, labels)
    np.testing.assert_allclose(got, evaluated(weights, want, tta=True), atol=1e-5)
    assert not np.allclose(got, _probs(ok, labels), atol=1e-4)  # the views do change them


@pytest.mark.slow
def test_predict_without_a_detector_sees_what_a_run_without_face_crop_saw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "photos"
    write_folder(root, per_class=6)
    weights = train(tmp_path, root)
    images, keys, _ = all_images(root, tmp_path / "cache")
    rows, inputs = predicted(monkeypatch, weights, root, detector="none")
    assert [r["status"] for r in rows] == ["ok"] * len(keys)
    index = {k: i for i, k in enumerate(keys)}
    want = images[[index[r["file"]] for r in rows]]
    assert np.array_equal(np.stack(inputs), want)
    _, meta = load_model(weights)
    np.testing.assert_allclose(
        _probs(rows, list(meta.labels)), evaluated(weights, want, tta=False), atol=1e-5
    )


def test_the_default_framing_follows_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    haar = {"data": {"face_crop": "haar", "face_margin": 0.3, "color": True}}
    name, framing, grey = predict_framing(haar, None, None, 20)
    assert (name, framing.detector, framing.margin, grey) == ("haar", "haar", 0.3, False)
    # A run trained on tight crops without face_crop: the best installed detector (MTCNN, else
    # Haar), tight; grey images stay grey. The run's own detector wins even when MTCNN is there.
    tight = {"data": {"face_crop": "none", "face_margin": 0.2, "color": False}}
    installed = {"mtcnn", "haar"}
    monkeypatch.setattr(ferlab.face, "detector_available", lambda name: name in installed)
    name, framing, grey = predict_framing(tight, None, None, 20)
    assert (name, framing.detector, framing.margin, grey) == ("mtcnn", "mtcnn", TIGHT_MARGIN, True)
    assert predict_framing(haar, None, None, 20)[0] == "haar"
    installed.discard("mtcnn")  # facenet-pytorch missing: Haar
    name, framing, grey = predict_framing(tight, None, None, 20)
    assert (name, framing.margin, grey) == ("haar", TIGHT_MARGIN, True)
    # What the user sets wins; "none" takes the whole image.
    name, framing, _ = predict_framing(haar, "mtcnn", 0.1, 40)
    assert (framing.detector, framing.margin, framing.min_face) == ("mtcnn", 0.1, 40)
    assert predict_framing(haar, "none", None, 20)[1] is None
    # Weights that record nothing (older runs, bare files) get the documented defaults.
    name, framing, grey = predict_framing({}, None, None, 20)
    assert (name, framing.margin, grey) == ("haar", TIGHT_MARGIN, False)
    installed.add("mtcnn")
    assert predict_framing({}, None, None, 20)[0] == "mtcnn"


def test_a_grey_trained_colour_model_gets_grey_faces() -> None:
    from ferlab.predict.engine import prepare_face

    rng = np.random.default_rng(1)
    crop = rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8)
    grey = prepare_face(crop, 16, 3, grey=True)
    assert grey.shape == (16, 16, 3)
    assert np.array_equal(grey[:, :, 0], grey[:, :, 1]) and np.array_equal(
        grey[:, :, 0], grey[:, :, 2]
    )
    want = np.asarray(
        Image.fromarray(crop).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(grey[:, :, 0], want)
    colour = prepare_face(crop, 16, 3)
    assert not np.array_equal(colour[:, :, 0], colour[:, :, 1])
