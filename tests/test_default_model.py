"""The model shipped inside ferlab: ``--weights default`` and ``load_model("default")`` name it,
``ferlab predict`` uses it without ``--weights``, and a build without one says what to do.

The shipped folder is replaced by a tiny saved model here (``SHIPPED`` patched), so these tests
check the plumbing on any checkout; the real model's own card and metadata are checked where
it is committed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ferlab
import ferlab.models.meta as meta_mod
from ferlab.cli import main
from ferlab.models import ModelMeta, WeightsNotFoundError, create_model, save_model

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
KWARGS = {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1]}


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny model in the place of the shipped one."""
    torch.manual_seed(0)
    model = create_model("ferlab_vgg", len(LABELS), channels=1, image_size=48, **KWARGS).eval()
    folder = tmp_path / "site-packages" / "ferlab" / "models" / "default"
    meta = ModelMeta("ferlab_vgg", LABELS, 48, 1, (0.5,), (0.25,), kwargs=KWARGS)
    save_model(model, meta, folder)
    monkeypatch.setattr(meta_mod, "SHIPPED", folder)
    return folder


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 56, 3), dtype=np.uint8)).save(path)
    return path


def test_load_model_default_is_the_shipped_model(shipped: Path) -> None:
    model, meta = ferlab.load_model("default")
    again, _ = ferlab.load_model(shipped)
    x = torch.rand(2, 1, 48, 48)
    assert meta.labels == LABELS and torch.equal(model(x), again(x))


def test_a_folder_named_default_is_reached_as_a_path(shipped, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert meta_mod.resolve_weights("default") == shipped
    assert meta_mod.resolve_weights("./default") == Path("./default")


def test_predict_without_weights_uses_the_shipped_model(shipped, tmp_path, capsys) -> None:
    photo = _photo(tmp_path / "photo.png")
    assert main(["predict", str(photo), "--detector", "none"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["status"] == "ok" and set(row["probs"]) == set(LABELS)
    assert main(["predict", "--weights", str(shipped), str(photo), "--detector", "none"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["probs"] == row["probs"]


def test_evaluate_and_export_accept_default(shipped, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", "--weights", "default", "--data", "synthetic:lab", "--json",
            "--cache-dir", str(tmp_path / "cache"), "--option", "n_test=35"]  # fmt: skip
    assert main(argv) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n"] == 35
    assert main([a for a in argv if a != "--json"]) == 0  # the same scores, as text
    text = capsys.readouterr().out
    assert f"accuracy           {100 * scores['accuracy']:6.2f}%" in text
    assert "test split, n=35 (default split settings)" in text  # no run recorded its data
    assert "n=35" in text and "per class (precision / recall / F1 / support):" in text
    assert main(["export", "--weights", "default"]) == 0
    assert (tmp_path / "default.onnx").is_file()  # beside the user, not inside the package
    assert not (shipped / "model.onnx").exists()


def test_a_build_without_a_default_model_says_what_to_do(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(meta_mod, "SHIPPED", tmp_path / "empty")
    with pytest.raises(WeightsNotFoundError, match=r"ships no default model.*fer2013_cpu"):
        ferlab.load_model("default")
    assert main(["predict", str(_photo(tmp_path / "p.png"))]) == 2
    assert "ships no default model" in capsys.readouterr().err
