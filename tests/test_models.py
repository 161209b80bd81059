"""The model factory: every ferlab net and a spread of timm/torchvision nets train on tiny input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferlab.models import (
    DEFAULT_CPU_MODEL,
    PretrainedUnavailableError,
    UnknownModelError,
    constants,
    create_model,
    default_data_config,
    default_norm,
    ferlab_models,
    list_models,
    register_model,
    registry,
)
from ferlab.models import pretrained as pre


def _forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in params if p.grad is not None)
    assert any(p.grad.abs().sum() > 0 for _, p in params if p.grad is not None)


def test_registry_lists_the_compact_nets() -> None:
    names = ferlab_models()
    for n in ("ferlab_vgg", "ferlab_mini_xception", "ferlab_resnet"):
        assert n in names
    assert DEFAULT_CPU_MODEL in names


@pytest.mark.parametrize("name", ferlab_models())
@pytest.mark.parametrize("chans", [1, 3])
def test_ferlab_net_forward_backward(name: str, chans: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, channels=chans)
    _forward_backward(model, torch.randn(2, chans, 48, 48), 7)


@pytest.mark.parametrize("name", ferlab_models())
def test_ferlab_net_is_size_agnostic_and_deterministic_in_eval(name: str) -> None:
    model = create_model(name, num_classes=5, channels=1).eval()
    with torch.no_grad():
        x = torch.randn(3, 1, 64, 64)
        a, b = model(x), model(x)
        assert model(torch.randn(1, 1, 40, 40)).shape == (1, 5)
    assert torch.equal(a, b)


def test_ferlab_net_carries_its_data_config() -> None:
    model = create_model("ferlab_vgg", num_classes=7, channels=1, image_size=48)
    cfg = model.pretrained_cfg  # type: ignore[attr-defined]
    assert cfg["input_size"] == (1, 48, 48)
    assert cfg["classifier"] == "head.fc"
    assert isinstance(model.get_submodule(cfg["classifier"]), nn.Linear)
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)


def test_mini_xception_is_under_100k_parameters() -> None:
    model = create_model("ferlab_mini_xception", num_classes=7)
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_width_mult_and_kwargs_reach_the_architecture() -> None:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    base = create_model("ferlab_vgg", 7)
    wide = create_model("ferlab_vgg", 7, width_mult=1.5)
    assert count(wide) > 1.8 * count(base)
    drop = create_model("ferlab_vgg", 7, drop_rate=0.5)
    assert drop.head.drop.p == 0.5  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="ferlab_vgg"):
        create_model("ferlab_vgg", 7, no_such_option=1)


def test_dropout_sits_before_the_classifier() -> None:
    for name in ferlab_models():
        model = create_model(name, 7)
        head = model.head
        assert isinstance(head.drop, nn.Dropout) and head.drop.p > 0, name


def test_register_model_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("ferlab_vgg")(lambda num_classes, in_chans=1: nn.Linear(1, num_classes))
    name = "ferlab_test_tiny_net"

    @register_model(name)
    def tiny(num_classes: int, in_chans: int = 1, image_size: int = 48) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size**2, num_classes))

    try:
        assert name in list_models("ferlab_*")
        m = create_model(name, 4, channels=1, image_size=8)
        assert m(torch.randn(2, 1, 8, 8)).shape == (2, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)(tiny)
    finally:
        del registry._REGISTRY[name]


def test_list_models_covers_ferlab_timm_and_torchvision() -> None:
    everything = list_models()
    assert "ferlab_vgg" in everything and "convnext_atto" in everything
    assert "tv:resnet18" in everything
    assert list_models("ferlab_*") == ferlab_models()
    assert "tv:resnet18" in list_models("tv:resnet1*")
    assert "tv:resnet18" in list_models("resnet1*") and "resnet18" in list_models("resnet1*")
    assert list_models("no_such_family_*") == []


@pytest.mark.parametrize(
    ("typo", "expected"),
    [("resnet5O", "resnet50"), ("ferlab_vg", "ferlab_vgg"), ("tv:resnet81", "tv:resnet18")],
)
def test_unknown_name_lists_close_matches(typo: str, expected: str) -> None:
    with pytest.raises(UnknownModelError, match="Unknown model") as err:
        create_model(typo, 7)
    assert expected in str(err.value)
    assert isinstance(err.value, ValueError)


# timm/torchvision nets on tiny input: (name, input size, extra kwargs)
HUB_NETS = [
    pytest.param("efficientnet_b0", 32, {}, id="efficientnet_b0"),
    pytest.param("convnext_atto", 32, {}, id="convnext_atto"),
    pytest.param("vit_tiny_patch16_224", 32, {}, id="vit_tiny"),
    pytest.param("tv:resnet18", 32, {}, id="tv_resnet18"),
    pytest.param("densenet121", 32, {}, id="densenet121", marks=pytest.mark.slow),
    pytest.param("resnet50", 32, {}, id="resnet50", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "size", "kwargs"), HUB_NETS)
@pytest.mark.parametrize("chans", [1, 3])
def test_hub_architectures_forward_backward(
    name: str, size: int, kwargs: dict[str, object], chans: int
) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, channels=chans, image_size=size, **kwargs)
    _forward_backward(model, torch.randn(2, chans, size, size), 5)


def test_vit_takes_the_image_size() -> None:
    model = create_model("vit_tiny_patch16_224", 3, channels=1, image_size=64)
    assert model.patch_embed.img_size == (64, 64)  # type: ignore[union-attr]
    assert model.pos_embed.shape[1] == 1 + (64 // 16) ** 2  # type: ignore[union-attr]
    with pytest.raises(AssertionError):  # a ViT built for 64 refuses 48
        model(torch.randn(1, 1, 48, 48))


def test_torchvision_first_conv_is_adapted() -> None:
    model = create_model("tv:resnet18", 3, channels=1)
    assert model.conv1.in_channels == 1  # type: ignore[union-attr]
    assert model.fc.out_features == 3  # type: ignore[union-attr]


def test_registry_and_compact_share_constants_without_an_import_cycle() -> None:
    import ast
    import inspect as pyinspect

    from ferlab.models import compact

    def imported(module: object) -> set[str]:
        tree = ast.parse(pyinspect.getsource(module))  # type: ignore[arg-type]
        names: set[str] = set()
        for node in ast.walk(tree):  # function-level imports too
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert "ferlab.models.compact" not in imported(registry)
    assert "ferlab.models.constants" in imported(registry) & imported(compact)
    assert default_norm(1, "ferlab_vgg") == ((constants.FERLAB_MEAN,), (constants.FERLAB_STD,))


def test_default_norm() -> None:
    assert default_norm(1) == ((0.5,), (0.25,))
    assert default_norm(3, "ferlab_vgg") == ((0.5,) * 3, (0.25,) * 3)
    mean3, _ = default_norm(3, "resnet50")
    assert mean3 == pytest.approx(constants.IMAGENET_MEAN)
    mean1, std1 = default_norm(1, "resnet50")
    assert mean1 == pytest.approx((sum(constants.IMAGENET_MEAN) / 3,))
    assert std1 == pytest.approx((sum(constants.IMAGENET_STD) / 3,))
    model = create_model("convnext_atto", 7, channels=1, image_size=32)
    assert default_norm(1, model) == (mean1, std1)
    assert default_norm(3, "tv:resnet18")[1] == pytest.approx(constants.IMAGENET_STD)
    cfg = default_data_config("ferlab_vgg")
    assert cfg["image_size"] == 48 and cfg["mean"] == (0.5,)


# ---------------------------------------------------------------- pretrained=True, offline


def test_ferlab_net_has_no_hub_weights() -> None:
    with pytest.raises(ValueError, match=r"pretrained: /path/to/weights\.safetensors"):
        create_model("ferlab_vgg", 7, pretrained=True)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached hub weights anywhere: TORCH_HOME and the HF cache point to empty folders."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(pre, "_PROBED", {})
    return tmp_path


@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18"])
def test_pretrained_true_offline_fails_fast_naming_the_path_option(
    name: str, empty_caches, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probed: list[str] = []
    monkeypatch.setattr(pre, "_reachable", lambda host, *a, **k: probed.append(host) or False)
    with pytest.raises(PretrainedUnavailableError) as err:
        create_model(name, 7, channels=1, pretrained=True)
    assert probed == []  # fast: offline said so, so not even the reachability probe ran
    msg = str(err.value)
    assert "pretrained: /path/to/weights.safetensors" in msg and "offline" in msg
    assert not any((empty_caches / "torch").rglob("*.pth"))


def test_pretrained_true_without_network_fails_fast(empty_caches, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("FERLAB_OFFLINE", raising=False)
    probed: list[str] = []

    def unreachable(host: str, *a: object, **k: object) -> bool:
        probed.append(host)
        return False

    monkeypatch.setattr(pre, "_reachable", unreachable)
    with pytest.raises(PretrainedUnavailableError, match="no network") as err:
        create_model("tv:resnet18", 7, pretrained=True)
    assert probed == ["download.pytorch.org"]  # fast: one reachability probe, no download
    assert "pretrained: /path/to/weights.safetensors" in str(err.value)


def test_offline_guard_is_undone_after_the_call(empty_caches, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants
    import torch.hub

    before = (torch.hub.download_url_to_file, hf_constants.HF_HUB_OFFLINE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError):
        create_model("resnet18", 7, pretrained=True)
    assert (torch.hub.download_url_to_file, hf_constants.HF_HUB_OFFLINE) == before


def test_pretrained_option_parsing(tmp_path) -> None:
    assert pre.parse_pretrained(False) == (False, None)
    assert pre.parse_pretrained("false") == (False, None)
    assert pre.parse_pretrained("true") == (True, None)
    with pytest.raises(pre.WeightsNotFoundError, match="does not exist") as err:
        pre.parse_pretrained(str(tmp_path / "missing.safetensors"))
    assert isinstance(err.value, FileNotFoundError)  # callers that catch that still do
