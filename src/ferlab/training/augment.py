"""Batched training augmentations as tensor operations on the training device.

Every random draw comes from the ``torch.Generator`` passed in (a CPU generator seeded from
(seed, epoch, step, rank)); per-sample parameters are drawn as (B,) tensors on the CPU, moved to
the batch's device, and applied to the whole batch at once: one ``affine_grid``/``grid_sample``
for flip + random resized crop + translation + rotation, per-sample brightness/contrast
(saturation/hue for colour), and random erasing through a mask. No Python loop over samples.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ferlab.config import AugmentConfig

# Random erasing: area fraction and aspect-ratio ranges of the erased rectangle (torchvision's).
ERASE_SCALE = (0.02, 0.25)
ERASE_RATIO = (0.3, 3.3)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _log_uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), g))


def _bernoulli(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _has_geometry(cfg: AugmentConfig) -> bool:
    return tuple(cfg.crop_scale) != (1.0, 1.0) or cfg.translate > 0 or cfg.rotate > 0


def affine_matrices(b: int, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """(B, 2, 3) matrices mapping output to input coordinates in [-1, 1] (``affine_grid``'s).

    input = R(angle) @ diag(w, h) @ diag(flip, 1) @ output + centre, where (w, h) is the crop
    size as a fraction of the side (area in ``crop_scale``, aspect in ``crop_ratio``), the crop
    centre lies anywhere that keeps the crop inside the image, plus ``translate``.
    """
    lo, hi = cfg.crop_scale
    area = _uniform(b, lo, hi, g).clamp(1e-3, 1.0)
    ratio = _log_uniform(b, *cfg.crop_ratio, g)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    tx = _uniform(b, -cfg.translate, cfg.translate, g) * 2
    ty = _uniform(b, -cfg.translate, cfg.translate, g) * 2
    angle = _uniform(b, -cfg.rotate, cfg.rotate, g) * (math.pi / 180)
    flip = torch.where(_bernoulli(b, cfg.hflip, g), -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * w * flip, -sin * h, cx + tx], dim=1),
            torch.stack([sin * w * flip, cos * h, cy + ty], dim=1),
        ],
        dim=1,
    )
    return theta  # (B, 2, 3)


def _photometric(
    x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, channels: int
) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    if cfg.brightness > 0 or cfg.contrast > 0:
        # brightness x -> x * fb, then contrast x -> (x - m) * fc + m with m the new mean:
        # together x * fb * fc + mean(x) * fb * (1 - fc), one pass over the batch.
        fb = torch.ones(b)
        if cfg.brightness > 0:
            fb = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, g)
        scale = fb.to(dev, x.dtype).view(b, 1, 1, 1)
        if cfg.contrast > 0:
            fc = (
                _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, g).to(dev, x.dtype).view(b, 1, 1, 1)
            )
            shift = x.mean(dim=(1, 2, 3), keepdim=True) * scale * (1 - fc)
            x = torch.addcmul(shift, x, scale * fc)
        else:
            x = x * scale
    if channels == 3 and cfg.saturation > 0:
        f = _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, g).to(dev).view(b, 1, 1, 1)
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(
            1, keepdim=True
        )
        x = (x - grey) * f + grey
    if channels == 3 and cfg.hue > 0:
        x = _hue_rotate(x, _uniform(b, -cfg.hue, cfg.hue, g).to(dev) * (2 * math.pi))
    return x.clamp_(0.0, 1.0)  # x is a new tensor here: clamp in place


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotate(x: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    yiq = _YIQ.to(x.device, x.dtype)
    inv = torch.linalg.inv(yiq)
    cos, sin = torch.cos(radians), torch.sin(radians)
    rot = torch.zeros(b, 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = inv @ rot @ yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def _box_masks(
    b: int,
    h: int,
    w: int,
    y0: torch.Tensor,
    y1: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    dev: torch.device,
) -> torch.Tensor:
    """(B, 1, H, W) bool masks of the rectangles [y0, y1) x [x0, x1): a (B, H) row mask times a
    (B, W) column mask, one full-size operation."""
    ys = torch.arange(h, device=dev).view(1, h)
    xs = torch.arange(w, device=dev).view(1, w)
    y0, y1, x0, x1 = (t.to(dev).view(b, 1) for t in (y0, y1, x0, x1))
    rows = (ys >= y0) & (ys < y1)
    cols = (xs >= x0) & (xs < x1)
    return (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)


def _erase(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    apply = _bernoulli(b, p, g)
    area = _uniform(b, *ERASE_SCALE, g) * (h * w)
    ratio = _log_uniform(b, *ERASE_RATIO, g)
    eh = torch.sqrt(area * ratio).round().clamp(1, h).long()
    ew = torch.sqrt(area / ratio).round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1).float()).long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1).float()).long()
    fill = torch.rand(b, generator=g)
    eh = torch.where(apply, eh, torch.zeros_like(eh))  # an empty box leaves the sample as is
    mask = _box_masks(b, h, w, y0, y0 + eh, x0, x0 + ew, x.device)
    return torch.where(mask, fill.to(x.device, x.dtype).view(b, 1, 1, 1), x)


@functools.lru_cache(maxsize=16)
def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, H*W, 3) homogeneous output coordinates (x, y, 1) of ``affine_grid``
    (align_corners=False): pixel centres in [-1, 1], row-major."""
    ys = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, h * w, 3)
    return base.to(device, dtype)


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, h, w), align_corners=False)`` as one batched product
    (B, H*W, 3) x (B, 3, 2) against a cached base grid, written straight in (B, H, W, 2)
    order: about twice as fast as torch's on small images."""
    b = theta.shape[0]
    base = _base_grid(h, w, theta.device, theta.dtype).expand(b, -1, -1)
    return torch.bmm(base, theta.transpose(1, 2)).view(b, h, w, 2)


