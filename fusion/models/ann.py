"""ANN (Zhu et al., ICCV 2019) and the two baselines it is compared with: ``fcn`` and ``nonlocal``.

All three share one body (ANN §3.4; official ``models/seg/nets/annn.py``): a ResNet
(dilated when ``output_stride`` is 8 or 16; the paper uses 8, and ``options.deep_stem`` gives the
ResNet-v1c stem of mmseg's ANN configs), a segmentation head on the last two stages, and an
auxiliary FCN head on stage 4 ("dsn", loss weight 0.4 in the official configs). Heads:

- ``ann``: AFNB fuses stage 4 (keys/values) into stage 5 (queries), a 3×3 conv-BN-ReLU narrows to
  ``head_channels``, APNB adds pyramid-sampled context, a 1×1 conv classifies;
- ``nonlocal``: the same without AFNB and with the plain non-local block in place of APNB;
- ``fcn``: 3×3 conv-BN-ReLU, dropout and a 1×1 conv on stage 5 (FCN, Long et al. 2015, in the
  form of ANN's auxiliary head).

Semantic segmentation only. Modalities are fused early: the inputs listed in ``modalities`` are
concatenated on channels (rgb then depth, in config order) and fed to one backbone whose first
conv takes the summed channel count. Channel options are given at width 1.0 (the paper's values
for ResNet-101) and scaled with ``width`` like the backbone, so tiny CPU configs stay tiny.
Outputs are bilinearly resized to the input (align_corners=False, where the official code uses
True).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fusion.attention import (
    PAPER_PYRAMID_SIZES,
    AsymmetricFusion,
    PyramidPooledAttention,
    PyramidSampler,
    non_local_block,
)
from fusion.backbones import build_backbone, scale_channels
from fusion.config import MODALITY_CHANNELS, ModelConfig
from fusion.heads import ConvBNReLU, upsample_to
from fusion.registry import parse_options, register_model


@dataclass
class ANNOptions:
    """``model.options`` of ``ann``, ``fcn`` and ``nonlocal`` (official values as defaults)."""

    key_channels: int = 256
    value_channels: int = 256
    head_channels: int = 512
    pyramid_sizes: list[int] = field(default_factory=lambda: list(PAPER_PYRAMID_SIZES))
    dropout: float = 0.05
    aux_weight: float = 0.4
    use_sdpa: bool = False
    deep_stem: bool = False

    def validate(self, model: str) -> None:
        problems = []
        for name in ("key_channels", "value_channels", "head_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"option {name} must be an int >= 1, got {value!r}")
        sizes = self.pyramid_sizes
        if (
            not isinstance(sizes, (list, tuple))
            or not sizes
            or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes)
        ):
            problems.append(f"option pyramid_sizes must be a non-empty list of ints >= 1, got {sizes!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"option dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.aux_weight, (int, float)) or self.aux_weight < 0:
            problems.append(f"option aux_weight must be >= 0, got {self.aux_weight!r}")
        for name in ("use_sdpa", "deep_stem"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"option {name} must be true or false, got {getattr(self, name)!r}")
        if problems:
            raise ValueError(f"model {model!r}: " + "; ".join(problems))


def fcn_head(in_channels: int, mid_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The FCN head of ANN's code ("dsn"): 3×3 conv-BN-ReLU, Dropout2d, 1×1 conv classifier."""
    return nn.Sequential(
        ConvBNReLU(in_channels, mid_channels, 3), nn.Dropout2d(dropout), nn.Conv2d(mid_channels, num_classes, 1)
    )


class ContextHead(nn.Module):
    """[AFNB(stage 4 -> stage 5)] -> 3×3 conv-BN-ReLU -> context block -> 1×1 classifier.

    ``fusion`` is ``None`` for the baselines; ``context`` is APNB, the non-local block, or dropout
    alone (FCN).
    """

    def __init__(
        self, fusion: AsymmetricFusion | None, bottleneck: nn.Module, context: nn.Module, classifier: nn.Module
    ):
        super().__init__()
        self.fusion = fusion
        self.bottleneck = bottleneck
        self.context = context
        self.classifier = classifier

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        x = high if self.fusion is None else self.fusion(low, high)
        return self.classifier(self.context(self.bottleneck(x)))


