"""``ferlab export``: ONNX parity with PyTorch on real FER2013 faces, run by a client that
imports neither ferlab nor torch, the sidecar metadata, dynamic batch, the CLI and bad weights.

Models are randomly initialised (``pretrained: false``) and saved as a run folder with
``ferlab.models.save_model``; their temperature is set to 0.7 so that the calibrated softmax
inside the graph is checked too.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_dataset
from ferlab.cli import main
from ferlab.config import ConfigError
from ferlab.data.base import Record
from ferlab.data.decode import decode_record
from ferlab.evaluation.tta import predict_all
from ferlab.labels import EMOTIONS, INDEX
from ferlab.models import ModelMeta, create_model, default_norm, save_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ferlab.export import ONNX_FORMAT, export_onnx, sidecar_path  # noqa: E402

LABELS = list(EMOTIONS)
TEMPERATURE = 0.7
PER_CLASS = 2  # real images per emotion

# The deployment: numpy, PIL, onnxruntime and the sidecar JSON; nothing of ferlab or torch.
CLIENT = r"""
import hashlib, json, sys
import numpy as np
import onnxruntime as ort
from PIL import Image

onnx_path, out_path, *images = sys.argv[1:]
meta = json.load(open(onnx_path[: -len(".onnx")] + ".json"))
assert meta["format"] == "ferlab-onnx/1", meta["format"]
assert hashlib.sha256(open(onnx_path, "rb").read()).hexdigest() == meta["sha256"]
size, channels = meta["image_size"], meta["channels"]

def load(path):
    im = Image.open(path)
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32) / 255.0      # (H, W) or (H, W, 3), in [0, 1]
    return a[None] if channels == 1 else a.transpose(2, 0, 1)

x = np.stack([load(p) for p in images])                  # (N, C, H, W)
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
assert [i.name for i in session.get_inputs()] == [meta["input"]["name"]] == ["pixels"]
assert [o.name for o in session.get_outputs()] == ["logits", "probs"]
if meta["dynamic_batch"]:
    logits, probs = session.run(["logits", "probs"], {"pixels": x})
else:
    parts = [session.run(["logits", "probs"], {"pixels": x[i : i + 1]}) for i in range(len(x))]
    logits = np.concatenate([p[0] for p in parts])
    probs = np.concatenate([p[1] for p in parts])
