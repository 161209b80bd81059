"""uint8 (B, H, W, C) -> (B, C, H, W) with NCHW strides, so convolutions keep the model's layout."""

from __future__ import annotations

import torch

from ferlab.data.tensors import uint8_nchw


def test_grey_batches_get_nchw_strides_that_convolutions_keep() -> None:
    x = torch.randint(0, 256, (2, 5, 6, 1), dtype=torch.uint8)
    y = uint8_nchw(x)
    assert y.shape == (2, 1, 5, 6) and y.dtype == torch.uint8
    assert torch.equal(y, x.permute(0, 3, 1, 2))
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    assert conv(y.float()).is_contiguous()  # NCHW in, NCHW out
    # The pitfall it avoids: the plain permuted view reads as channels-last.
    assert conv(x.permute(0, 3, 1, 2).float()).is_contiguous(memory_format=torch.channels_last)


def test_colour_batches_are_copied_to_nchw() -> None:
    x = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    y = uint8_nchw(x)
    assert y.shape == (2, 3, 5, 6) and y.is_contiguous()
    assert torch.equal(y, x.permute(0, 3, 1, 2))
