"""Weights on disk: safetensors + meta.json roundtrips, local pretrained files, refused pickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ferlab.layout import META, WEIGHTS
from ferlab.models import (
    CorruptWeightsError,
    ModelMeta,
    UnsafeWeightsError,
    WeightsMismatchError,
    WeightsNotFoundError,
    create_model,
    load_model,
    read_meta,
    read_state_file,
    save_model,
)
from ferlab.models import io as model_io

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _meta(arch: str = "ferlab_vgg", channels: int = 1, **kw: object) -> ModelMeta:
    return ModelMeta(
        architecture=arch,
        labels=LABELS,
        image_size=48,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        **kw,  # type: ignore[arg-type]
    )


def _trained_ish(model: torch.nn.Module) -> torch.nn.Module:
    """Move BN statistics and weights away from their init so a roundtrip test can fail."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        model(torch.randn(8, 1, 48, 48))  # updates running stats
    return model.eval()


# ---------------------------------------------------------------- metadata


def test_meta_roundtrip() -> None:
    meta = _meta(kwargs={"width_mult": 0.5, "widths": [16, 32, 64, 128]}, extra={"acc": 0.69})
    d = meta.to_dict()
    assert d["format"] == "ferlab-model/1"
    json.dumps(d)  # JSON-able
    assert ModelMeta.from_dict(d) == meta
    assert ModelMeta.from_json(meta.to_json()) == meta
    assert isinstance(ModelMeta.from_json(meta.to_json()).mean, tuple)


def test_meta_validates() -> None:
    with pytest.raises(ValueError, match="canonical"):
        ModelMeta(architecture="x", labels=["happiness"])
    with pytest.raises(ValueError, match="one value per channel"):
        ModelMeta(architecture="x", labels=LABELS, channels=3, mean=(0.5,), std=(0.25,))
    with pytest.raises(ValueError, match="lacks"):
        ModelMeta.from_dict({"labels": LABELS})
    with pytest.warns(UserWarning, match="unknown keys"):
        m = ModelMeta.from_dict({**_meta().to_dict(), "from_the_future": 1})
    assert m == _meta()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("architecture", 3, "architecture must be a model name"),
        ("labels", "happy", "list of emotion names"),
        ("labels", ["happy", "happy"], "twice"),
        ("image_size", 48.0, "integers"),
        ("channels", True, "integers"),
        ("std", [float("nan")], "> 0"),
        ("mean", "0.5", "mean and std must be lists"),
        ("kwargs", None, "mappings"),
        ("kwargs", {"pretrained": "/elsewhere/evil.pt"}, "may not set"),
        ("architecture", "ferlab_vgg\nferlab: error: fake", "model name"),
        ("extra", {"data": ["lab"]}, "extra.data"),
    ],
)
def test_meta_from_a_file_checks_every_field(field: str, value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ModelMeta.from_dict({**_meta().to_dict(), field: value})


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("ferlab_vgg", {"width_mult": 0.5}), ("ferlab_resnet", {}), ("ferlab_mini_xception", {})],
)
def test_save_load_roundtrip_gives_identical_outputs(
    tmp_path: Path, arch: str, kwargs: dict
) -> None:
    model = _trained_ish(create_model(arch, 7, 1, **kwargs))
    meta = _meta(arch, kwargs=kwargs, extra={"run": "abc"})
    weights = save_model(model, meta, tmp_path / "run")
    assert weights == tmp_path / "run" / WEIGHTS
    x = torch.rand(4, 1, 48, 48)
    with torch.no_grad():
        expected = model(x)
    for where in (tmp_path / "run", weights, tmp_path / "run" / META):
        loaded, meta2 = load_model(where)
        assert meta2 == meta
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)