def progressive_side(side: int, cfg: AugmentConfig, epoch: int, epochs: int, step: int = 8) -> int:
    """The side of the training batches at 0-based ``epoch`` of ``epochs`` under progressive
    resizing: ``cfg.progressive_scale`` x ``side`` until the fraction ``progressive_ramp[0]``
    of the epochs, the full ``side`` from ``progressive_ramp[1]`` on, linear in between;
    rounded to a multiple of ``step`` pixels (at least ``step``, at most ``side``)."""
    if cfg.progressive_scale >= 1:
        return side
    frac = epoch / epochs
    lo, hi = cfg.progressive_ramp
    if frac >= hi:
        return side  # exactly the full side, whatever the rounding
    t = 0.0 if frac < lo else (frac - lo) / (hi - lo)
    scale = cfg.progressive_scale + (1 - cfg.progressive_scale) * t
    return int(min(side, max(step, round(side * scale / step) * step)))


def progressive_pixel_share(side: int, cfg: AugmentConfig, epoch: int, epochs: int) -> float:
    """The training cost of ``epoch`` of ``epochs`` under progressive resizing relative to an
    epoch at the full ``side``: its share of the pixels (what ``train.time_budget_min`` plans
    with; ``ferlab.training.budget``)."""
    return (progressive_side(side, cfg, epoch, epochs) / side) ** 2


def augment_batch(
    x: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    channels: int,
    side: int | None = None,
) -> torch.Tensor:
    """Augment a float batch (B, C, H, W) in [0, 1]; returns a new tensor of the same shape,
    or (B, C, side, side) when ``side`` is given (progressive resizing: the geometric
    transform resamples straight to it; without one, an antialiased resize).

    Deterministic for a given generator state, whatever the device.
    """
    geometry = cfg.enabled and _has_geometry(cfg)
    if side is not None and (side, side) != tuple(x.shape[-2:]) and not geometry:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    if not cfg.enabled or x.shape[0] == 0:
        return x
    b = x.shape[0]
    if geometry:
        theta = affine_matrices(b, cfg, generator).to(x.device, x.dtype)
        h, w = (side, side) if side is not None else x.shape[-2:]
        grid = affine_grid(theta, h, w)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    elif cfg.hflip > 0:
        flip = _bernoulli(b, cfg.hflip, generator).to(x.device).view(b, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0 or cfg.hue > 0:
        x = _photometric(x, cfg, generator, channels)
    if cfg.erasing > 0:
        x = _erase(x, cfg.erasing, generator)
    return x


def _beta(alpha: float, g: torch.Generator) -> float:
    # torch's Beta sampler takes no generator: seed numpy from ours so the draw is reproducible.
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixing(cfg: AugmentConfig, epoch: int, epochs: int) -> bool:
    """Whether Mixup or CutMix may touch the batches of 0-based ``epoch`` of ``epochs``: one
    of them is on and the epoch lies in the first fraction ``cfg.mix_until`` of the schedule."""
    return cfg.enabled and cfg.mixup + cfg.cutmix > 0 and epoch < cfg.mix_until * epochs


def mixup_cutmix(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (probability ``cfg.mixup``) or CutMix (``cfg.cutmix``) of a batch with a permutation
    of itself; at most one per batch. ``y`` is (B, K) target probabilities; rows stay summing to 1.
    """
    b = x.shape[0]
    u = float(torch.rand(1, generator=generator))
    if b < 2 or u >= cfg.mixup + cfg.cutmix:
        return x, y
    perm = torch.randperm(b, generator=generator).to(x.device)
    if u < cfg.mixup:
        lam = _beta(cfg.mixup_alpha, generator)
        return x * lam + x[perm] * (1 - lam), y * lam + y[perm] * (1 - lam)
    lam = _beta(cfg.cutmix_alpha, generator)
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = round(h * cut), round(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box may be clipped at the border
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out, y * lam + y[perm] * (1 - lam)
