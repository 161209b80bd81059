"""From ferlab's image layout to a model's: uint8 (B, H, W, C) -> (B, C, H, W) in NCHW strides.

ferlab stores images as uint8 (N, H, W, C) (``ArraySplit.images``). ``permute(0, 3, 1, 2)``
gives a (B, C, H, W) view with channels-last strides; for one channel those strides are
ambiguous and PyTorch reads them as channels-last too, so every convolution of an NCHW model
(timm, torchvision) would reorder its input and weights to NHWC (resnet18 at 48x48 evaluated
at 0.83 of its compute floor on a 2-core CPU, 1.01 with NCHW strides; bench/RESULTS.md). The view returned here has the standard NCHW strides; the
convolution then runs in whatever layout the model's weights ask for (ferlab's compact nets
keep channels-last weights on purpose, see ``ferlab.models.compact``). The helpers below are
the one place where training and evaluation turn stored images into model input.
"""

from __future__ import annotations

import torch


def uint8_nchw(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> uint8 (B, C, H, W) with NCHW strides (a view for one channel; a
    copy of the uint8 bytes, a quarter of a float copy, for several)."""
    if batch.shape[-1] == 1:
        return batch[..., 0].unsqueeze(1)  # strides (H*W, H*W, W, 1): unambiguous NCHW
    return batch.permute(0, 3, 1, 2).contiguous()


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std of a float (B, C, H, W) batch in [0, 1], as one fused pass."""
    return torch.addcmul(-mean / std, x, 1.0 / std)


def uint8_normalised(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> normalised float (B, C, H, W), NCHW strides: the division by 255
    and the normalisation in one pass. ``mean``/``std`` are (1, C, 1, 1)."""
    return torch.addcmul(-mean / std, uint8_nchw(batch), 1.0 / (255.0 * std))


def uint8_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1], NCHW strides (one pass)."""
    return uint8_nchw(batch).mul(1.0 / 255.0)
