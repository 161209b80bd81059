"""The temperature of a trained model, fitted on its validation split after training.

``fit`` calls ``fit_on_split`` with the best epoch's weights; the temperature goes into the
run's metadata (``ModelMeta.temperature``) and the fit's record (``fit.json`` ``calibration``).
The logits are computed exactly as validation computes them (``FerModule.validation_step``:
the stored uint8 images, the model's normalisation, no augmentation), over the whole split
whatever ``limit_val_batches`` says. Only the validation split is read: never the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ferlab.calibration import TemperatureFit, fit_temperature, unfitted
from ferlab.data.base import ArraySplit
from ferlab.data.tensors import uint8_normalised
from ferlab.device import inference
from ferlab.training.data import EvalBatches, remap_targets


def split_logits(
    model: nn.Module,
    split: ArraySplit,
    labels: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N, K) float32, targets (N,))`` of ``model`` on ``split``, in split order
    (``bf16``: under bf16 autocast on the device)."""
    targets = remap_targets(split.labels, labels, where="val split")
    dev = torch.device(device)
    m = torch.tensor(list(mean), dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    was_training = model.training
    model.to(dev).eval()
    out: list[np.ndarray] = []
    try:
        with inference(dev, bf16):
            for x, _, _ in EvalBatches(split, targets, batch_size=batch_size):
                logits = model(uint8_normalised(x.to(dev), m, s))  # (B, K)
                out.append(logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    k = len(labels)
    return (np.concatenate(out) if out else np.zeros((0, k), np.float32)), targets


def fit_on_split(
    model: nn.Module,
    split: ArraySplit | None,
    labels: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> TemperatureFit:
    """The temperature minimising the validation NLL (T = 1, with the reason, without one)."""
    if split is None or len(split) == 0:
        return unfitted("no validation split: temperature left at 1 (probabilities uncalibrated)")
    logits, targets = split_logits(
        model, split, labels, mean, std, device=device, batch_size=batch_size
    )
    return fit_temperature(logits, targets, split="val")


def bf16_agreement(
    model: nn.Module,
    split: ArraySplit,
    labels: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> dict[str, float]:
    """How far bf16-autocast probabilities (``softmax(logits / T)``) are from fp32 ones on
    ``split``: the largest and the mean absolute difference, and the argmax agreement."""
    args = (model, split, labels, mean, std)
    fp32, _ = split_logits(*args, device=device, batch_size=batch_size)
    bf16, _ = split_logits(*args, device=device, batch_size=batch_size, bf16=True)
    p = torch.from_numpy(fp32 / temperature).softmax(-1)
    q = torch.from_numpy(bf16 / temperature).softmax(-1)
    diff = (p - q).abs()
    return {
        "max_abs_prob_diff": float(diff.max()) if diff.numel() else 0.0,
        "mean_abs_prob_diff": float(diff.mean()) if diff.numel() else 0.0,
        "argmax_agreement": float((p.argmax(-1) == q.argmax(-1)).float().mean())
        if diff.numel()
        else 1.0,
        "images": float(len(split)),
    }
