"""RGB-D fusion baselines, the comparison points of CEN's Table 1 (Wang et al., NeurIPS 2020, Sec. 4).

- ``single_modal``: one encoder on the one modality in ``cfg.modalities`` (RGB-only / depth-only).
- ``early_fusion``: modalities concatenated on channels (in ``cfg.modalities`` order) into one encoder.
- ``late_fusion``: one encoder and set of heads per modality; the prediction is the mean of the
  per-modality logits (CEN's "late fusion" keeps the two streams apart until the output).

Every model is ``backbone -> one MultiScaleHead per task`` (``fusion.heads``), resized to the input.
Options (``model.options``): ``deep_stem`` (ResNet-v1c stem), ``head_mid`` (head width), and for
``late_fusion`` ``aux_weight``: when > 0 each modality's own prediction is returned under ``aux`` and
supervised with that weight (0, the default, trains the averaged logits only, as the paper's baseline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusion.backbones import build_backbone
from fusion.config import MODALITY_CHANNELS, ModelConfig
from fusion.heads import MultiScaleHead, upsample_to
from fusion.registry import parse_options, register_model


def gather_modalities(inputs: Mapping[str, Tensor], modalities: list[str], model: str) -> list[Tensor]:
    """The input tensors of ``modalities`` in order, or a clear error naming what is missing or malformed."""
    missing = [m for m in modalities if m not in inputs]
    if missing:
        raise KeyError(
            f"model {model!r} needs input modality {', '.join(map(repr, missing))}; "
            f"given: {', '.join(sorted(inputs)) or 'nothing'}"
        )
    xs = [inputs[m] for m in modalities]
    for m, x in zip(modalities, xs, strict=True):
        want = MODALITY_CHANNELS[m]
        if x.dim() != 4 or x.shape[1] != want:
            raise ValueError(f"model {model!r}: input {m!r} must be B×{want}×H×W, got shape {tuple(x.shape)}")
    if len({tuple(x.shape[-2:]) for x in xs}) > 1:
        raise ValueError(
            f"model {model!r}: modalities differ in size: "
            + ", ".join(f"{m} {tuple(x.shape[-2:])}" for m, x in zip(modalities, xs, strict=True))
        )
    return xs


@dataclass
class BaselineOptions:
    deep_stem: bool = False
    head_mid: int | None = None


@dataclass
class LateFusionOptions(BaselineOptions):
    aux_weight: float = 0.0


class EncoderHeads(nn.Module):
    """A backbone and one ``MultiScaleHead`` per task; ``forward(x)`` gives ``{task: logits at x's size}``."""

    def __init__(self, cfg: ModelConfig, in_channels: int, opts: BaselineOptions):
        super().__init__()
        self.backbone = build_backbone(
            cfg.backbone, in_channels, cfg.width, cfg.output_stride, opts.deep_stem, cfg.pretrained
        )
        self.heads = nn.ModuleDict(
            {t: MultiScaleHead(self.backbone.channels, cfg.task_channels(t), opts.head_mid) for t in cfg.tasks}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.backbone(x)
        return {t: upsample_to(head(feats), x.shape[-2:]) for t, head in self.heads.items()}


class SingleModal(nn.Module):
    def __init__(self, cfg: ModelConfig, opts: BaselineOptions):
        super().__init__()
        if len(cfg.modalities) != 1:
            raise ValueError(
                f"model 'single_modal' takes exactly one modality, got {cfg.modalities}; "
                "use early_fusion, late_fusion or cen for several"
            )
        self.modalities = list(cfg.modalities)
        self.net = EncoderHeads(cfg, MODALITY_CHANNELS[cfg.modalities[0]], opts)
        self.aux_weights: dict[str, float] = {}

    def forward(self, inputs: Mapping[str, Tensor]) -> dict:
        (x,) = gather_modalities(inputs, self.modalities, "single_modal")
        return {**self.net(x), "aux": {}}


class EarlyFusion(nn.Module):
    def __init__(self, cfg: ModelConfig, opts: BaselineOptions):
        super().__init__()
        self.modalities = list(cfg.modalities)
        self.net = EncoderHeads(cfg, sum(MODALITY_CHANNELS[m] for m in cfg.modalities), opts)
        self.aux_weights: dict[str, float] = {}

    def forward(self, inputs: Mapping[str, Tensor]) -> dict:
        xs = gather_modalities(inputs, self.modalities, "early_fusion")
        return {**self.net(torch.cat(xs, dim=1)), "aux": {}}


class LateFusion(nn.Module):
    def __init__(self, cfg: ModelConfig, opts: LateFusionOptions):
        super().__init__()
        if opts.aux_weight < 0:
            raise ValueError(f"model 'late_fusion': option aux_weight must be >= 0, got {opts.aux_weight}")
        self.modalities = list(cfg.modalities)
        self.tasks = list(cfg.tasks)
        self.nets = nn.ModuleDict({m: EncoderHeads(cfg, MODALITY_CHANNELS[m], opts) for m in cfg.modalities})
        self.aux_weights = {m: opts.aux_weight for m in cfg.modalities} if opts.aux_weight > 0 else {}

    def forward(self, inputs: Mapping[str, Tensor]) -> dict:
        xs = gather_modalities(inputs, self.modalities, "late_fusion")
        per_mod = {m: self.nets[m](x) for m, x in zip(self.modalities, xs, strict=True)}
        out: dict = {t: torch.stack([per_mod[m][t] for m in self.modalities]).mean(dim=0) for t in self.tasks}
        out["aux"] = {m: per_mod[m] for m in self.aux_weights}
        return out


@register_model("single_modal")
def build_single_modal(cfg: ModelConfig) -> nn.Module:
    return SingleModal(cfg, parse_options(BaselineOptions, cfg.options, "single_modal"))


@register_model("early_fusion")
def build_early_fusion(cfg: ModelConfig) -> nn.Module:
    return EarlyFusion(cfg, parse_options(BaselineOptions, cfg.options, "early_fusion"))


@register_model("late_fusion")
def build_late_fusion(cfg: ModelConfig) -> nn.Module:
    return LateFusion(cfg, parse_options(LateFusionOptions, cfg.options, "late_fusion"))