np.savez(out_path, logits=logits, probs=probs)
print(json.dumps({"labels": meta["labels"], "top": [meta["labels"][i] for i in probs.argmax(1)]}))
assert "torch" not in sys.modules and "ferlab" not in sys.modules, "the client imported them"
"""


def _run_folder(tmp: Path, arch: str, size: int, channels: int, **kwargs: object) -> Path:
    torch.manual_seed(0)
    model = create_model(arch, len(LABELS), channels, pretrained=False, image_size=size, **kwargs)
    mean, std = default_norm(channels, model)
    meta = ModelMeta(
        arch,
        LABELS,
        image_size=size,
        channels=channels,
        mean=mean,
        std=std,
        kwargs=dict(kwargs),
        temperature=TEMPERATURE,
    )
    run = tmp / arch.replace(":", "_")
    save_model(model, meta, run)
    return run


def _fer2013_images() -> list[Path]:
    root = shared_dataset("fer2013/test")
    paths: list[Path] = []
    for emotion in EMOTIONS:
        found = sorted((root / emotion).glob("*.jpg"))[:PER_CLASS]
        if not found:
            pytest.skip(f"no FER2013 test images in {root / emotion}")
        paths += found
    return paths


def _client(onnx_path: Path, images: list[Path], tmp: Path) -> tuple[np.ndarray, dict]:
    script = tmp / "client.py"
    script.write_text(CLIENT)
    out = tmp / "client_out.npz"
    # -I: no PYTHONPATH, no current folder on sys.path, as a fresh deployment would run
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(onnx_path), str(out), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as z:
        return z["probs"], json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("arch", "size", "channels", "dynamic"),
    [
        ("ferlab_vgg", 48, 1, False),
        ("tv:resnet18", 64, 3, True),
        pytest.param("convnext_atto", 48, 3, True, marks=pytest.mark.slow),
        pytest.param("vit_tiny_patch16_224", 32, 3, False, marks=pytest.mark.slow),
    ],
)
def test_onnx_matches_pytorch_on_real_faces_in_a_client_without_torch(
    tmp_path: Path, arch: str, size: int, channels: int, dynamic: bool
) -> None:
    images = _fer2013_images()
    run = _run_folder(tmp_path, arch, size, channels)
    path = export_onnx(run, dynamic_batch=dynamic)
    assert path == run / "model.onnx"
    onnx.checker.check_model(str(path))

    probs, info = _client(path, images, tmp_path)
    # PyTorch on the same files, decoded the way the data layer decodes them
    from ferlab.models import load_model

    model, meta = load_model(run)
    arrays = np.stack(
        [decode_record(Record(str(p), INDEX["happy"]), size, channels) for p in images]
    )
    ref = predict_all(
        model, arrays, meta, None, device="cpu", temperature=meta.temperature
    ).plain_calibrated
    assert probs.shape == (len(images), len(LABELS))
    assert float(np.abs(probs - ref).max()) < 1e-4
    assert info["labels"] == LABELS
    assert info["top"] == [LABELS[i] for i in ref.argmax(1)]
    # the temperature is inside: the probabilities are not the plain softmax
    plain = predict_all(model, arrays, meta, None, device="cpu").plain
    assert float(np.abs(probs - plain).max()) > 1e-3


def _tiny_run(tmp: Path) -> Path:
    return _run_folder(tmp, "ferlab_vgg", 16, 1, widths=[8, 16, 16, 32], depths=[1, 1, 1, 1])


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_the_cli_writes_the_model_and_its_metadata_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _tiny_run(tmp_path)
    assert main(["export", "--weights", str(run), "--format", "onnx", "--dynamic-batch"]) == 0
    path, side = run / "model.onnx", run / "model.json"
    assert f"wrote {path}" in capsys.readouterr().out
    meta = json.loads(side.read_text())
    assert meta["format"] == ONNX_FORMAT and sidecar_path(path) == side
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (meta["labels"], meta["image_size"], meta["channels"]) == (LABELS, 16, 1)
    assert (meta["mean"], meta["std"], meta["temperature"]) == ([0.5], [0.25], TEMPERATURE)
    assert meta["architecture"] == "ferlab_vgg" and meta["kwargs"]["depths"] == [1, 1, 1, 1]
    assert meta["dynamic_batch"] is True and isinstance(meta["opset"], int)
    assert meta["input"]["name"] == "pixels" and meta["input"]["shape"] == ["batch", 1, 16, 16]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probs"]
    assert {"ferlab_version"} <= set(meta)
    # the same metadata inside the model (all but the hash of the file itself)
    model = onnx.load(str(path))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props == {k: v for k, v in meta.items() if k != "sha256"}
    assert _session(path).get_modelmeta().custom_metadata_map["format"] == json.dumps(ONNX_FORMAT)
    assert not list(run.glob(".*.tmp"))  # written atomically, nothing left over


def test_dynamic_batch_runs_any_batch_and_a_static_export_refuses_batch_5(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path)
    dynamic = export_onnx(run, out=tmp_path / "dyn.onnx", dynamic_batch=True)
    static = export_onnx(run, out=tmp_path / "static.onnx", opset=18)
    assert json.loads(sidecar_path(static).read_text())["opset"] == 18
    rng = np.random.default_rng(0)
    x5 = rng.random((5, 1, 16, 16), dtype=np.float32)
    dyn = _session(dynamic)
    logits5, probs5 = dyn.run(None, {"pixels": x5})
    _, probs1 = dyn.run(None, {"pixels": x5[:1]})
    assert probs5.shape == (5, 7) and probs1.shape == (1, 7)
    np.testing.assert_allclose(probs1[0], probs5[0], atol=1e-6)
    np.testing.assert_allclose(probs5.sum(1), 1.0, atol=1e-5)
    # probs is softmax(logits / T)
    z = logits5 / TEMPERATURE
    expected = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(probs5, expected / expected.sum(1, keepdims=True), atol=1e-6)
    st = _session(static)
    assert st.run(None, {"pixels": x5[:1]})[1].shape == (1, 7)
    with pytest.raises(Exception, match=r"(?s)invalid dimensions.*pixels.*Got: 5 Expected: 1"):
        st.run(None, {"pixels": x5})


def test_bad_weights_and_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(*argv: str) -> str:
        assert main(["export", *argv]) == 2
        return capsys.readouterr().err

    assert "No weights at" in error("--weights", str(tmp_path / "nothing"))
    run = _tiny_run(tmp_path)
    (run / "meta.json").unlink()
    (run / "weights.safetensors").write_bytes(b"\x00" * 64)
    assert "not a readable safetensors file" in error("--weights", str(run))
    good = _tiny_run(tmp_path / "other")
    (good / "meta.json").write_text("{not json")
    msg = error("--weights", str(good))
    assert "ferlab: error:" in msg and str(good / "meta.json") in msg
    fine = _tiny_run(tmp_path / "fine")
    assert "must name a .onnx file" in error("--weights", str(fine), "--out", "x.txt")
    assert "--opset 11 is too old" in error("--weights", str(fine), "--opset", "11")
    assert not (fine / "model.onnx").exists()


def test_missing_onnx_packages_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ferlab\[onnx\]'"):
        export_onnx(tmp_path)


def test_importing_the_module_imports_neither_torch_nor_onnx() -> None:
    code = "import sys, ferlab.export; print(sorted({'torch', 'onnx'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
