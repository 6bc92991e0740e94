"""The registered ``cen`` model: CEN encoder, per-modality heads and the learned ensemble.

Wang et al., "Deep Multimodal Fusion by Channel Exchanging", NeurIPS 2020 (modules in ``fusion.cen``).
Each modality runs through the shared-conv/private-BN encoder and a shared-conv/private-BN head per
task; the fused prediction is the official code's ensemble ``sum_m softmax(alpha)[m] * out_m`` with one
``alpha`` (initialised to ones, i.e. equal weights) per task. Each modality's prediction is returned
under ``aux[modality][task]`` with weight 1.0, as the official training sums the loss of every
modality's output and of the ensemble; ``regularization()`` returns
``{"cen_l1": (M + 1) * l1_weight * cen_l1(...)}``: ``l1_weight`` is the official ``lamda`` (2e-4), which the
official loop adds once per output, M + 1 times.

Deliberate differences from the official code: the decoder is the light HRNetV2-style
``MultiScaleHead`` instead of RefineNet-LW (too large for the CPU configs); tasks other than semseg get
their own head; with ``detach_ensemble`` (default, as official) the ensemble's loss trains only
``alpha``; ``ensemble: false`` replaces the learned weights by a plain mean that trains everything;
the L1 term is returned once, already multiplied by the M + 1 outputs the official loop adds it for.
Options: ``threshold`` (2e-2), ``l1_weight`` (2e-4), ``ensemble``, ``detach_ensemble``, ``deep_stem``,
``head_mid``, ``freeze_bn`` (the official ``FREEZE_BN``: the pretrained encoder's BatchNorm statistics fixed
while training; the new decoder's BatchNorms still normalise with batch statistics).
Backbones: resnet18/34/50/101.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusion.backbones import build_backbone
from fusion.backbones.resnet import RESNET_SPECS
from fusion.cen import CENBackbone, cen_l1, to_parallel
from fusion.config import ModelConfig
from fusion.heads import MultiScaleHead, concat_scales, upsample_to
from fusion.models.fusion_baselines import BaselineOptions, SingleModal, gather_modalities
from fusion.registry import parse_options, register_model


@dataclass
class CENOptions:
    threshold: float = 2e-2
    l1_weight: float = 2e-4
    ensemble: bool = True
    detach_ensemble: bool = True
    deep_stem: bool = False
    head_mid: int | None = None
    freeze_bn: bool = False

    def validate(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"model 'cen': option threshold must be >= 0, got {self.threshold}")
        if self.l1_weight < 0:
            raise ValueError(f"model 'cen': option l1_weight must be >= 0, got {self.l1_weight}")


class CEN(nn.Module):
    def __init__(self, cfg: ModelConfig, opts: CENOptions):
        super().__init__()
        if cfg.backbone not in RESNET_SPECS:
            raise ValueError(f"model 'cen' needs a ResNet backbone ({', '.join(RESNET_SPECS)}), got {cfg.backbone!r}")
        opts.validate()
        self.modalities, self.tasks, self.opts = list(cfg.modalities), list(cfg.tasks), opts
        m_count = len(self.modalities)
        # A 3-channel stem for every modality: depth is replicated (see fusion.cen), so RGB weights apply.
        resnet = build_backbone(cfg.backbone, 3, cfg.width, cfg.output_stride, opts.deep_stem, cfg.pretrained)
        self.encoder = CENBackbone(resnet, m_count, opts.threshold)
        self.heads = nn.ModuleDict(
            {
                t: to_parallel(MultiScaleHead(self.encoder.channels, cfg.task_channels(t), opts.head_mid).head, m_count)
                for t in self.tasks
            }
        )
        self.alpha = nn.Parameter(torch.ones(len(self.tasks), m_count)) if opts.ensemble else None
        self.aux_weights = {m: 1.0 for m in self.modalities}

    @property
    def needs_aux_losses(self) -> str | None:
        """Why the model cannot train without its aux losses (``loss.deep_supervision`` false), or None."""
        if self.opts.ensemble and self.opts.detach_ensemble:
            return (
                "trains its per-modality predictions only through their aux losses: with detach_ensemble the "
                "fused output's loss reaches only the ensemble weights; set model.options.detach_ensemble false"
            )
        return None

    def train(self, mode: bool = True) -> CEN:
        """With option ``freeze_bn`` (the official ``FREEZE_BN = True``, for a start from pretrained
        weights) every BatchNorm of the encoder stays in eval mode while training: its running statistics
        stay the pretrained ones, while its scale and shift, the gammas that channel exchange reads, still
        learn. The decoder's BatchNorms are new, so they keep normalising with batch statistics: the
        official code freezes every BatchNorm of its model, and all of them are the pretrained encoder's
        (its RefineNet-LW decoder has none)."""
        super().train(mode)
        if mode and self.opts.freeze_bn:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def ensemble_weights(self) -> dict[str, Tensor]:
        """Per task, the weight of each modality in the fused prediction (sums to 1)."""
        if self.alpha is None:
            return {t: torch.full((len(self.modalities),), 1.0 / len(self.modalities)) for t in self.tasks}
        return {t: torch.softmax(self.alpha[i], dim=0) for i, t in enumerate(self.tasks)}

    def forward(self, inputs: Mapping[str, Tensor]) -> dict:
        xs = gather_modalities(inputs, self.modalities, "cen")
        size = xs[0].shape[-2:]
        feats = self.encoder(xs)
        fused = [concat_scales([stage[m] for stage in feats]) for m in range(len(xs))]
        weights = self.ensemble_weights()
        out: dict = {"aux": {m: {} for m in self.modalities}}
        for t, head in self.heads.items():
            preds = [upsample_to(p, size) for p in head(fused)]
            for m, p in zip(self.modalities, preds, strict=True):
                out["aux"][m][t] = p
            detach = self.opts.ensemble and self.opts.detach_ensemble
            out[t] = sum(w * (p.detach() if detach else p) for w, p in zip(weights[t].to(preds[0]), preds, strict=True))
        return out

    def regularization(self) -> dict[str, Tensor]:
        # The official loop adds lamda * L1 once per output ("counted for len(outputs) times"): the M
        # per-modality outputs and the ensemble. One term of (M + 1) * lamda is the same gradient.
        outputs = len(self.modalities) + 1
        return {"cen_l1": outputs * self.opts.l1_weight * cen_l1(self.encoder.exchange_bns())}


def _options(cfg: ModelConfig) -> CENOptions:
    return parse_options(CENOptions, cfg.options, "cen")


@register_model("cen")
def build_cen(cfg: ModelConfig) -> nn.Module:
    return CEN(cfg, _options(cfg))


def unimodal_equivalent(cfg: ModelConfig) -> nn.Module:
    """The single-modality network CEN is compared with: ``single_modal`` on ``cfg.modalities[0]`` with the
    same backbone, width, output stride, stem and heads, i.e. CEN minus its private BNs and ``alpha``."""
    opts = _options(cfg)
    single = cfg.model_copy(update={"name": "single_modal", "modalities": [cfg.modalities[0]], "options": {}})
    return SingleModal(single, BaselineOptions(deep_stem=opts.deep_stem, head_mid=opts.head_mid))
