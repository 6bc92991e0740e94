"""Backbones: every encoder returns one feature map per stage, fine to coarse.

``build_backbone(name, ...)`` gives a :class:`Backbone` with ``channels`` and ``strides`` (one
entry per output) and ``forward(x) -> list[Tensor]``. Names: ``resnet18``, ``resnet34``,
``resnet50``, ``resnet101`` (see ``resnet.py``), ``hrnet18`` (HRNet-W18-small-v2), ``hrnet32`` and
``hrnet48`` (HRNetV2-W32/W48; see ``hrnet.py``).
"""

from __future__ import annotations

from fusion.backbones.hrnet import HRNET_SPECS, HRNet
from fusion.backbones.pretrained import load_pretrained
from fusion.backbones.resnet import RESNET_SPECS, Backbone, ResNet, build_resnet, scale_channels

BACKBONES = (*RESNET_SPECS, *HRNET_SPECS)


def build_backbone(
    name: str,
    in_channels: int = 3,
    width: float = 1.0,
    output_stride: int = 32,
    deep_stem: bool = False,
    pretrained: str | None = None,
) -> Backbone:
    """Build a backbone by name; ``pretrained`` is a local ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file
    (never downloaded; ``pretrained.py``)."""
    if in_channels < 1:
        raise ValueError(f"backbone {name!r}: in_channels must be >= 1, got {in_channels}")
    if width <= 0:
        raise ValueError(f"backbone {name!r}: width must be > 0, got {width}")
    if name in RESNET_SPECS:
        model: Backbone = build_resnet(name, in_channels, width, output_stride, deep_stem)
    elif name in HRNET_SPECS:
        if output_stride != 32:
            raise ValueError(
                f"backbone {name!r} keeps a 1/4 branch and has no dilated variant: "
                f"output_stride must be 32, got {output_stride}"
            )
        if deep_stem:
            raise ValueError(f"backbone {name!r} has its own two-conv stem: deep_stem must be False")
        model = HRNet(in_channels, width, HRNET_SPECS[name])
    else:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


__all__ = [
    "BACKBONES",
    "HRNET_SPECS",
    "Backbone",
    "HRNet",
    "ResNet",
    "build_backbone",
    "load_pretrained",
    "scale_channels",
]
