"""HRNetV2 backbones (Wang et al., "Deep High-Resolution Representation Learning", TPAMI 2020).

Follows the official HRNet classification/segmentation code (``HighResolutionNet``): a stem of two
stride-2 3×3 convs to 1/4, stage 1 of bottlenecks, then stages 2-4 that each add a branch at half
the resolution (1/8, 1/16, 1/32: "parallel multi-resolution convolutions"), made of
high-resolution modules of basic blocks. Every module ends with the "repeated multi-resolution
fusions": each output branch sums all branches, upsampled by a 1×1 conv + upsampling, or
downsampled by a chain of stride-2 3×3 convs.

:data:`HRNET_SPECS` holds the three configs of the official MTI-Net code
(``models/model_info/hrnet_w{18,32,48}.yml``): ``hrnet18`` is W18-small-v2 (stage 1 of two
bottlenecks; 1, 3 and 2 modules of two blocks per branch), the backbone of MTI-Net's experiments;
``hrnet32`` and ``hrnet48`` are the full HRNetV2-W32/W48 (four bottlenecks; 1, 4 and 3 modules of
four blocks), W48 being the backbone of MTI-Net's state-of-the-art comparison on NYUD-v2.

Parameter names match the official code (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``,
``transition1``, ``stage2.0.branches``, ``stage2.0.fuse_layers`` ...) so its checkpoints load by name
(the classification tail ``incre_modules``/``downsamp_modules``/``final_layer``/``classifier`` is
dropped). Differences: upsampling in the fusion is bilinear (as the official segmentation code,
the classification code uses nearest), and a new branch of stage 3/4 is made from the last branch
of the previous stage while existing branches are passed on (the segmentation code's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from fusion.backbones.resnet import Backbone, BasicBlock, Bottleneck, scale_channels


@dataclass(frozen=True)
class HRNetSpec:
    stage1_blocks: int  # bottlenecks of stage 1 (64 planes, 256 channels out)
    stages: tuple[tuple[int, int], ...]  # (number of modules, blocks per branch) of stages 2, 3, 4
    channels: tuple[int, int, int, int]  # branch channels at 1/4, 1/8, 1/16, 1/32


HRNET_SPECS = {
    "hrnet18": HRNetSpec(2, ((1, 2), (3, 2), (2, 2)), (18, 36, 72, 144)),
    "hrnet32": HRNetSpec(4, ((1, 4), (4, 4), (3, 4)), (32, 64, 128, 256)),
    "hrnet48": HRNetSpec(4, ((1, 4), (4, 4), (3, 4)), (48, 96, 192, 384)),
}


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks followed by the all-to-all multi-resolution fusion."""

    def __init__(self, channels: list[int], num_blocks: int):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels)
        self.fuse_layers = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(_conv_bn(channels[j], channels[i], 1, 1, relu=False))
                elif j == i:
                    row.append(None)
                else:
                    # i - j stride-2 convs; only the last changes the channel count and has no ReLU.
                    steps = [_conv_bn(channels[j], channels[j], 3, 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(channels[j], channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j < i:
                    y = y + layer(xs[j])
                elif j > i:
                    y = y + F.interpolate(layer(xs[j]), size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.relu(y))
        return out


def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
    """Adapt existing branches whose width changes and create the new lowest-resolution branch."""
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(prev):
            layers.append(_conv_bn(prev[i], c, 3, 1, relu=True) if prev[i] != c else None)
        else:
            # Wrapped in a Sequential of steps as the official code, so checkpoint keys match.
            layers.append(nn.Sequential(_conv_bn(prev[-1], c, 3, 2, relu=True)))
    return layers


class HRNet(Backbone):
    def __init__(self, in_channels: int = 3, width: float = 1.0, spec: HRNetSpec = HRNET_SPECS["hrnet18"]):
        super().__init__()
        stem = scale_channels(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.conv2 = nn.Conv2d(stem, stem, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        planes = scale_channels(64, width)
        out1 = planes * Bottleneck.expansion
        down = nn.Sequential(nn.Conv2d(stem, out1, 1, bias=False), nn.BatchNorm2d(out1))
        self.layer1 = nn.Sequential(
            Bottleneck(stem, planes, downsample=down),
            *[Bottleneck(out1, planes) for _ in range(spec.stage1_blocks - 1)],
        )
        branch = [scale_channels(c, width) for c in spec.channels]
        prev = [out1]
        for s, (num_modules, num_blocks) in enumerate(spec.stages, start=2):
            cur = branch[:s]
            setattr(self, f"transition{s - 1}", _transition(prev, cur))
            modules = [HighResolutionModule(cur, num_blocks) for _ in range(num_modules)]
            setattr(self, f"stage{s}", nn.Sequential(*modules))
            prev = cur
        self.channels = branch
        self.strides = [4, 8, 16, 32]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in range(2, 5):
            transition = getattr(self, f"transition{s - 1}")
            xs = [
                (xs[i] if layer is None else layer(xs[i])) if i < len(xs) else layer(xs[-1])
                for i, layer in enumerate(transition)
            ]
            xs = getattr(self, f"stage{s}")(xs)
        return xs
