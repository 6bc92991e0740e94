"""The registered ``cen`` model: CEN encoder, per-modality heads and the learned ensemble.

Wang et al., "Deep Multimodal Fusion by Channel Exchanging", NeurIPS 2020 (modules in ``fusion.cen``).
Each modality runs through the shared-conv/private-BN encoder and a shared-conv/private-BN head per
task; the fused prediction is the official code's ensemble ``sum_m softmax(alpha)[m] * out_m`` with one
``alpha`` (initialised to ones, i.e. equal weights) per task. Each modality's prediction is returned
under ``aux[modality][task]`` with weight 1.0, as the official training sums the loss of every
modality's output and of the ensemble; ``regularization()`` returns
``{"cen_l1": (M + 1) * l1_weight * cen_l1(...)}``: ``l1_weight`` is the official ``lamda`` (2e-4), which the
official loop adds once per output, M + 1 times.

The decoder is option ``decoder``: ``multiscale`` (default), the light HRNetV2-style ``MultiScaleHead``
with shared convs and private BNs, sized for the CPU configs; or ``refinenet_lw``, the official
RefineNet-LW (``RefineNetLW``, official module names). Deliberate differences from the official code:
tasks other than semseg get their own decoder; with ``detach_ensemble`` (default, as official) the ensemble's loss trains only
``alpha``; ``ensemble: false`` replaces the learned weights by a plain mean that trains everything;
the L1 term is returned once, already multiplied by the M + 1 outputs the official loop adds it for.
Options: ``threshold`` (2e-2), ``l1_weight`` (2e-4), ``ensemble``, ``detach_ensemble``, ``deep_stem``,
``head_mid``, ``decoder``, ``freeze_bn`` (the official ``FREEZE_BN``: the pretrained encoder's BatchNorm statistics fixed
while training; the new decoder's BatchNorms still normalise with batch statistics).
Backbones: resnet18/34/50/101.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.backbones import build_backbone
from fusion.backbones.resnet import RESNET_SPECS
from fusion.cen import CENBackbone, ModuleParallel, cen_l1, exchange_diagnostics, to_parallel
from fusion.config import ModelConfig
from fusion.heads import MultiScaleHead, concat_scales, upsample_to
from fusion.models.fusion_baselines import BaselineOptions, SingleModal, gather_modalities
from fusion.registry import parse_options, register_model

CEN_DECODERS = ("multiscale", "refinenet_lw")


def _conv3x3(in_planes: int, out_planes: int, bias: bool = False) -> ModuleParallel:
    return ModuleParallel(nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=bias))


class CRPBlock(nn.Module):
    """RefineNet-LW chained residual pooling over M modalities (shared convs), as the official CEN code."""

    def __init__(self, in_planes: int, out_planes: int, num_stages: int):
        super().__init__()
        for i in range(num_stages):
            setattr(self, f"{i + 1}_outvar_dimred", _conv3x3(in_planes if i == 0 else out_planes, out_planes))
        self.num_stages = num_stages
        self.maxpool = ModuleParallel(nn.MaxPool2d(kernel_size=5, stride=1, padding=2))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        top = xs
        for i in range(self.num_stages):
            top = getattr(self, f"{i + 1}_outvar_dimred")(self.maxpool(top))
            xs = [x + t for x, t in zip(xs, top, strict=True)]
        return xs


class RCUBlock(nn.Module):
    """RefineNet-LW residual conv unit over M modalities (shared convs, a bias on each block's first)."""

    def __init__(self, in_planes: int, out_planes: int, num_blocks: int, num_stages: int):
        super().__init__()
        suffixes = {0: "_conv", 1: "_conv_relu_varout_dimred"}
        for i in range(num_blocks):
            for j in range(num_stages):
                setattr(
                    self,
                    f"{i + 1}{suffixes[j]}",
                    _conv3x3(in_planes if i == 0 and j == 0 else out_planes, out_planes, bias=j == 0),
                )
        self.num_blocks, self.num_stages, self.suffixes = num_blocks, num_stages, suffixes
        self.relu = ModuleParallel(nn.ReLU())

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        for i in range(self.num_blocks):
            # The official ReLU works in place on the block's input, so its residual is the rectified input.
            xs = self.relu(xs)
            residual = xs
            for j in range(self.num_stages):
                xs = getattr(self, f"{i + 1}{self.suffixes[j]}")(self.relu(xs) if j > 0 else xs)
            xs = [x + r for x, r in zip(xs, residual, strict=True)]
        return xs


class RefineNetLW(nn.Module):
    """The official CEN decoder (``semantic_segmentation/models/model.py``): Light-Weight RefineNet over the
    four encoder stages, convs shared by the modalities and no BatchNorm, dropout 0.5 on the two coarsest
    stages and before the classifier. Module names are the official ones, so official weights load by
    name. ``forward(feats)``: stages × modalities feature maps in, one prediction per modality at the
    finest stage's resolution out."""

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.dropout = ModuleParallel(nn.Dropout(p=0.5))
        self.relu = ModuleParallel(nn.ReLU())
        self.p_ims1d2_outl1_dimred = _conv3x3(c4, 512)
        self.adapt_stage1_b = nn.Sequential(RCUBlock(512, 512, 2, 2))
        self.mflow_conv_g1_pool = nn.Sequential(CRPBlock(512, 512, 4))
        self.mflow_conv_g1_b = nn.Sequential(RCUBlock(512, 512, 3, 2))
        self.mflow_conv_g1_b3_joint_varout_dimred = _conv3x3(512, 256)
        for stage, c in ((2, c3), (3, c2), (4, c1)):
            setattr(self, f"p_ims1d2_outl{stage}_dimred", _conv3x3(c, 256))
            setattr(self, f"adapt_stage{stage}_b", nn.Sequential(RCUBlock(256, 256, 2, 2)))
            setattr(self, f"adapt_stage{stage}_b2_joint_varout_dimred", _conv3x3(256, 256))
            setattr(self, f"mflow_conv_g{stage}_pool", nn.Sequential(CRPBlock(256, 256, 4)))
            setattr(self, f"mflow_conv_g{stage}_b", nn.Sequential(RCUBlock(256, 256, 3, 2)))
            if stage < 4:
                setattr(self, f"mflow_conv_g{stage}_b3_joint_varout_dimred", _conv3x3(256, 256))
        self.clf_conv = _conv3x3(256, out_channels, bias=True)

    @staticmethod
    def _up(xs: list[Tensor], like: list[Tensor]) -> list[Tensor]:
        return [
            F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True)
            for x, y in zip(xs, like, strict=True)
        ]

    def forward(self, feats: list[list[Tensor]]) -> list[Tensor]:
        l1, l2, l3, l4 = feats
        l4, l3 = self.dropout(l4), self.dropout(l3)
        x = self.p_ims1d2_outl1_dimred(l4)
        x = self.relu(self.adapt_stage1_b(x))
        x = self.mflow_conv_g1_b3_joint_varout_dimred(self.mflow_conv_g1_b(self.mflow_conv_g1_pool(x)))
        for stage, skip in ((2, l3), (3, l2), (4, l1)):
            x = self._up(x, skip)
            y = getattr(self, f"p_ims1d2_outl{stage}_dimred")(skip)
            y = getattr(self, f"adapt_stage{stage}_b2_joint_varout_dimred")(getattr(self, f"adapt_stage{stage}_b")(y))
            x = self.relu([a + b for a, b in zip(y, x, strict=True)])
            x = getattr(self, f"mflow_conv_g{stage}_b")(getattr(self, f"mflow_conv_g{stage}_pool")(x))
            if stage < 4:
                x = getattr(self, f"mflow_conv_g{stage}_b3_joint_varout_dimred")(x)
        return self.clf_conv(self.dropout(x))


