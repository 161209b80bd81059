"""TTA views and batched prediction: view content, batching equivalence, preprocessing."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ferlab.device as device_module
import ferlab.training.calibrate as calibrate_module
from ferlab.config import TTAConfig
from ferlab.data.base import ArraySplit
from ferlab.device import repeatable_inference
from ferlab.evaluation.tta import (
    n_views,
    predict_all,
    tta_views,
    view_names,
)
from ferlab.labels import CANONICAL
from ferlab.models import ModelMeta

LABELS = ["angry", "happy", "sad"]


def make_meta(image_size: int = 12, channels: int = 3, mean: float = 0.0, std: float = 1.0) -> Any:
    return ModelMeta(
        architecture="test",
        labels=list(LABELS),
        image_size=image_size,
        channels=channels,
        mean=(mean,) * channels,
        std=(std,) * channels,
        kwargs={},
        ferlab_version="0",
        extra={},
    )


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear: position-sensitive, so flips and crops change its output."""

    def __init__(self, channels: int = 3, k: int = 3, size: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * size * size, k)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


class FlipInvariant(nn.Module):
    """f(x) = g(x) + g(flip(x)): identical logits for an image and its mirror."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.g = TinyNet(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(x) + self.g(x.flip(-1))


class Probe(nn.Module):
    """Records the input it sees; uniform logits."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], self.k)


def random_images(n: int, size: int = 12, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def quadrants(size: int = 8) -> torch.Tensor:
    """(1, 1, size, size): top-left 1, top-right 2, bottom-left 3, bottom-right 4."""
    h = size // 2
    x = torch.zeros(1, 1, size, size)
    x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:] = 1, 2, 3, 4
    return x


def test_view_names_and_counts() -> None:
    assert n_views(None) == 1
    assert n_views(TTAConfig(hflip=False)) == 1
    assert view_names(TTAConfig(hflip=True)) == ["identity", "hflip"]
    assert n_views(TTAConfig(hflip=True, crops=5)) == 7
    full = TTAConfig(hflip=True, crops=10, scales=[0.9, 1.1])
    assert n_views(full) == 14
    x = torch.rand(3, 1, 8, 8)
    assert tta_views(x, full).shape == (14 * 3, 1, 8, 8)
    assert tta_views(x, None) is x
    with pytest.raises(ValueError, match="crops=3"):
        n_views(TTAConfig(hflip=False, crops=3))
    with pytest.raises(ValueError, match="scale"):
        n_views(TTAConfig(hflip=False, scales=[0.0]))


def test_views_are_view_major_with_identity_first() -> None:
    x = torch.rand(2, 1, 8, 8)
    views = tta_views(x, TTAConfig(hflip=True)).view(2, 2, 1, 8, 8)  # (V, B, ...)
    assert torch.equal(views[0], x)
    assert torch.equal(views[1], x.flip(-1))


def test_five_and_ten_crops_show_the_planted_corners() -> None:
    x = quadrants(8)
    cfg = TTAConfig(hflip=False, crops=10, crop_fraction=0.5)
    views = dict(zip(view_names(cfg), tta_views(x, cfg), strict=True))
    # A half-size corner crop lies inside one quadrant: constant after resizing back.
    for name, value in {"crop_tl": 1, "crop_tr": 2, "crop_bl": 3, "crop_br": 4}.items():
        assert views[name].shape == (1, 8, 8)
        assert torch.allclose(views[name], torch.full((1, 8, 8), float(value))), name
    centre = views["crop_c"][0]  # the middle 4x4 holds a 2x2 block of each quadrant
    assert [centre[0, 0], centre[0, -1], centre[-1, 0], centre[-1, -1]] == [1, 2, 3, 4]
    assert centre.mean().item() == pytest.approx(2.5)
    for name in ("crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_c"):
        assert torch.equal(views[f"{name}_flip"], views[name].flip(-1))


def test_crop_with_partial_fraction_keeps_the_corner() -> None:
    x = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    cfg = TTAConfig(hflip=False, crops=5, crop_fraction=0.8)
    views = dict(zip(view_names(cfg), tta_views(x, cfg), strict=True))
    # Bilinear resizing keeps the extreme pixels of each 8x8 crop at the output's corners.
    corners = {
        ("crop_tl", 0, 0): 0,
        ("crop_tl", -1, -1): 77,
        ("crop_br", 0, 0): 22,
        ("crop_br", -1, -1): 99,
        ("crop_tr", 0, -1): 9,
        ("crop_bl", -1, 0): 90,
        ("crop_c", 0, 0): 11,
        ("crop_c", -1, -1): 88,
    }
    for (name, r, c), value in corners.items():
        assert views[name][0, r, c].item() == pytest.approx(value, abs=1e-4), (name, r, c)


