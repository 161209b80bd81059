"""From ferlab's image layout to a model's: uint8 (B, H, W, C) -> (B, C, H, W) in NCHW strides.

ferlab stores images as uint8 (N, H, W, C) (``ArraySplit.images``). ``permute(0, 3, 1, 2)``
gives a (B, C, H, W) view with channels-last strides; for one channel those strides are
ambiguous and PyTorch reads them as channels-last too, so every convolution of an NCHW model
(timm, torchvision) would reorder its input and weights to NHWC: 17% slower inference for
resnet18 at 48x48 on a 2-core CPU. The view returned here has the standard NCHW strides; the
convolution then runs in whatever layout the model's weights ask for (ferlab's compact nets
keep channels-last weights on purpose, see ``ferlab.models.compact``).
"""

from __future__ import annotations

import torch


def uint8_nchw(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> uint8 (B, C, H, W) with NCHW strides (a view for one channel; a
    copy of the uint8 bytes, a quarter of a float copy, for several)."""
    if batch.shape[-1] == 1:
        return batch[..., 0].unsqueeze(1)  # strides (H*W, H*W, W, 1): unambiguous NCHW
    return batch.permute(0, 3, 1, 2).contiguous()