@dataclass
class CENOptions:
    threshold: float = 2e-2
    l1_weight: float = 2e-4
    ensemble: bool = True
    detach_ensemble: bool = True
    deep_stem: bool = False
    head_mid: int | None = None
    freeze_bn: bool = False
    decoder: str = "multiscale"

    def validate(self) -> None:
        if self.decoder not in CEN_DECODERS:
            raise ValueError(f"model 'cen': option decoder must be one of {CEN_DECODERS}, got {self.decoder!r}")
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
        if opts.decoder == "refinenet_lw":
            self.heads = nn.ModuleDict(
                {t: RefineNetLW(self.encoder.channels, cfg.task_channels(t)) for t in self.tasks}
            )
        else:
            self.heads = nn.ModuleDict(
                {
                    t: to_parallel(
                        MultiScaleHead(self.encoder.channels, cfg.task_channels(t), opts.head_mid).head, m_count
                    )
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
        if self.opts.decoder == "multiscale":
            feats = [concat_scales([stage[m] for stage in feats]) for m in range(len(xs))]
        weights = self.ensemble_weights()
        out: dict = {"aux": {m: {} for m in self.modalities}}
        for t, head in self.heads.items():
            preds = [upsample_to(p, size) for p in head(feats)]
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

    def diagnostics(self) -> dict[str, float]:
        """The fraction of channels each modality exchanges (``fusion.cen.exchange_diagnostics``) and the
        ensemble's weight of each modality per task, ``cen/ensemble/<task>/<modality>``."""
        out = exchange_diagnostics(self.encoder, self.modalities)
        for t, w in self.ensemble_weights().items():
            for m, v in zip(self.modalities, w.tolist(), strict=True):
                out[f"cen/ensemble/{t}/{m}"] = v
        return out


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
