"""Batched test-time augmentation and prediction from uint8 images.

All views of a batch are stacked *view-major* into one tensor, ``(V*B, C, H, W)``, so the
model sees every view of a batch in one forward pass; view 0 is always the identity, which
is why the plain (no-TTA) prediction comes for free from the same pass.

Views, in order: identity; horizontal flip (``hflip``); ``crops`` = 5 (top-left, top-right,
bottom-left, bottom-right, centre at ``crop_fraction`` of each side, resized back to H x W) or
10 (those five, then their flips); one view per entry of ``scales`` (zoom by ``s`` around the
centre, resized back; ``s < 1`` zooms out and fills the border by edge replication).

TTA averages *probabilities* (softmax per view, then the mean), not logits: averaged
probabilities stay calibrated-ish, and a single over-confident view cannot dominate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferlab.config import TTAConfig
from ferlab.data.tensors import normalise, uint8_normalised, uint8_unit
from ferlab.device import inference, pick_device
from ferlab.probe import inference_bf16

# ITU-R 601-2 luma, the weights PIL uses for "L": RGB input becomes grey as decoding would.
_LUMA = (0.299, 0.587, 0.114)


class MetaLike(Protocol):
    """What prediction needs from a model's metadata (``ferlab.models.ModelMeta`` has it)."""

    @property
    def labels(self) -> Sequence[str]: ...
    @property
    def image_size(self) -> int | Sequence[int]: ...
    @property
    def channels(self) -> int: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...


# ----------------------------------------------------------------------------- views


def view_names(cfg: TTAConfig | None) -> list[str]:
    """Names of the views ``tta_views`` produces, in order (``identity`` first)."""
    names = ["identity"]
    if cfg is None or not cfg.enabled:
        return names
    if cfg.hflip:
        names.append("hflip")
    if cfg.crops not in (0, 5, 10):
        raise ValueError(
            f"TTA crops={cfg.crops} is not supported; use 0 (none), 5 (four corners + centre) "
            "or 10 (the five crops and their flips)."
        )
    corners = ["crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_c"]
    if cfg.crops >= 5:
        names += corners
    if cfg.crops == 10:
        names += [f"{c}_flip" for c in corners]
    for s in cfg.scales:
        if not s > 0:
            raise ValueError(f"TTA scale {s!r} must be > 0 (e.g. scales: [0.9, 1.1]).")
        names.append(f"scale_{s:g}")
    return names


def recorded_tta(recorded: Any) -> TTAConfig:
    """The TTA views a run's evaluation used (``meta.json``'s ``extra["tta"]``, the experiment's
    ``eval.tta``): what ``evaluate --tta`` and ``predict --tta`` run, so the three give one
    number. Weights that record none (or TTA off) get the flip alone."""
    cfg = TTAConfig.model_validate(recorded) if isinstance(recorded, dict) else None
    return cfg if cfg is not None and cfg.enabled else TTAConfig(hflip=True)


def n_views(cfg: TTAConfig | None) -> int:
    """Number of views per image (1 when TTA is off)."""
    return len(view_names(cfg))


def tta_views(x: torch.Tensor, cfg: TTAConfig | None) -> torch.Tensor:
    """All TTA views of a batch, view-major: ``(B, C, H, W) -> (V*B, C, H, W)``.

    Rows ``v*B : (v+1)*B`` hold view ``v`` (see ``view_names``) of the whole batch.
    """
    if x.ndim != 4:
        raise ValueError(f"tta_views expects a (B, C, H, W) tensor; got shape {tuple(x.shape)}.")
    names = view_names(cfg)  # validates cfg
    if cfg is None or len(names) == 1:
        return x
    views = [x]
    if cfg.hflip:
        views.append(x.flip(-1))
    if cfg.crops:
        crops = _five_crops(x, cfg.crop_fraction)  # (5B, C, H, W)
        views.append(crops)
        if cfg.crops == 10:
            views.append(crops.flip(-1))
    if cfg.scales:
        views.append(_zooms(x, cfg.scales))  # (S*B, C, H, W)
    return torch.cat(views, dim=0)


