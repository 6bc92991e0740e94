"""Small building blocks shared by the decoders: conv-BN-ReLU, task heads, resizing.

``MultiScaleHead`` is the HRNet segmentation head (Wang et al., TPAMI 2020, representation head "HRNetV2"):
every backbone stage is upsampled to the finest one and concatenated, then a task head predicts.
It is the light decoder used by the fusion baselines and CEN in place of the official CEN's
RefineNet-LW decoder (whose ~10M-parameter decoder would dwarf the tiny CPU configs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """Conv (no bias, BN follows) + BatchNorm + ReLU, with 'same' padding for odd kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__(
            nn.Conv2d(
                in_ch, out_ch, kernel_size, stride, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False
            ),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def make_head(in_ch: int, out_ch: int, mid: int | None = None, kernel_size: int = 3) -> nn.Sequential:
    """A task head: ConvBNReLU(in_ch -> mid, kernel_size) then a 1×1 conv with bias to ``out_ch``.

    ``mid`` defaults to ``in_ch``.
    """
    mid = in_ch if mid is None else mid
    return nn.Sequential(ConvBNReLU(in_ch, mid, kernel_size), nn.Conv2d(mid, out_ch, 1))


def upsample_to(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize of ``x`` (B×C×h×w) to spatial ``size`` (align_corners=False); a no-op at that size."""
    size = tuple(size[-2:])
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def concat_scales(feats: list[Tensor]) -> Tensor:
    """All feature maps upsampled to the first (finest) one's size and concatenated on channels."""
    size = feats[0].shape[-2:]
    return torch.cat([upsample_to(f, size) for f in feats], dim=1)


class MultiScaleHead(nn.Module):
    """HRNetV2 head: ``concat_scales`` then ``make_head(sum(in_channels), out_ch, mid, kernel_size=1)``.

    ``mid`` defaults to ``min(sum(in_channels), 512)`` (HRNetV2 uses the full sum; the cap keeps
    ResNet-50/101 heads from growing past 2M parameters).

    The output is at the finest feature's resolution; callers resize it to the input.
    """

    def __init__(self, in_channels: list[int], out_ch: int, mid: int | None = None):
        super().__init__()
        total = sum(in_channels)
        self.head = make_head(total, out_ch, mid if mid is not None else min(total, 512), kernel_size=1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.head(concat_scales(feats))