def test_roundtrip_for_a_timm_model_with_image_size(tmp_path: Path) -> None:
    model = create_model("vit_tiny_patch16_224", 3, 1, image_size=32).eval()
    meta = ModelMeta("vit_tiny_patch16_224", ["angry", "happy", "neutral"], image_size=32)
    save_model(model, meta, tmp_path)
    loaded, _ = load_model(tmp_path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_metadata_also_lives_in_the_weights_header(tmp_path: Path) -> None:
    model = create_model("ferlab_mini_xception", 7)
    save_model(model, _meta("ferlab_mini_xception"), tmp_path)
    (tmp_path / META).unlink()
    assert read_meta(tmp_path / WEIGHTS) == _meta("ferlab_mini_xception")
    loaded, _ = load_model(tmp_path / WEIGHTS)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_load_model_picks_the_device_like_everyone_else(tmp_path: Path) -> None:
    from ferlab.device import pick_device

    save_model(create_model("ferlab_mini_xception", 7), _meta("ferlab_mini_xception"), tmp_path)
    loaded, _ = load_model(tmp_path, device="auto")
    assert next(loaded.parameters()).device.type == pick_device("auto").type
    with pytest.raises(ValueError, match=r"Unknown device 'tpu' for load_model\(device=\.\.\.\)"):
        load_model(tmp_path, device="tpu")


def test_load_model_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match=r"weights\.safetensors"):
        load_model(tmp_path)
    model = create_model("ferlab_vgg", 7)
    save_model(model, _meta(), tmp_path)
    # metadata that describes another width than the weights: strict loading refuses
    meta = json.loads((tmp_path / META).read_text())
    meta["kwargs"] = {"width_mult": 2.0}
    (tmp_path / META).write_text(json.dumps(meta))
    with pytest.raises(WeightsMismatchError, match="does not fit ferlab_vgg") as err:
        load_model(tmp_path)
    assert "other shapes" in str(err.value) and str(tmp_path / META) in str(err.value)


def test_shared_tensors_are_saved(tmp_path: Path) -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight

    state = model_io.plain_state_dict(Tied())
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    back = read_state_file(path)
    assert torch.equal(back["a.weight"], back["b.weight"])


# ---------------------------------------------------------------- atomic writes


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_model(create_model("ferlab_mini_xception", 7), _meta("ferlab_mini_xception"), tmp_path)
    save_model(create_model("ferlab_mini_xception", 7), _meta("ferlab_mini_xception"), tmp_path)
    assert sorted(os.listdir(tmp_path)) == [META, WEIGHTS]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    model = create_model("ferlab_mini_xception", 7)
    save_model(model, _meta("ferlab_mini_xception"), tmp_path)
    before = (tmp_path / WEIGHTS).read_bytes()
    real_fsync = os.fsync

    def crash(fd: int) -> None:
        # A kill once the new weights sit in the temp file, before the rename.
        if any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(create_model("ferlab_mini_xception", 7), _meta("ferlab_mini_xception"), tmp_path)
    assert (tmp_path / WEIGHTS).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [META, WEIGHTS]


# ---------------------------------------------------------------- pretrained=PATH