def _five_crops(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Corner and centre crops at ``fraction`` of each side, resized back: (5B, C, H, W)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    tops = (0, 0, h - ch, h - ch, (h - ch) // 2)
    lefts = (0, w - cw, 0, w - cw, (w - cw) // 2)
    crops = torch.cat(
        [x[..., t : t + ch, le : le + cw] for t, le in zip(tops, lefts, strict=True)], dim=0
    )
    if (ch, cw) != (h, w):
        crops = F.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False)
    return crops


def _zooms(x: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Zoom each image by every ``s`` around its centre, output size unchanged: (S*B, C, H, W).

    One ``grid_sample`` call: output pixel at normalised position u reads the input at u / s, so
    s > 1 magnifies the centre and s < 1 shrinks the image, reading past the edge, where
    ``padding_mode="border"`` replicates the edge pixels.
    """
    b = x.shape[0]
    inv = torch.tensor([1.0 / s for s in scales], dtype=x.dtype, device=x.device)
    theta = torch.zeros(len(scales), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = inv
    theta[:, 1, 1] = inv
    theta = theta.repeat_interleave(b, dim=0)  # (S*B, 2, 3), scale-major like the views
    src = x.repeat(len(scales), 1, 1, 1)
    grid = F.affine_grid(theta, list(src.shape), align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- prediction


def _image_hw(meta: MetaLike) -> tuple[int, int]:
    size = meta.image_size
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def _stats(values: Sequence[float], channels: int, what: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor([float(v) for v in values], dtype=torch.float32, device=device)
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(
            f"Model metadata {what}={list(values)} has {t.numel()} values but the model takes "
            f"{channels} channel(s); fix meta.json so {what} has 1 or {channels} values."
        )
    return t.view(1, channels, 1, 1)


def _to_model_input(
    batch: torch.Tensor, meta: MetaLike, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 (B, H, W, C) on the device -> normalised float (B, meta.channels, h, w)."""
    c_in, c_out = batch.shape[-1], int(meta.channels)
    hw = _image_hw(meta)
    if c_in == c_out and tuple(batch.shape[1:3]) == hw:  # the usual case: one fused pass
        return uint8_normalised(batch, mean, std)
    x = uint8_unit(batch)  # float (B, C, H, W) in [0, 1]
    if c_in != c_out:
        if c_in == 1 and c_out == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c_in == 3 and c_out == 1:
            luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * luma).sum(dim=1, keepdim=True)
        else:
            raise ValueError(
                f"Cannot convert {c_in}-channel images to the model's {c_out} channels; "
                "only grey (1) <-> RGB (3) conversions are supported."
            )
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return normalise(x, mean, std)


def _check_images(images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:  # (N, H, W) grey
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"Images must be a uint8 array of shape (N, H, W, C); got dtype {images.dtype} and "
            f"shape {images.shape}. Pass ArraySplit.images from ferlab.data as it is."
        )
    return images


@dataclass
class Predictions:
    """One pass over a split: probabilities at T = 1 and calibrated (``softmax(logits / T)``),
    each for the identity view and averaged over the TTA views (None without TTA)."""

    plain: np.ndarray  # (N, K) float32
    tta: np.ndarray | None
    plain_calibrated: np.ndarray
    tta_calibrated: np.ndarray | None
    temperature: float
    ips: float  # source images per second over the whole loop

    @property
    def probs(self) -> np.ndarray:
        """The headline probabilities at T = 1: TTA-averaged when views were asked for."""
        return self.tta if self.tta is not None else self.plain


def predict_all(
    model: nn.Module,
    images: np.ndarray,
    meta: MetaLike,
    tta: TTAConfig | None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    *,
    columns: Sequence[int] | None = None,
    rows: np.ndarray | None = None,
    temperature: float = 1.0,
) -> Predictions:
    """The one inference loop: class probabilities of uint8 ``images`` (N, H, W, C), plain and
    with the TTA views of ``tta``, at T = 1 and calibrated, with the throughput.

    Images are converted to float on the device, grey <-> RGB to ``meta.channels``, resized to
    ``meta.image_size`` when they differ and normalised with ``meta.mean/std`` (on the [0, 1]
    scale). The plain probabilities are view 0 (identity) of the same forward pass, so asking
    for TTA costs no second pass; ``batch_size`` counts images (the model sees
    ``n_views * batch_size`` inputs per pass). The model is moved to ``device`` (auto when None)
    and put in eval mode; its previous mode is restored afterwards. ``ips`` counts source
    images (not views) over the whole loop: copy to the device, preprocessing, all views and
    the copy back.

    ``columns`` restricts the model to those outputs (e.g. the classes a test set shares with
    it): the softmax runs over their logits only, which equals restricting and renormalising
    the probabilities but cannot underflow when a left-out class dominates. ``rows`` predicts
    only those images (in that order), read batch by batch, so a memory-mapped split is never
    copied whole. ``temperature`` divides the (restricted) logits of every view before its
    softmax; TTA averages the calibrated view probabilities like the plain ones. T = 1 costs
    nothing extra (the calibrated arrays are the plain ones).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}.")
    images = _check_images(images)
    dev = pick_device("auto" if device is None else device, setting="device")
    k = len(meta.labels)
    cols = None if columns is None else torch.as_tensor(list(columns), dtype=torch.long, device=dev)
    k_out = k if cols is None else int(cols.numel())
    v = n_views(tta)
    order = np.arange(images.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    n = int(order.shape[0])
    scaled = temperature != 1.0
    plain = np.zeros((n, k_out), dtype=np.float32)
    averaged = np.zeros((n, k_out), dtype=np.float32) if v > 1 else None
    plain_cal = np.zeros((n, k_out), dtype=np.float32) if scaled else plain
    averaged_cal = (
        (np.zeros((n, k_out), dtype=np.float32) if scaled else averaged) if v > 1 else None
    )
    mean = _stats(meta.mean, int(meta.channels), "mean", dev)
    std = _stats(meta.std, int(meta.channels), "std", dev)
    was_training = model.training
    model.to(dev).eval()
    bf16 = inference_bf16(meta, dev)  # as training chose for this model (ferlab.probe)
    start = time.perf_counter()
    try:
        with inference(dev, bf16):
            for lo in range(0, n, batch_size):
                # A copy, which also makes read-only memory-mapped rows writable for torch.
                if rows is None:
                    part = np.array(images[lo : lo + batch_size])
                else:
                    part = images[order[lo : lo + batch_size]]
                chunk = torch.from_numpy(part)
                x = _to_model_input(chunk.to(dev, non_blocking=True), meta, mean, std)
                b = x.shape[0]
                logits = model(tta_views(x, tta))  # (V*B, K)
                if logits.ndim != 2 or logits.shape != (v * b, k):
                    raise ValueError(
                        f"The model returned logits of shape {tuple(logits.shape)}; expected "
                        f"({v * b}, {k}) for {len(meta.labels)} labels {list(meta.labels)}. "
                        "Check that meta.json's labels match the weights."
                    )
                if cols is not None:
                    logits = logits.index_select(1, cols)
                logits = logits.float()
                targets = [(logits, plain, averaged)]
                if scaled:
                    targets.append((logits / temperature, plain_cal, averaged_cal))
                for z, out_plain, out_avg in targets:
                    probs = z.softmax(dim=-1).view(v, b, k_out)  # (V, B, K)
                    out_plain[lo : lo + b] = probs[0].cpu().numpy()
                    if out_avg is not None:
                        out_avg[lo : lo + b] = probs.mean(dim=0).cpu().numpy()
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    ips = n / elapsed if elapsed > 0 else float("inf")
    return Predictions(plain, averaged, plain_cal, averaged_cal, float(temperature), ips)
