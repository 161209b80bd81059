"""ferlab's compact networks for small grey face crops (48x48, 1 channel) trained on a CPU.

All three families are size-agnostic (a global pooling head), use BatchNorm with bias-free
convolutions before it, and put a dropout before the classifier. Cost is dominated by the
convolutions at full resolution, so each net keeps few channels there and spends its width
at 12x12 and 6x6 where a parameter is cheap.

- ``ferlab_vgg``: plain conv3x3-BN-ReLU stacks with max-pooling between stages; the
  VGG-style nets are the strongest from-scratch FER2013 reference (~73% with long GPU runs).
- ``ferlab_mini_xception``: depthwise-separable residual blocks, < 100k parameters (the
  ``fer`` package's mini-Xception scores ~66% on FER2013 PrivateTest).
- ``ferlab_resnet``: a small basic-block ResNet with a stride-1 stem for 48x48 input.

Every model carries ``pretrained_cfg`` (mean, std, input size, first conv and classifier names),
the same data contract timm models carry, so preprocessing can be resolved from the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ferlab.models.constants import FERLAB_MEAN, FERLAB_STD
from ferlab.models.registry import register_model


def _width(w: int, mult: float, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of ``divisor`` (CPU-friendly)."""
    return max(divisor, round(w * mult / divisor) * divisor)