def test_scales_zoom_around_the_centre_and_replicate_edges() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., 6:10, 6:10] = 1.0  # a centred 4x4 square: area 16
    cfg = TTAConfig(hflip=False, scales=[1.0, 2.0, 0.5])
    views = dict(zip(view_names(cfg), tta_views(x, cfg), strict=True))
    assert torch.allclose(views["scale_1"], x[0], atol=1e-5)
    assert 50 < views["scale_2"].sum().item() < 80  # area x4
    assert 2 < views["scale_0.5"].sum().item() < 8  # area /4
    assert views["scale_2"][0, 8, 8] == pytest.approx(1.0)
    # Zooming out reads past the edge: replicate, never zeros.
    ones = torch.ones(1, 3, 9, 9)
    assert torch.allclose(tta_views(ones, TTAConfig(hflip=False, scales=[0.5]))[0:], ones)


def test_batched_views_match_one_view_and_one_image_at_a_time() -> None:
    model = TinyNet().eval()
    cfg = TTAConfig(hflip=True, crops=10, crop_fraction=0.75, scales=[0.8, 1.25])
    v, b = n_views(cfg), 4
    x = torch.rand(b, 3, 12, 12)
    with torch.inference_mode():
        views = tta_views(x, cfg)
        batched = model(views).view(v, b, -1)
        one_view = torch.stack([model(views[i * b : (i + 1) * b]) for i in range(v)])
        one_image = torch.stack([model(tta_views(x[i : i + 1], cfg)) for i in range(b)], dim=1)
    assert torch.allclose(batched, one_view, atol=1e-5)
    assert torch.allclose(batched, one_image, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)  # the views do differ


def test_predict_all_averages_softmax_over_views_and_ignores_batch_size() -> None:
    model = TinyNet()
    meta = make_meta()
    images = random_images(7)
    cfg = TTAConfig(hflip=True, crops=5)
    p_all = predict_all(model, images, meta, cfg, batch_size=256, device="cpu").probs
    p_one = predict_all(model, images, meta, cfg, batch_size=1, device="cpu").probs
    p_three = predict_all(model, images, meta, cfg, batch_size=3, device="cpu").probs
    assert p_all.shape == (7, 3) and p_all.dtype == np.float32
    np.testing.assert_allclose(p_all, p_one, atol=1e-5)
    np.testing.assert_allclose(p_all, p_three, atol=1e-5)
    np.testing.assert_allclose(p_all.sum(axis=1), 1.0, atol=1e-5)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        manual = model.eval()(tta_views(x, cfg)).softmax(-1).view(7, 7, 3).mean(0).numpy()
    np.testing.assert_allclose(p_all, manual, atol=1e-5)
    both = predict_all(model, images, meta, cfg, device="cpu")
    plain, averaged = both.plain, both.tta
    np.testing.assert_allclose(
        plain, predict_all(model, images, meta, None, device="cpu").probs, atol=1e-6
    )
    assert averaged is not None and not np.allclose(plain, averaged, atol=1e-4)


def test_flip_invariant_model_gives_identical_plain_and_hflip_results() -> None:
    meta = make_meta()
    images = random_images(6, seed=1)
    p = predict_all(FlipInvariant(), images, meta, TTAConfig(hflip=True), device="cpu")
    plain, averaged = p.plain, p.tta
    assert averaged is not None
    np.testing.assert_allclose(plain, averaged, atol=1e-6)
    # The same check bites for a model that is not flip-invariant.
    p2 = predict_all(TinyNet(), images, meta, TTAConfig(hflip=True), device="cpu")
    plain2, averaged2 = p2.plain, p2.tta
    assert averaged2 is not None and not np.allclose(plain2, averaged2, atol=1e-4)


def test_predict_all_resizes_grey_to_rgb_and_normalises() -> None:
    probe = Probe()
    meta = make_meta(image_size=16, channels=3, mean=0.5, std=0.25)
    images = np.full((5, 8, 8, 1), 255, dtype=np.uint8)
    probs = predict_all(probe, images, meta, None, batch_size=2, device="cpu").probs
    np.testing.assert_allclose(probs, 1 / 3, atol=1e-6)
    seen = torch.cat(probe.seen)
    assert seen.shape == (5, 3, 16, 16)
    assert torch.allclose(seen, torch.full_like(seen, 2.0))  # (1 - 0.5) / 0.25


def test_predict_all_converts_rgb_to_grey_with_luma_and_shrinks() -> None:
    probe = Probe()
    meta = make_meta(image_size=10, channels=1)
    images = np.zeros((2, 20, 20, 3), dtype=np.uint8)
    images[..., 0] = 255  # pure red
    predict_all(probe, images, meta, TTAConfig(hflip=True), device="cpu")
    seen = probe.seen[0]
    assert seen.shape == (2 * 2, 1, 10, 10)  # two views of two images, one pass
    assert torch.allclose(seen, torch.full_like(seen, 0.299), atol=1e-5)


def test_predict_restores_training_mode_and_disables_dropout() -> None:
    model = TinyNet().train()
    meta = make_meta()
    images = random_images(4)
    a = predict_all(model, images, meta, None, device="cpu").probs
    b = predict_all(model, images, meta, None, device="cpu").probs
    np.testing.assert_array_equal(a, b)
    assert model.training