class EarlyFusionSegmenter(nn.Module):
    """Backbone on the channel-concatenated modalities, a head on stages 4-5, an aux head on stage 4.

    forward(``{"rgb": B×3×H×W, "depth": B×1×H×W}``) -> ``{"semseg": B×K×H×W, "aux": {"stage4":
    {"semseg": B×K×H×W}}}`` (``"aux"`` is empty when the aux weight is 0, which drops the aux head).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: ContextHead,
        aux_head: nn.Module | None,
        modalities: list[str],
        aux_weight: float,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.modalities = list(modalities)
        self.aux_weights = {"stage4": float(aux_weight)} if aux_head is not None else {}

    def _stack_inputs(self, inputs: dict[str, Tensor]) -> Tensor:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: input is missing modality {', '.join(missing)} "
                f"(model built for {self.modalities}, got keys {sorted(inputs)})"
            )
        return torch.cat([inputs[m] for m in self.modalities], dim=1)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, object]:
        x = self._stack_inputs(inputs)
        feats = self.backbone(x)
        low, high = feats[-2], feats[-1]
        out: dict[str, object] = {"semseg": upsample_to(self.head(low, high), x.shape[-2:]), "aux": {}}
        if self.aux_head is not None:
            out["aux"] = {"stage4": {"semseg": upsample_to(self.aux_head(low), x.shape[-2:])}}
        return out


def _build(cfg: ModelConfig, kind: str) -> EarlyFusionSegmenter:
    other = [t for t in cfg.tasks if t != "semseg"]
    if other:
        raise ValueError(f"model {cfg.name!r} predicts semseg only; unsupported task(s): {', '.join(other)}")
    opts = parse_options(ANNOptions, cfg.options, cfg.name)
    opts.validate(cfg.name)
    in_channels = sum(MODALITY_CHANNELS[m] for m in cfg.modalities)
    backbone = build_backbone(cfg.backbone, in_channels, cfg.width, cfg.output_stride, opts.deep_stem, cfg.pretrained)
    low_ch, high_ch = backbone.channels[-2], backbone.channels[-1]
    head_ch, key_ch, value_ch = (
        scale_channels(c, cfg.width) for c in (opts.head_channels, opts.key_channels, opts.value_channels)
    )
    classifier = nn.Conv2d(head_ch, cfg.num_classes, 1)
    if kind == "ann":
        fusion = AsymmetricFusion(
            low_ch, high_ch, high_ch, key_ch, value_ch, PyramidSampler(opts.pyramid_sizes), opts.dropout, opts.use_sdpa
        )
        context: nn.Module = PyramidPooledAttention(
            head_ch, head_ch, key_ch, value_ch, PyramidSampler(opts.pyramid_sizes), opts.dropout, opts.use_sdpa
        )
        head = ContextHead(fusion, ConvBNReLU(high_ch, head_ch, 3), context, classifier)
    elif kind == "nonlocal":
        context = non_local_block(head_ch, head_ch, key_ch, value_ch, opts.dropout, opts.use_sdpa)
        head = ContextHead(None, ConvBNReLU(high_ch, head_ch, 3), context, classifier)
    else:
        head = ContextHead(None, ConvBNReLU(high_ch, head_ch, 3), nn.Dropout2d(opts.dropout), classifier)
    aux_head = fcn_head(low_ch, head_ch, cfg.num_classes, opts.dropout) if opts.aux_weight > 0 else None
    return EarlyFusionSegmenter(backbone, head, aux_head, cfg.modalities, opts.aux_weight)


@register_model("ann")
def build_ann(cfg: ModelConfig) -> EarlyFusionSegmenter:
    """ANN: AFNB on stages 4-5, APNB context, aux FCN on stage 4 (ANN §3.4)."""
    return _build(cfg, "ann")


@register_model("nonlocal")
def build_nonlocal(cfg: ModelConfig) -> EarlyFusionSegmenter:
    """Non-local baseline: ANN's body with the plain non-local block and no AFNB."""
    return _build(cfg, "nonlocal")


@register_model("fcn")
def build_fcn(cfg: ModelConfig) -> EarlyFusionSegmenter:
    """FCN baseline: the dilated ResNet with an FCN head on stage 5 and the same aux head."""
    return _build(cfg, "fcn")