def _cfg(in_chans: int, image_size: int, first_conv: str, classifier: str) -> dict[str, Any]:
    return {
        "mean": (FERLAB_MEAN,) * in_chans,
        "std": (FERLAB_STD,) * in_chans,
        "input_size": (in_chans, image_size, image_size),
        "first_conv": first_conv,
        "classifier": classifier,
    }


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU (optional)."""

    def __init__(
        self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ClassifierHead(nn.Module):
    """Global pooling -> optional hidden layer -> dropout -> linear classifier.

    ``pool="avgmax"`` concatenates average and max pooling (twice the features), which keeps
    a strong local cue (an open mouth, raised brows) visible to the classifier.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        drop_rate: float,
        pool: str = "avg",
        hidden: int = 0,
    ) -> None:
        super().__init__()
        if pool not in ("avg", "avgmax"):
            raise ValueError(f"pool must be 'avg' or 'avgmax', got {pool!r}")
        self.pool = pool
        features = in_features * (2 if pool == "avgmax" else 1)
        self.hidden: nn.Module = nn.Identity()
        if hidden > 0:
            self.hidden = nn.Sequential(
                nn.Linear(features, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
            )
            features = hidden
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        pooled = x.mean((2, 3))
        if self.pool == "avgmax":
            pooled = torch.cat([pooled, x.amax((2, 3))], dim=1)
        return self.fc(self.drop(self.hidden(pooled)))  # (B, num_classes)


def _init_weights(model: nn.Module) -> None:
    """Kaiming convs, unit BN, small classifier; then channels_last weights.

    channels_last conv weights make oneDNN pick NHWC kernels, measured 1.2-12x faster for
    these nets on CPU (bench/arch_probe.py); a 1-channel input needs no conversion.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    model.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------- VGG-style


class FerVGG(nn.Module):
    """VGG-style net: per stage ``depths[i]`` conv3x3-BN-ReLU at ``widths[i]``, then max-pool.

    With 48x48 input and four stages the resolutions are 48, 24, 12, 6; the last stage is
    pooled globally by the head. One conv at 48x48 keeps the full-resolution cost small.
    Channel counts that are multiples of 16 run markedly faster on AVX-512 CPUs.
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        widths: Sequence[int] = (16, 48, 96, 192),
        depths: Sequence[int] = (1, 2, 2, 2),
        width_mult: float = 1.0,
        drop_rate: float = 0.3,
        pool: str = "avgmax",
        head_hidden: int = 0,
        image_size: int = 48,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(
                f"widths {widths} and depths {depths} must be non-empty and equal length"
            )
        chans = [_width(w, width_mult) for w in widths]
        stages: list[nn.Module] = []
        cin = in_chans
        for i, (c, d) in enumerate(zip(chans, depths, strict=True)):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(d):
                layers.append(ConvBNAct(cin, c))
                cin = c
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(cin, num_classes, drop_rate, pool, head_hidden)
        self.num_features = cin
        self.pretrained_cfg = _cfg(in_chans, image_size, "stages.0.0.0", "head.fc")
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.head(self.stages(x))


# ---------------------------------------------------------------- mini-Xception


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1, bias-free, followed by BatchNorm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class XceptionBlock(nn.Module):
    """sepconv-BN-ReLU-sepconv-BN-maxpool(s2) plus a strided 1x1 conv residual (Arriaga 2017).

    The residual's stride 2 is taken by subsampling *before* a stride-1 1x1 conv, which is the
    same function (a 1x1 kernel sees one pixel: ``conv_s2(x) == conv_s1(x[..., ::2, ::2])``)
    with the same parameters. A stride-2 1x1 conv in channels_last takes oneDNN's
    ``brgconv_strided`` kernel, whose weight-gradient pass crashes the process (SIGSEGV,
    heap corruption) with torch 2.14 on AVX-512 CPUs for 8 input channels and batches whose
    size is not a multiple of 4 (measured: 3, 5, 37, 63 crash; 16, 64, 100 pass), e.g.
    FER2013's last training batch (28,709 = 448 x 64 + 37). The stride-1 form takes the plain
    1x1 kernel, which passed every batch size.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.residual = ConvBNAct(cin, cout, k=1, stride=1, act=False)
        self.body = nn.Sequential(
            SeparableConv(cin, cout),
            nn.ReLU(inplace=True),
            SeparableConv(cout, cout),
            nn.MaxPool2d(3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.residual(x[:, :, ::2, ::2])  # (B, cout, ceil(H/2), ceil(W/2))


class FerMiniXception(nn.Module):
    """mini-Xception: two plain 3x3 convs, then residual separable blocks halving resolution."""

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        stem_width: int = 8,
        widths: Sequence[int] = (16, 32, 64, 128),
        width_mult: float = 1.0,
        drop_rate: float = 0.2,
        pool: str = "avg",
        image_size: int = 48,
    ) -> None:
        super().__init__()
        stem = _width(stem_width, width_mult)
        self.stem = nn.Sequential(ConvBNAct(in_chans, stem), ConvBNAct(stem, stem))
        blocks: list[nn.Module] = []
        cin = stem
        for w in widths:
            c = _width(w, width_mult)
            blocks.append(XceptionBlock(cin, c))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(cin, num_classes, drop_rate, pool)
        self.num_features = cin
        self.pretrained_cfg = _cfg(in_chans, image_size, "stem.0.0", "head.fc")
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# ---------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two conv3x3-BN with a ReLU between; shortcut = avgpool + 1x1 conv-BN when shape changes.

    The last BN starts at zero so each block starts as the identity (faster early training).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, stride=stride)
        self.conv2 = ConvBNAct(cout, cout, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, ConvBNAct(cin, cout, k=1, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class FerResNet(nn.Module):
    """Small ResNet for 48x48: a stride-1 3x3 stem, then stages of basic blocks.

    Defaults: stem 16 @48x48, stages 48 @24, 96 @12, 192 @6 with one block each (~0.68M
    parameters, ~54M MACs); the first block of each stage downsamples with a strided conv.
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        stem_width: int = 16,
        widths: Sequence[int] = (48, 96, 192),
        depths: Sequence[int] = (1, 1, 1),
        strides: Sequence[int] = (2, 2, 2),
        width_mult: float = 1.0,
        drop_rate: float = 0.3,
        pool: str = "avgmax",
        image_size: int = 48,
    ) -> None:
        super().__init__()
        if not len(widths) == len(depths) == len(strides):
            raise ValueError(f"widths {widths}, depths {depths}, strides {strides}: lengths differ")
        cin = _width(stem_width, width_mult)
        self.stem = ConvBNAct(in_chans, cin)
        stages: list[nn.Module] = []
        for w, d, s in zip(widths, depths, strides, strict=True):
            c = _width(w, width_mult)
            blocks = [BasicBlock(cin if i == 0 else c, c, s if i == 0 else 1) for i in range(d)]
            stages.append(nn.Sequential(*blocks))
            cin = c
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(cin, num_classes, drop_rate, pool)
        self.num_features = cin
        self.pretrained_cfg = _cfg(in_chans, image_size, "stem.0", "head.fc")
        _init_weights(self)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                bn = m.conv2[1]
                assert isinstance(bn, nn.BatchNorm2d)
                nn.init.zeros_(bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


# ---------------------------------------------------------------- registry entries


@register_model("ferlab_vgg")
def ferlab_vgg(num_classes: int = 7, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """The CPU default (~0.65M parameters, ~52M MACs at 48x48): 16@48, 48x2@24, 96x2@12, 192x2@6.

    One narrow conv at full resolution (a 3x3 grey patch has only 9 values, 16 filters cover
    it), the depth at 24x24 and below; channel counts are multiples of 16 (AVX-512 lanes).
    """
    kwargs.setdefault("widths", (16, 48, 96, 192))
    kwargs.setdefault("depths", (1, 2, 2, 2))
    return FerVGG(num_classes, in_chans, **kwargs)


@register_model("ferlab_vgg_fast")
def ferlab_vgg_fast(num_classes: int = 7, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Five stages ending at 3x3 (~1.2M parameters but ~27M MACs): 16@48, 32@24, 64x2@12,
    128x2@6, 256x2@3; about 1.5x the training speed of ``ferlab_vgg`` for tight budgets."""
    kwargs.setdefault("widths", (16, 32, 64, 128, 256))
    kwargs.setdefault("depths", (1, 1, 2, 2, 2))
    return FerVGG(num_classes, in_chans, **kwargs)


@register_model("ferlab_vgg_large")
def ferlab_vgg_large(num_classes: int = 7, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """The classic FER2013 VGG layout for GPUs and long runs (~4.7M parameters, ~0.6G MACs):
    64x2@48, 128x2@24, 256x2@12, 512x2@6."""
    kwargs.setdefault("widths", (64, 128, 256, 512))
    kwargs.setdefault("depths", (2, 2, 2, 2))
    kwargs.setdefault("drop_rate", 0.4)
    return FerVGG(num_classes, in_chans, **kwargs)


@register_model("ferlab_mini_xception")
def ferlab_mini_xception(num_classes: int = 7, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """mini-Xception (~60k parameters), the ``fer`` package's architecture."""
    return FerMiniXception(num_classes, in_chans, **kwargs)


@register_model("ferlab_resnet")
def ferlab_resnet(num_classes: int = 7, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Basic-block ResNet for 48x48: stem 16@48, stages 48@24, 96@12, 192@6."""
    return FerResNet(num_classes, in_chans, **kwargs)
