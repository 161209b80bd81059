"""ferlab predict: images, folders and videos in, one row per face out.

The tests write their own images and videos (OpenCV's MJPG writer works offline) and a tiny
untrained ``ferlab_vgg`` whose weights are pushed away from their init, so that its
probabilities differ between images and a wrong preprocessing or batching shows.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_dataset
from ferlab import cli
from ferlab.layout import META, WEIGHTS
from ferlab.models import ModelMeta, create_model, save_model
from ferlab.predict import iter_predictions, predict
from ferlab.predict.run import PredictWarning

cv2 = pytest.importorskip("cv2")

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
KWARGS = {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1]}


# ------------------------------------------------------------------------------ fixtures


def _save_run(folder: Path, *, channels: int = 1, temperature: float | None = None) -> Path:
    torch.manual_seed(0)
    model = create_model("ferlab_vgg", len(LABELS), channels, image_size=48, **KWARGS)
    model.train()
    with torch.no_grad():  # spread the outputs: an untrained net is nearly uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.08)
        model(torch.rand(16, channels, 48, 48))  # running statistics of the batch norms
    model.eval()
    extra = {} if temperature is None else {"temperature": temperature}
    meta = ModelMeta(
        architecture="ferlab_vgg",
        labels=LABELS,
        image_size=48,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        kwargs=KWARGS,
        **extra,  # type: ignore[arg-type]
    )
    save_model(model, meta, folder)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_run(tmp_path_factory.mktemp("run") / "run")


def _image(path: Path, seed: int, size: tuple[int, int] = (64, 56)) -> Path:
    rng = np.random.default_rng(seed)
    h, w = size
    base = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, (1, 1, 3))
    noise = rng.integers(0, 80, (h, w, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)  # left-right asymmetric
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _video(path: Path, frames: int = 12, fps: float = 10.0, size: tuple[int, int] = (64, 48)):
    w, h = size
    codec = "MJPG" if path.suffix == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path.suffix} here"
    rng = np.random.default_rng(7)
    for i in range(frames):
        frame = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        frame[:, : (i * w) // frames] += 150  # content changes over time
        writer.write(frame)
    writer.release()
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _probs(rows: list[dict]) -> np.ndarray:
    return np.array([[r["probs"][n] for n in LABELS] for r in rows])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Images at two depths, plus OS litter and a note that must not be read."""
    root = tmp_path / "photos"
    _image(root / "a.jpg", 1)
    _image(root / "b.png", 2)
    _image(root / "deeper" / "c.jpg", 3)
    _image(root / "deeper" / "more" / "d.bmp", 4)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "deeper" / "Thumbs.db").write_bytes(b"x")
    _image(root / "__MACOSX" / "._a.jpg", 5)  # a valid image, but litter
    _image(root / "deeper" / "._c.jpg", 6)
    (root / "notes.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------------------ folders, rows


def test_none_detector_reads_a_folder_recursively_and_ignores_litter(run, folder, tmp_path):
    out = tmp_path / "out"
    summary = predict(run, [folder], detector="none", out=out, progress=False)
    rows = _rows(out / "predictions.jsonl")
    names = sorted(Path(r["file"]).relative_to(folder).as_posix() for r in rows)
    assert names == ["a.jpg", "b.png", "deeper/c.jpg", "deeper/more/d.bmp"]
    assert {r["status"] for r in rows} == {"ok"}
    assert (summary.files, summary.images, summary.faces, summary.errors) == (4, 4, 4, 0)
    assert summary.ignored.get(".DS_Store") == 1 and summary.ignored.get("Thumbs.db") == 1
    assert summary.ignored.get("__MACOSX/") == 1 and summary.ignored.get("._* (macOS metadata)")
    assert summary.ignored.get("note (.txt)") == 1
    saved = json.loads((out / "summary.json").read_text())
    assert saved["faces"] == 4 and saved["faces_per_s"] > 0


def test_jsonl_rows_hold_box_label_and_probabilities_summing_to_one(run, folder, tmp_path):
    out = tmp_path / "out"
    code = cli.main(["predict", "--weights", str(run), str(folder), "--detector", "none",
                     "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    rows = _rows(out / "predictions.jsonl")
    assert len(rows) == 4
    for r in rows:
        assert set(r) == {"file", "frame", "timestamp_s", "face", "status", "error", "box",
                          "score", "landmarks", "label", "probs"}  # fmt: skip
        assert r["frame"] is None and r["timestamp_s"] is None and r["face"] == 0
        assert list(r["probs"]) == LABELS
        p = np.array(list(r["probs"].values()))
        assert abs(p.sum() - 1) < 1e-5 and (p >= 0).all()
        assert r["label"] == LABELS[int(p.argmax())]
        with Image.open(r["file"]) as im:
            assert r["box"] == [0.0, 0.0, float(im.width), float(im.height)]
    p = _probs(rows)
    assert np.abs(p - p[0]).max() > 1e-3  # the images are told apart


def test_csv_has_one_probability_column_per_label(run, folder, tmp_path):
    out = tmp_path / "out"
    predict(run, [folder], detector="none", out=out, format="csv", progress=False)
    with open(out / "predictions.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames
    assert header == ["file", "frame", "timestamp_s", "face", "status", "error", "x0", "y0",
                      "x1", "y1", "score", "landmarks", "label"] + [f"prob_{n}" for n in LABELS]  # fmt: skip
    assert len(rows) == 4
    for r in rows:
        p = np.array([float(r[f"prob_{n}"]) for n in LABELS])
        assert abs(p.sum() - 1) < 1e-5
        assert r["label"] == LABELS[int(p.argmax())]
        assert r["frame"] == "" and r["score"] == "" and float(r["x1"]) > 0


def test_jsonl_goes_to_stdout_without_out(run, folder, capsys):
    code = cli.main(["predict", "--weights", str(run), str(folder / "a.jpg"), "--detector",
                     "none", "--no-progress"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    [row] = [json.loads(line) for line in captured.out.splitlines()]
    assert row["status"] == "ok" and row["file"].endswith("a.jpg")
    assert "1 face," in captured.err  # the summary keeps out of the rows' way


def test_the_same_image_twice_gives_the_same_probabilities(run, folder, tmp_path):
    copy = tmp_path / "copy" / "a_again.jpg"
    copy.parent.mkdir()
    shutil.copy(folder / "a.jpg", copy)
    rows = list(iter_predictions(run, [folder / "a.jpg", copy, folder / "a.jpg"], detector="none"))
    p = _probs(rows)
    assert np.array_equal(p[0], p[1]) and np.array_equal(p[0], p[2])


def test_batch_size_does_not_change_the_results(run, folder, tmp_path):
    video = _video(tmp_path / "clip.avi", frames=6)
    inputs = [folder, video]
    one = list(iter_predictions(run, inputs, detector="none", batch_size=1))
    many = list(iter_predictions(run, inputs, detector="none", batch_size=64))
    assert [(r["file"], r["frame"]) for r in one] == [(r["file"], r["frame"]) for r in many]
    assert len(one) == 4 + 6
    np.testing.assert_allclose(_probs(one), _probs(many), atol=1e-6)


def test_none_detector_sees_what_the_data_layer_decodes(run, folder):
    """predict --detector none on a pre-cropped face = the model on the decoded training image."""
    from ferlab.data.base import Record
    from ferlab.data.decode import decode_record
    from ferlab.evaluation.tta import predict_all
    from ferlab.models import load_model

    model, meta = load_model(run)
    path = folder / "deeper" / "c.jpg"
    expected = predict_all(
        model, decode_record(Record(str(path), 0), 48, 1)[None], meta, None
    ).probs
    [row] = iter_predictions(run, [path], detector="none")
    np.testing.assert_allclose(_probs([row]), expected, atol=1e-6)


def test_tta_averages_the_face_and_its_mirror(run, tmp_path):
    img = _image(tmp_path / "x.png", 11, size=(48, 48))
    flipped = tmp_path / "x_flip.png"
    Image.open(img).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    plain = _probs(list(iter_predictions(run, [img, flipped], detector="none")))
    [tta] = iter_predictions(run, [img], detector="none", tta=True)
    assert not np.allclose(plain[0], plain[1], atol=1e-3)  # the image is not symmetric
    np.testing.assert_allclose(_probs([tta])[0], plain.mean(axis=0), atol=1e-5)


def test_temperature_of_the_metadata_divides_the_logits(tmp_path, folder):
    cold = _save_run(tmp_path / "t1", temperature=1.0)
    warm = _save_run(tmp_path / "t3", temperature=3.0)
    assert json.loads((warm / META).read_text())["temperature"] == 3.0
    p1 = _probs(list(iter_predictions(cold, [folder], detector="none")))
    p3 = _probs(list(iter_predictions(warm, [folder], detector="none")))
    np.testing.assert_allclose(p3, _softmax(np.log(p1) / 3.0), atol=1e-5)
    assert (p3.max(axis=1) < p1.max(axis=1)).all()  # softer, same argmax
    assert (p3.argmax(axis=1) == p1.argmax(axis=1)).all()


# ------------------------------------------------------------------------------ bad input


def test_corrupt_files_are_reported_and_the_run_goes_on(run, folder, tmp_path, monkeypatch):
    import ferlab.data.decode as decode

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    data = (folder / "a.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (bad / "empty.png").write_bytes(b"")
    (bad / "broken.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"garbage" * 100)
    clip = _video(tmp_path / "clip.avi", frames=4)
    (bad / "cut.avi").write_bytes(clip.read_bytes()[:300])
    _image(bad / "huge.png", 9, size=(80, 80))
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 5000)  # 80 x 80 over it, 64 x 56 under
    out = tmp_path / "out"
    with pytest.warns(PredictWarning) as caught:
        summary = predict(run, [bad, folder / "a.jpg"], detector="none", out=out, progress=False)
    rows = {Path(r["file"]).name: r for r in _rows(out / "predictions.jsonl")}
    errors = {n: r["error"] for n, r in rows.items() if r["status"] == "error"}
    assert set(errors) == {"garbage.jpg", "truncated.jpg", "empty.png", "broken.mp4", "cut.avi",
                           "huge.png"}  # fmt: skip
    assert "not an image file" in errors["garbage.jpg"]
    assert "empty" in errors["empty.png"]
    assert "pixel limit" in errors["huge.png"]
    assert "OpenCV cannot open it as a video" in errors["broken.mp4"]
    assert rows["a.jpg"]["status"] == "ok"
    assert summary.errors == 6 and summary.faces == 1 and summary.files == 7
    assert len(caught) == 6 and all("going on" in str(w.message) for w in caught)
    assert "garbage.jpg" in summary.format()


def test_cli_exits_0_with_bad_files_and_warns_on_stderr(run, tmp_path, capsys):
    (tmp_path / "garbage.png").write_bytes(b"nope" * 10)
    _image(tmp_path / "ok.png", 1)
    code = cli.main(["predict", "--weights", str(run), str(tmp_path / "garbage.png"),
                     str(tmp_path / "ok.png"), "--detector", "none", "--no-progress",
                     "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "ferlab: warning:" in err and "garbage.png" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--annotate"], "--annotate needs --out"),
        (["--format", "csv"], "--format csv needs --out"),
    ],
)
def test_bad_arguments_exit_2(run, folder, capsys, extra, message):
    code = cli.main(["predict", "--weights", str(run), str(folder), "--detector", "none", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_missing_input_exits_2_naming_it(run, tmp_path, capsys):
    code = cli.main(["predict", "--weights", str(run), str(tmp_path / "nowhere.jpg")])
    assert code == 2
    assert "nowhere.jpg" in capsys.readouterr().err


def test_weights_without_metadata_are_refused(run, folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare"
    bare.mkdir()
    save_file(load_file(str(run / WEIGHTS)), str(bare / WEIGHTS))  # no header, no meta.json
    code = cli.main(["predict", "--weights", str(bare), str(folder), "--detector", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ferlab: error:" in err and "meta.json" in err and str(bare) in err


def test_a_folder_of_several_runs_is_refused_listing_them(run, folder, tmp_path, capsys):
    exp = tmp_path / "exp"
    for name in ("fer2013/ferlab_vgg-1", "expw/ferlab_vgg-2"):
        shutil.copytree(run, exp / "runs" / name)
    code = cli.main(["predict", "--weights", str(exp), str(folder), "--detector", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds 2 runs" in err and "ferlab_vgg-1" in err and "ferlab_vgg-2" in err
    # an experiment folder holding one run is that run
    shutil.rmtree(exp / "runs" / "expw")
    rows = list(iter_predictions(exp, [folder / "a.jpg"], detector="none"))
    assert rows[0]["status"] == "ok"


def test_onnxruntime_backend_without_an_export_says_how_to_make_one(run, folder, capsys):
    code = cli.main(["predict", "--weights", str(run), str(folder), "--detector", "none",
                     "--backend", "onnxruntime"])  # fmt: skip
    assert code == 2
    assert f"ferlab export --weights {run} --format onnx" in capsys.readouterr().err


# ------------------------------------------------------------------------------ videos


def test_video_frames_timestamps_frame_step_and_emotion_shares(run, tmp_path):
    video = _video(tmp_path / "clip.avi", frames=25, fps=10.0)
    out = tmp_path / "out"
    summary = predict(run, [video], detector="none", frame_step=3, out=out, progress=False)
    rows = _rows(out / "predictions.jsonl")
    assert [r["frame"] for r in rows] == list(range(0, 25, 3))
    assert [r["timestamp_s"] for r in rows] == pytest.approx([f / 10 for f in range(0, 25, 3)])
    assert all(r["status"] == "ok" and r["box"] == [0, 0, 64, 48] for r in rows)
    assert (summary.videos, summary.frames, summary.faces) == (1, 9, 9)
    [v] = summary.outputs["videos"]
    with open(v["shares_csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["start_s"]) for r in table] == [0.0, 1.0, 2.0]
    assert [int(r["frames"]) for r in table] == [4, 3, 2]  # frames 0-9, 12-18, 21-24
    for r in table:
        assert sum(float(r[n]) for n in LABELS) == pytest.approx(1.0)
    labels = [r["label"] for r in rows[:4]]
    assert float(table[0][labels[0]]) == pytest.approx(labels.count(labels[0]) / 4)
    with Image.open(v["shares_png"]) as im:
        assert im.format == "PNG" and im.width > 100


def test_mp4_video_and_images_in_one_run(run, folder, tmp_path):
    video = _video(tmp_path / "clip.mp4", frames=5)
    summary = predict(run, [folder / "a.jpg", video], detector="none", out=tmp_path / "o",
                      progress=False)  # fmt: skip
    assert (summary.images, summary.videos, summary.frames, summary.faces) == (1, 1, 5, 6)


def test_annotated_copies_are_written_and_readable(run, folder, tmp_path):
    video = _video(tmp_path / "clip.avi", frames=8)
    out = tmp_path / "out"
    summary = predict(run, [folder, video], detector="none", frame_step=2, annotate=True,
                      out=out, batch_size=3, progress=False)  # fmt: skip
    ann = out / "annotated"
    for name in ("a.jpg", "b.png", "deeper/c.jpg", "deeper/more/d.bmp"):
        with Image.open(ann / "photos" / name) as im, Image.open(folder / name) as orig:
            assert im.size == orig.size
            drawn = np.asarray(im.convert("RGB")).astype(int)
            assert (np.abs(drawn - np.asarray(orig.convert("RGB")).astype(int)) > 60).any()
    [annotated_video] = ann.glob("clip.*")
    cap = cv2.VideoCapture(str(annotated_video))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 4  # every second frame of eight
    assert summary.outputs["annotated_files"] == 5


def test_annotate_writes_a_gallery_of_every_image_and_face(run, folder, tmp_path):
    video = _video(tmp_path / "clip.avi", frames=8)
    out = tmp_path / "out"
    summary = predict(run, [folder, video], detector="none", frame_step=2, annotate=True,
                      out=out, progress=False)  # fmt: skip
    page = out / "gallery.html"
    assert summary.outputs["gallery"] == str(page)
    html = page.read_text(encoding="utf-8")
    rows = [r for r in _rows(out / "predictions.jsonl") if r["frame"] is None]
    assert html.count('<div class="face">') == len(rows) == 4  # one card per image face
    for r in rows:
        assert r["file"] in html
        top = f"{r['label']} {100 * r['probs'][r['label']]:.0f}%"
        assert top in html, top
        assert f'{100 * r["probs"]["sad"]:.1f}%"></span>' in html  # a bar, as wide as its prob
    for rel in re.findall(r'<img src="(annotated/[^"]+)"', html):
        assert (out / rel).is_file(), rel  # the links lead to the annotated copies
    assert html.count("data:image/jpeg;base64,") == 4  # the face thumbnails are embedded
    assert "clip.avi" in html and 'href="annotated/clip.' in html


@pytest.mark.browser
@pytest.mark.slow
def test_the_gallery_renders_in_chromium(run, folder, tmp_path):
    from browser import VIEWPORTS, DevTools, chromium_binary, open_page, selfcheck

    binary = chromium_binary()
    summary = predict(run, [folder], detector="none", annotate=True, out=tmp_path / "out",
                      progress=False)  # fmt: skip
    page = Path(summary.outputs["gallery"])
    for name, viewport in VIEWPORTS.items():
        tools = DevTools(binary, tmp_path / f"profile_{name}")
        try:
            check = selfcheck(tools, open_page(tools, page.as_uri() + "#selfcheck", viewport))
        finally:
            tools.close()
        assert check["data-images"] == "8", check  # 4 annotated images + 4 face thumbnails
        assert check["data-broken"] == "0", f"images that did not load at {name} width: {check}"
        assert (check["data-faces"], check["data-bars"]) == ("4", str(4 * len(LABELS))), check
        assert check["data-overflow"] == "false", f"wider than the {name} viewport: {check}"


# ------------------------------------------------------------------------------ detectors


def test_haar_gives_a_no_face_row_for_a_blank_image(run, tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(blank)
    out = tmp_path / "out"
    summary = predict(run, [blank], detector="haar", out=out, annotate=True, progress=False)
    [row] = _rows(out / "predictions.jsonl")
    assert row["status"] == "no_face" and row["probs"] is None and row["error"] is None
    assert (summary.faces, summary.no_face_files, summary.errors) == (0, 1, 0)
    assert (out / "annotated" / "blank.png").is_file()


def _faces_canvas(tmp_path: Path, detector) -> Path:
    """Two real ExpW faces the detector finds on their own, pasted side by side."""
    root = shared_dataset("expw/Expw-F")
    picked = []
    for f in sorted((root / "happy").glob("*.jpg")):
        face = np.asarray(Image.open(f).convert("RGB").resize((160, 160)))
        alone = np.full((240, 240, 3), 128, np.uint8)
        alone[40:200, 40:200] = face
        if len(detector.detect(alone)) == 1:
            picked.append(face)
        if len(picked) == 2:
            break
    assert len(picked) == 2, f"no two faces in {root / 'happy'} that the detector finds alone"
    canvas = np.full((260, 520, 3), 128, np.uint8)
    canvas[50:210, 40:200] = picked[0]
    canvas[50:210, 320:480] = picked[1]
    path = tmp_path / "two_faces.jpg"
    Image.fromarray(canvas).save(path, quality=95)
    return path


@pytest.mark.realdata
def test_haar_finds_both_faces_of_a_two_face_photo(run, tmp_path):
    from ferlab.face import make_detector

    photo = _faces_canvas(tmp_path, make_detector("haar"))
    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((260, 520, 3), 128, np.uint8)).save(blank)
    out = tmp_path / "out"
    summary = predict(run, [photo, blank], detector="haar", out=out, annotate=True,
                      progress=False)  # fmt: skip
    rows = _rows(out / "predictions.jsonl")
    faces = [r for r in rows if r["file"] == str(photo)]
    assert [r["status"] for r in faces] == ["ok", "ok"] and [r["face"] for r in faces] == [0, 1]
    centres = sorted((r["box"][0] + r["box"][2]) / 2 for r in faces)
    assert 40 < centres[0] < 200 and 320 < centres[1] < 480  # one box on each pasted face
    assert [r["status"] for r in rows if r["file"] == str(blank)] == ["no_face"]
    assert (summary.faces, summary.no_face_files) == (2, 1)


@pytest.mark.realdata
@pytest.mark.slow
def test_mtcnn_gives_scores_and_landmarks_and_aligns(run, tmp_path):
    from ferlab.face import make_detector

    photo = _faces_canvas(tmp_path, make_detector("mtcnn"))
    rows = list(iter_predictions(run, [photo], detector="mtcnn", align=True))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert 0.5 < r["score"] <= 1.0
        assert len(r["landmarks"]) == 5
        x0, y0, x1, y1 = r["box"]
        assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in r["landmarks"])
    plain = list(iter_predictions(run, [photo], detector="mtcnn"))
    assert [r["box"] for r in plain] == [r["box"] for r in rows]


# ------------------------------------------------------------------------------ onnxruntime


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_onnxruntime_backend_matches_torch(run, folder, tmp_path, dynamic_batch):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("ferlab.export")
    if not hasattr(export, "export_onnx"):
        pytest.skip("ferlab.export.export_onnx is not written yet")
    exported = tmp_path / "exp" / "model.onnx"
    onnx = export.export_onnx(run, out=exported, dynamic_batch=dynamic_batch)
    video = _video(tmp_path / "clip.avi", frames=4)
    inputs = [folder, video]
    eager = list(iter_predictions(run, inputs, detector="none", batch_size=3))
    ort = list(iter_predictions(onnx, inputs, detector="none", batch_size=3))
    assert [r["file"] for r in ort] == [r["file"] for r in eager] and len(ort) == 8
    diff = np.abs(_probs(ort) - _probs(eager)).max()
    assert diff < 1e-4, diff
    tta_eager = _probs(list(iter_predictions(run, inputs, detector="none", tta=True)))
    tta_ort = _probs(list(iter_predictions(onnx, inputs, detector="none", tta=True)))
    assert np.abs(tta_ort - tta_eager).max() < 1e-4


def test_onnxruntime_backend_with_a_run_folder_uses_its_model_onnx(run, folder, tmp_path):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("ferlab.export")
    if not hasattr(export, "export_onnx"):
        pytest.skip("ferlab.export.export_onnx is not written yet")
    copy = shutil.copytree(run, tmp_path / "run")
    export.export_onnx(copy)  # default: <run>/model.onnx
    summary = predict(copy, [folder], detector="none", backend="onnxruntime",
                      out=tmp_path / "out", progress=False)  # fmt: skip
    assert summary.backend == "onnxruntime" and summary.weights == str(copy / "model.onnx")
    assert summary.faces == 4
    assert not math.isnan(summary.faces_per_s or math.nan)


class _FlakyDetector:
    """Finds one face in every image, and fails on images 77 pixels wide."""

    name = "flaky"

    def detect(self, rgb):
        from ferlab.face import Face

        if rgb.shape[1] == 77:
            raise RuntimeError("boom")
        return [Face(box=(1.0, 2.0, 30.0, 31.0), score=0.9, landmarks=None)]

    def detect_batch(self, images):
        return [self.detect(im) for im in images]


def test_a_detector_failing_on_one_image_gives_an_error_row_only_there(run, tmp_path, monkeypatch):
    import ferlab.face

    monkeypatch.setattr(ferlab.face, "make_detector", lambda name, **kw: _FlakyDetector())
    paths = [_image(tmp_path / f"{i}.png", i, size=(60, 77 if i == 2 else 64)) for i in range(5)]
    # mtcnn: detection on the image itself (Haar's runs on a padded copy), so the fake sees
    # each image's own width and its box comes back unshifted
    with pytest.warns(PredictWarning, match="boom"):
        rows = list(iter_predictions(run, paths, detector="mtcnn"))
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok", "ok"]
    assert rows[2]["error"] == "face detection failed (RuntimeError: boom)"
    assert rows[0]["box"] == [1.0, 2.0, 30.0, 31.0] and rows[0]["score"] == 0.9


def test_detection_batches_do_not_change_the_results(run, folder, tmp_path, monkeypatch):
    import ferlab.predict.engine as engine

    video = _video(tmp_path / "clip.avi", frames=10)
    inputs = [folder, video, folder / "a.jpg"]
    batched = list(iter_predictions(run, inputs, detector="haar", batch_size=5))
    monkeypatch.setattr(engine, "DETECT_BATCH", 1)
    single = list(iter_predictions(run, inputs, detector="haar", batch_size=5))
    assert batched == single
    order = [(Path(r["file"]).name, r["frame"]) for r in batched]
    assert order[4:] == [("clip.avi", f) for f in range(10)] + [("a.jpg", None)]


# ------------------------------------------------------------------------------ bench/predict.py


def _bench():
    import importlib
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module("predict")


def test_bench_matches_each_box_once_best_iou_first():
    bench = _bench()
    rows = [{"box": [0, 0, 10, 10]}, {"box": [1, 1, 11, 11]}, {"box": [50, 50, 60, 60]}]
    truth = [((0.0, 0.0, 10.0, 10.0), "happy"), ((40.0, 40.0, 48.0, 48.0), "sad")]
    pairs = bench.match(rows, truth)
    assert pairs == [(rows[0], "happy")]  # the second row overlaps the same box: unmatched
    assert bench.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)


@pytest.mark.slow
@pytest.mark.realdata
def test_bench_predict_smoke_on_expw_photos(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    data = shared_dataset("expw-origin")
    cmd = [sys.executable, str(REPO / "bench" / "predict.py"), "--smoke", "--json",
           "--detectors", "haar", "--data", str(data)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    photos = res["photos"]["haar"]
    assert photos["photos"] == 8 and photos["rows"] >= 8 and photos["errors"] == 0
    assert set(photos["stages"]["seconds"]) == {"decode", "detect", "crop", "classify"}
    assert [r["frames"] for r in res["memory"]["runs"]] == [10, 30]
    assert res["video"]["haar"]["frames_read"] == res["video"]["frames"] == 8


def test_padded_batches_give_the_unpadded_results_with_few_shapes():
    from ferlab.predict.backends import padded_batches

    seen: list[int] = []

    def run(chunk: np.ndarray) -> np.ndarray:
        seen.append(len(chunk))
        return chunk.reshape(len(chunk), -1).sum(axis=1, keepdims=True) * 2.0

    x = np.arange(70 * 3, dtype=np.float32).reshape(70, 3)
    out = padded_batches(run, x, 64)
    np.testing.assert_array_equal(out, x.sum(axis=1, keepdims=True) * 2.0)
    assert seen == [64, 8]  # 64, then the 6 left padded to 8
    seen.clear()
    for n in range(1, 65):
        padded_batches(run, x[:n], 48)
    assert set(seen) == {1, 2, 4, 8, 16, 32, 48}
