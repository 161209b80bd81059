"""Batched augmentations: shapes, determinism, and that each operation does what it says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ferlab.config import AugmentConfig
from ferlab.training.augment import (
    affine_grid,
    affine_matrices,
    augment_batch,
    mixing,
    mixup_cutmix,
    progressive_pixel_share,
    progressive_side,
)

OFF = dict(
    hflip=0.0,
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    translate=0.0,
    rotate=0.0,
    brightness=0.0,
    contrast=0.0,
    erasing=0.0,
    saturation=0.0,
    hue=0.0,
)


def cfg(**kw) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kw})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 8, c: int = 1, s: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, s, s, generator=gen(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_default_augment_keeps_shape_dtype_range_and_is_deterministic(channels: int) -> None:
    x = batch(c=channels)
    c = AugmentConfig(saturation=0.3, hue=0.05)
    a = augment_batch(x, c, gen(1), channels)
    b = augment_batch(x, c, gen(1), channels)
    other = augment_batch(x, c, gen(2), channels)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert not torch.equal(a, x)


def test_everything_off_is_identity() -> None:
    x = batch()
    assert torch.equal(augment_batch(x, cfg(), gen(), 1), x)
    assert torch.equal(augment_batch(x, AugmentConfig(enabled=False), gen(), 1), x)


def test_hflip_p1_equals_flip_and_p0_is_identity() -> None:
    x = batch()
    assert torch.equal(augment_batch(x, cfg(hflip=1.0), gen(), 1), x.flip(-1))
    assert torch.equal(augment_batch(x, cfg(hflip=0.0), gen(), 1), x)


def test_hflip_inside_the_affine_path_matches_flip() -> None:
    # With geometry on but degenerate (translate 1e-9), the affine grid at flip=-1 samples
    # pixel centres exactly: the result must be the flipped image up to float rounding.
    x = batch()
    out = augment_batch(x, cfg(hflip=1.0, translate=1e-9), gen(), 1)
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_affine_matrices_per_sample_and_within_ranges() -> None:
    c = cfg(crop_scale=(0.5, 0.9), rotate=20.0, hflip=0.5)
    theta = affine_matrices(256, c, gen())
    assert theta.shape == (256, 2, 3)
    # det = +-(w * h) = +-crop area fraction; the sign is the flip.
    det = torch.linalg.det(theta[:, :, :2])
    area = det.abs()
    assert float(area.min()) >= 0.5 - 1e-4 and float(area.max()) <= 0.9 + 1e-4
    assert 0.3 < float((det < 0).float().mean()) < 0.7
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 256


def test_erasing_changes_a_rectangle_in_about_p_of_samples() -> None:
    x = torch.full((200, 1, 24, 24), 0.5)
    out = augment_batch(x, cfg(erasing=0.5), gen(), 1)
    changed = (out != x).flatten(1).any(1)
    assert 0.35 < float(changed.float().mean()) < 0.65
    # Each change is one axis-aligned rectangle of one fill value.
    i = int(torch.nonzero(changed)[0])
    diff = (out[i, 0] != x[i, 0]).nonzero()
    (y0, x0), (y1, x1) = diff.min(0).values.tolist(), diff.max(0).values.tolist()
    region = out[i, 0, y0 : y1 + 1, x0 : x1 + 1]
    assert torch.all(region == region[0, 0])


def test_brightness_contrast_are_per_sample() -> None:
    x = batch(b=16)
    out = augment_batch(x, cfg(brightness=0.4, contrast=0.4), gen(), 1)
    ratios = (out.mean((1, 2, 3)) / x.mean((1, 2, 3))).tolist()
    assert len({round(r, 4) for r in ratios}) > 8


def test_colour_jitter_only_for_colour_input() -> None:
    x = batch(c=3)
    c = cfg(saturation=0.5, hue=0.1)
    assert torch.equal(augment_batch(x, c, gen(), 1), x)  # told it is grey: left alone
    assert not torch.equal(augment_batch(x, c, gen(), 3), x)


def test_mixup_rows_sum_to_one_and_mix_images() -> None:
    x = batch(b=16)
    y = torch.nn.functional.one_hot(torch.arange(16) % 4, 4).float()
    xm, ym = mixup_cutmix(x, y, AugmentConfig(mixup=1.0, cutmix=0.0), gen())
    assert torch.allclose(ym.sum(1), torch.ones(16))
    assert not torch.equal(xm, x)
    assert (ym.max(1).values < 1).any()  # labels really mixed


def test_cutmix_pastes_a_box_and_label_weight_matches_its_area() -> None:
    x = torch.zeros(8, 1, 32, 32)
    x[:, 0] = torch.arange(8).view(8, 1, 1).float()  # each sample one constant value
    y = torch.nn.functional.one_hot(torch.arange(8), 8).float()
    xm, ym = mixup_cutmix(x, y, AugmentConfig(mixup=0.0, cutmix=1.0, cutmix_alpha=1.0), gen(3))
    assert torch.allclose(ym.sum(1), torch.ones(8))
    for i in range(8):
        own = float((xm[i, 0] == i).float().mean())
        if own < 1.0:  # the pasted area comes from one other sample; weights equal areas
            assert abs(float(ym[i, i]) - own) < 1e-6


def test_mixup_cutmix_probability_zero_is_identity() -> None:
    x, y = batch(), torch.eye(8)
    xm, ym = mixup_cutmix(x, y, AugmentConfig(mixup=0.0, cutmix=0.0), gen())
    assert xm is x and ym is y


def test_mixing_stops_after_its_fraction_of_the_epochs() -> None:
    c = AugmentConfig(mixup=0.5, mix_until=0.75)
    assert [mixing(c, e, 8) for e in range(8)] == [True] * 6 + [False] * 2
    assert all(mixing(AugmentConfig(cutmix=0.5), e, 8) for e in range(8))  # 1.0: every epoch
    assert not mixing(AugmentConfig(), 0, 8)  # neither on
    assert not mixing(AugmentConfig(mixup=0.5, enabled=False), 0, 8)
    with pytest.raises(ValueError, match="mix_until"):
        AugmentConfig(mixup=0.5, mix_until=0.0)


def test_affine_grid_matches_torch() -> None:
    theta = affine_matrices(32, cfg(crop_scale=(0.5, 1.0), rotate=30.0, translate=0.2), gen())
    for h, w in ((48, 48), (17, 40)):
        ours = affine_grid(theta, h, w)
        ref = F.affine_grid(theta, [32, 1, h, w], align_corners=False)
        assert torch.allclose(ours, ref, atol=1e-6)


def test_progressive_side_ramps_from_the_scale_to_the_full_side_in_steps_of_8() -> None:
    c = AugmentConfig(progressive_scale=2 / 3, progressive_ramp=(0.25, 0.75))
    sides = [progressive_side(48, c, e, 160) for e in range(160)]
    assert sides[0] == sides[39] == 32  # before the ramp: 2/3 of 48
    assert sides[120] == sides[159] == 48  # from 3/4 of the epochs: the full side
    assert sides[80] == 40  # the middle of the ramp
    assert sides == sorted(sides) and set(sides) == {32, 40, 48}
    # Off by default, and never below one step nor above the side.
    assert {progressive_side(48, AugmentConfig(), e, 10) for e in range(10)} == {48}
    tiny = AugmentConfig(progressive_scale=0.01)
    assert progressive_side(48, tiny, 0, 10) == 8 and progressive_side(20, tiny, 9, 10) == 20
    # A ramp of zero length jumps at its point.
    step = AugmentConfig(progressive_scale=0.5, progressive_ramp=(0.5, 0.5))
    assert [progressive_side(48, step, e, 4) for e in range(4)] == [24, 24, 48, 48]


def test_augment_batch_resamples_to_a_smaller_side() -> None:
    x = batch(s=24)
    # Degenerate geometry (no flip, translate 1e-9): resampling to half the side at pixel
    # centres averages each 2x2 block exactly.
    half = augment_batch(x, cfg(translate=1e-9), gen(), 1, side=12)
    assert half.shape == (8, 1, 12, 12)
    assert torch.allclose(half, F.avg_pool2d(x, 2), atol=1e-5)
    # Without geometry (or with augmentation off): an antialiased resize.
    want = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    assert torch.equal(augment_batch(x, cfg(), gen(), 1, side=16), want)
    assert torch.equal(augment_batch(x, AugmentConfig(enabled=False), gen(), 1, side=16), want)
    # The full augmentation at a smaller side: deterministic and in range; at the full side
    # it is the augmentation without a side.
    full_cfg = AugmentConfig()
    a = augment_batch(x, full_cfg, gen(3), 1, side=16)
    assert a.shape == (8, 1, 16, 16) and torch.equal(a, augment_batch(x, full_cfg, gen(3), 1, 16))
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(
        augment_batch(x, full_cfg, gen(3), 1, side=24), augment_batch(x, full_cfg, gen(3), 1)
    )


def test_progressive_config_is_checked() -> None:
    from pydantic import ValidationError

    from ferlab.config import TrainConfig

    with pytest.raises(ValidationError, match=r"0 <= start <= end <= 1; got \[0.8, 0.2\]"):
        AugmentConfig(progressive_scale=0.5, progressive_ramp=(0.8, 0.2))
    with pytest.raises(ValidationError, match="progressive_scale"):
        AugmentConfig(progressive_scale=0)
    # by epochs, or by a budget that counts each epoch at its cost (test_budget.py)
    TrainConfig(epochs=10, augment=AugmentConfig(progressive_scale=0.75))
    TrainConfig(time_budget_min=10, augment=AugmentConfig(progressive_scale=0.75))


def test_progressive_pixel_share_is_the_epochs_share_of_the_full_sides_pixels() -> None:
    c = AugmentConfig(progressive_scale=0.5, progressive_ramp=(0.5, 0.5))
    assert [progressive_pixel_share(48, c, e, 4) for e in range(4)] == [0.25, 0.25, 1.0, 1.0]
    assert {progressive_pixel_share(48, AugmentConfig(), e, 9) for e in range(9)} == {1.0}