def _rgb_source(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(3)
    src = create_model("ferlab_resnet", num_classes, channels=3)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return src.eval()


def test_pretrained_path_adapts_rgb_conv_to_grey_and_replaces_head(tmp_path: Path) -> None:
    src = _rgb_source(num_classes=10)
    path = tmp_path / "rgb.safetensors"
    save_file(model_io.plain_state_dict(src), str(path))
    dst = create_model("ferlab_resnet", 7, channels=1, pretrained=str(path)).eval()
    assert dst.stem[0].weight.shape[1] == 1  # type: ignore[index]
    assert torch.allclose(dst.stem[0].weight, src.stem[0].weight.sum(1, keepdim=True))  # type: ignore[index]
    # a grey image gives the same features through the summed conv as R=G=B through the original
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        a = dst.stages(dst.stem(x))  # type: ignore[operator]
        b = src.stages(src.stem(x.repeat(1, 3, 1, 1)))  # type: ignore[operator]
    assert torch.allclose(a, b, atol=1e-4)
    assert dst.head.fc.out_features == 7  # type: ignore[union-attr]
    fresh = create_model("ferlab_resnet", 7, channels=1)
    assert not torch.equal(dst.head.fc.weight[:1], src.head.fc.weight[:1])  # type: ignore[index]
    assert dst.head.fc.weight.shape == fresh.head.fc.weight.shape  # type: ignore[union-attr]


def test_pretrained_path_grey_to_rgb_and_nested_pth(tmp_path: Path) -> None:
    torch.manual_seed(0)
    grey = create_model("ferlab_vgg", 7, channels=1, width_mult=0.5)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in grey.state_dict().items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    rgb = create_model("ferlab_vgg", 7, channels=3, width_mult=0.5, pretrained=path).eval()
    grey.eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(rgb(x.repeat(1, 3, 1, 1)), grey(x), atol=1e-5)


def test_pretrained_path_into_a_timm_model(tmp_path: Path) -> None:
    src = create_model("resnet18", 1000, channels=3)
    path = tmp_path / "resnet18.pth"
    torch.save({"model": {f"model.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = create_model("resnet18", 7, channels=1, pretrained=str(path))
    assert torch.allclose(dst.conv1.weight, src.conv1.weight.sum(1, keepdim=True))  # type: ignore[union-attr]
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)  # type: ignore[index]
    assert dst.fc.out_features == 7  # type: ignore[union-attr]


def test_pretrained_path_from_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(model_io.plain_state_dict(create_model("ferlab_mini_xception", 7)), str(path))
    with pytest.raises(WeightsMismatchError, match="not in the file"):
        create_model("ferlab_resnet", 7, pretrained=path)
    wide = tmp_path / "wide.safetensors"
    save_file(model_io.plain_state_dict(create_model("ferlab_vgg", 7, width_mult=2.0)), str(wide))
    with pytest.raises(WeightsMismatchError, match="other shapes"):
        create_model("ferlab_vgg", 7, pretrained=wide)


def test_pretrained_path_reports_unexpected_keys(tmp_path: Path) -> None:
    state = model_io.plain_state_dict(create_model("ferlab_mini_xception", 7))
    state["extra_branch.weight"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    with pytest.warns(UserWarning, match="extra_branch.weight"):
        create_model("ferlab_mini_xception", 7, pretrained=path)


def test_weights_files_that_hold_no_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "note": "no tensors"}, path)
    with pytest.raises(CorruptWeightsError, match="not a state dict"):
        read_state_file(path)
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    with pytest.raises(CorruptWeightsError, match="unknown weights format"):
        read_state_file(odd)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(CorruptWeightsError, match="not a readable safetensors"):
        read_state_file(broken)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CorruptWeightsError, match=r"empty\.pt is not a readable PyTorch"):
        read_state_file(empty)


# ---------------------------------------------------------------- malicious pickles


class _Payload:
    """Unpickling this creates a file: the marker proves whether code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    evil = {"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(evil, fh)
    # the payload is live: plain unpickling of a copy would create the marker
    probe_marker = tmp_path / "probe"
    with open(tmp_path / "probe.pkl", "wb") as fh:
        pickle.dump(_Payload(probe_marker), fh)
    with open(tmp_path / "probe.pkl", "rb") as fh:
        pickle.load(fh).close()
    assert probe_marker.exists()

    with pytest.raises(UnsafeWeightsError, match="never unpickles code") as err:
        create_model("ferlab_mini_xception", 7, pretrained=path)
    assert str(path) in str(err.value) and "safetensors" in str(err.value)
    assert not marker.exists()
    (tmp_path / "run").mkdir()
    os.replace(path, tmp_path / "run" / "weights.pth")
    (tmp_path / "run" / META).write_text(_meta("ferlab_mini_xception").to_json())
    with pytest.raises(UnsafeWeightsError):
        load_model(tmp_path / "run" / "weights.pth")
    assert not marker.exists()


def test_pretrained_accepts_a_ferlab_run_folder_for_fine_tuning(tmp_path: Path) -> None:
    src = _trained_ish(create_model("ferlab_vgg", 7, 1))
    save_model(src, _meta(), tmp_path / "run")
    dst = create_model("ferlab_vgg", 3, 1, pretrained=str(tmp_path / "run"))
    for name in ("stages.0.0.0.weight", "stages.3.1.1.running_mean"):
        assert torch.equal(dst.state_dict()[name], src.state_dict()[name])
    assert dst.head.fc.out_features == 3  # type: ignore[union-attr]