def test_predict_all_timing_and_edge_cases() -> None:
    meta = make_meta()
    timed = predict_all(TinyNet(), random_images(3), meta, None, device="cpu")
    assert timed.probs.shape == (3, 3) and timed.ips > 0
    empty = predict_all(TinyNet(), random_images(0), meta, TTAConfig(), device="cpu").probs
    assert empty.shape == (0, 3)
    with pytest.raises(ValueError, match="uint8"):
        predict_all(TinyNet(), random_images(2).astype(np.float32), meta, None, device="cpu")
    wrong = make_meta()
    wrong.labels = ["angry", "happy"]
    with pytest.raises(ValueError, match="labels"):
        predict_all(TinyNet(), random_images(2), wrong, None, device="cpu")
    bad_std = make_meta()
    bad_std.std = (1.0, 1.0)
    with pytest.raises(ValueError, match="std"):
        predict_all(TinyNet(), random_images(2), bad_std, None, device="cpu")


def test_columns_restrict_the_softmax_per_view() -> None:
    model, meta = TinyNet(), make_meta()
    images = random_images(5, seed=2)
    cfg = TTAConfig(hflip=True, crops=5)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        logits = model.eval()(tta_views(x, cfg)).view(7, 5, 3)
    full = logits.softmax(-1)
    sub = full[..., [2, 0]] / full[..., [2, 0]].sum(-1, keepdim=True)  # restrict + renormalise
    sub_p = predict_all(model, images, meta, cfg, device="cpu", columns=[2, 0])
    plain, averaged = sub_p.plain, sub_p.tta
    assert plain.shape == (5, 2) and averaged is not None
    np.testing.assert_allclose(plain, sub[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(averaged, sub.mean(0).numpy(), atol=1e-6)


def test_rows_predict_a_subset_of_a_read_only_memmap(tmp_path: Path) -> None:
    images = random_images(9, seed=3)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")  # read-only, as the data cache gives
    model, meta = TinyNet(), make_meta()
    rows = np.array([7, 1, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
        plain = predict_all(model, mapped, meta, None, batch_size=2, device="cpu", rows=rows).plain
        whole = predict_all(model, mapped, meta, None, batch_size=4, device="cpu").probs
    np.testing.assert_allclose(plain, whole[rows], atol=1e-6)


def test_model_input_fused_path_matches_float_then_normalise() -> None:
    # Same channels and size: one fused uint8 -> normalised pass; it must equal the long way.
    from ferlab.evaluation.tta import _to_model_input

    meta = make_meta(image_size=8, channels=1, mean=0.4, std=0.2)
    mean = torch.tensor([0.4]).view(1, 1, 1, 1)
    std = torch.tensor([0.2]).view(1, 1, 1, 1)
    batch = torch.randint(0, 256, (3, 8, 8, 1), dtype=torch.uint8)
    got = _to_model_input(batch, meta, mean, std)
    want = (batch.permute(0, 3, 1, 2).float() / 255.0 - 0.4) / 0.2
    assert got.dtype == torch.float32 and got.shape == (3, 1, 8, 8)
    assert torch.allclose(got, want, atol=1e-5)


def test_cuda_inference_fixes_cudnn_algorithms_and_restores_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training on CUDA leaves cuDNN's autotuner on for the process; inference turns it off and
    deterministic algorithms on (one algorithm per shape, as in a fresh `ferlab evaluate`), then
    restores both, also after an error; on a CPU nothing changes."""
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", True)  # as Trainer(benchmark=True) leaves it
    monkeypatch.setattr(cudnn, "deterministic", False)
    with repeatable_inference(torch.device("cuda")):
        assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
    assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
    with pytest.raises(RuntimeError), repeatable_inference(torch.device("cuda", 0)):
        raise RuntimeError("a failed batch")
    assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
    with repeatable_inference(torch.device("cpu")):
        assert (cudnn.benchmark, cudnn.deterministic) == (True, False)


def test_every_inference_pass_runs_inside_repeatable_inference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """predict_all (evaluate, predict, the pipeline) and calibration's logits both score under
    ``repeatable_inference`` on their device."""
    entered: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def recording(device: torch.device) -> Iterator[None]:
        entered.append((device.type, torch.is_inference_mode_enabled()))
        yield

    monkeypatch.setattr(device_module, "repeatable_inference", recording)
    images = random_images(4)
    predict_all(TinyNet(), images, make_meta(), TTAConfig(hflip=True), device="cpu")
    canonical = [CANONICAL.index(name) for name in (*LABELS, LABELS[0])]
    split = ArraySplit(images=images, labels=np.array(canonical), keys=list("abcd"))
    calibrate_module.split_logits(
        TinyNet(), split, LABELS, mean=(0.0,) * 3, std=(1.0,) * 3, device="cpu"
    )
    assert entered == [("cpu", False), ("cpu", False)]  # entered first, once per pass
