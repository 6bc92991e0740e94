"""ResNet encoders (He et al., CVPR 2016) with the multi-scale feature interface of every backbone.

Module and parameter names follow torchvision's ``ResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` ...) so ImageNet checkpoints load by name (see ``pretrained.py``). The
deep stem (``deep_stem=True``) is ResNet-v1c (He et al., "Bag of Tricks", CVPR 2019, Sec. 4.2,
"ResNet-C"), used by ANN through mmseg: three 3×3 convs (stem widths 32, 32, 64) replace the 7×7; named as in timm's
``resnet*c`` (``conv1.0``, ``conv1.1``, ``conv1.3``, ``conv1.4``, ``conv1.6``, then ``bn1``).

Dilation (DeepLab, Chen et al., TPAMI 2018, Sec. 3.1): output stride 16 turns the stride of stage 4
into dilation 2; output stride 8 turns stages 3 and 4 into dilation 2 and 4. As in torchvision, the
first block of a dilated stage keeps the previous dilation, which is what mmseg's ``contract_dilation``
(on in ResNet-v1c) gives too; mmseg's plain ResNet uses the full dilation in that block.
"""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """A multi-scale encoder: ``forward(x)`` returns one feature map per stage, fine to coarse.

    ``channels[i]`` and ``strides[i]`` describe the ``i``-th output (stride relative to the input).
    """

    channels: list[int]
    strides: list[int]


def scale_channels(c: int, width: float) -> int:
    """Channel count ``c`` scaled by the width multiplier, rounded, at least 8 (so tiny CPU configs still work)."""
    return max(8, int(round(c * width)))


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, first_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet-v1.5 bottleneck: the stride sits on the 3×3 conv."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, first_dilation or dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_SPECS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def stage_dilations(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of stages 1..4 for an output stride of 8, 16 or 32."""
    table = {
        32: [(1, 1), (2, 1), (2, 1), (2, 1)],
        16: [(1, 1), (2, 1), (2, 1), (1, 2)],
        8: [(1, 1), (2, 1), (1, 2), (1, 4)],
    }
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return table[output_stride]


def make_stem(in_channels: int, width: float, deep_stem: bool) -> tuple[nn.Module, int]:
    """The stride-2 stem conv (``conv1``) and its output width; ``bn1`` follows it in the ResNet."""
    out = scale_channels(64, width)
    if not deep_stem:
        return nn.Conv2d(in_channels, out, 7, stride=2, padding=3, bias=False), out
    mid = scale_channels(32, width)
    stem = nn.Sequential(
        conv3x3(in_channels, mid, stride=2),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        conv3x3(mid, mid),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        conv3x3(mid, out),
    )
    return stem, out


class ResNet(Backbone):
    def __init__(
        self,
        block: type[nn.Module],
        layers: list[int],
        in_channels: int = 3,
        width: float = 1.0,
        output_stride: int = 32,
        deep_stem: bool = False,
    ):
        super().__init__()
        self.conv1, inplanes = make_stem(in_channels, width, deep_stem)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.channels, self.strides = [], []
        stride_so_far, dilation_so_far = 4, 1
        for i, ((stride, dilation), n) in enumerate(zip(stage_dilations(output_stride), layers, strict=True)):
            planes = scale_channels(64 * 2**i, width)
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    conv1x1(inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
                )
            blocks = [block(inplanes, planes, stride, dilation, dilation_so_far, downsample)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, dilation) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stride_so_far *= stride
            dilation_so_far = dilation
            self.channels.append(inplanes)
            self.strides.append(stride_so_far)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


def build_resnet(
    name: str, in_channels: int = 3, width: float = 1.0, output_stride: int = 32, deep_stem: bool = False
) -> ResNet:
    block, layers = RESNET_SPECS[name]
    return ResNet(block, layers, in_channels, width, output_stride, deep_stem)
