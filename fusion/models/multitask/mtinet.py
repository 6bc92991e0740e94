"""MTI-Net (Vandenhende et al., "MTI-Net: Multi-Scale Task Interaction Networks for Multi-Task
Learning", ECCV 2020), following the paper's Fig. 2 scale by scale as the official
``models/mti_net.py`` does.

From the coarsest scale to the finest (Sec. 3.2-3.3): initial task predictions at each scale
(per task two basic blocks over the backbone feature, concatenated at scales 0-2 with the task's
feature propagated from the coarser scale), deep-supervised as ``aux["scale_k"]``; the feature
propagation module (``FeaturePropagation``) refines the task features before they move one scale
up. Each scale then runs multi-modal distillation (Sec. 3.4), and each final task aggregates the
four distilled scales with an HRNetV2 head (Sec. 3.5: upsample, concatenate, 1×1 convs).

Options: ``auxiliary_tasks`` are predicted at the front end only (in ``aux``, never in the
final outputs), e.g. ``["edge", "normals"]`` as the paper's NYUD setup; ``fpm_softmax`` is
``reference`` (default: the official code, softmax over groups of T adjacent channels) or ``task``
(the paper's text: softmax over tasks), see ``FeaturePropagation``. Per-scale task features have the backbone's
channels at that scale, as in the paper with HRNet-18 (18, 36, 72, 144); with ResNet backbones
(64-512) the distillation at the coarse scales is much larger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from fusion.config import ModelConfig
from fusion.heads import MultiScaleHead, upsample_to
from fusion.models.multitask.encoder import FusionOptions, MultiTaskModel, front_end_tasks, task_out_channels
from fusion.models.multitask.layers import FPM_SOFTMAX, FeaturePropagation, InitialPrediction, MultiModalDistillation
from fusion.registry import parse_options, register_model


@dataclass
class MTINetOptions(FusionOptions):
    auxiliary_tasks: list[str] = field(default_factory=list)
    fpm_softmax: str = "reference"
    head_channels: int | None = None  # hidden width of each aggregation head; None: min(sum of channels, 512)
    deep_supervision_weight: float = 1.0


class MTINet(MultiTaskModel):
    def __init__(self, cfg: ModelConfig, opts: MTINetOptions) -> None:
        front = front_end_tasks(cfg, list(opts.auxiliary_tasks))
        out_channels = task_out_channels(cfg, front)
        super().__init__(cfg, opts, cfg.tasks)
        ch = self.encoder.channels
        if len(ch) != 4:
            raise ValueError(
                f"model {cfg.name!r}: MTI-Net needs a backbone with 4 scales; {cfg.backbone!r} gives {len(ch)}"
            )
        self.num_scales = len(ch)
        coarsest = self.num_scales - 1
        self.initial = nn.ModuleList(
            [
                InitialPrediction(out_channels, ch[s], ch[s], propagated_channels=0 if s == coarsest else ch[s + 1])
                for s in range(self.num_scales)
            ]
        )
        # FPM at scales 1..3 feeds the next finer scale; scale 0 has none to feed.
        self.propagation = nn.ModuleDict(
            {str(s): FeaturePropagation(front, ch[s], softmax=opts.fpm_softmax) for s in range(1, self.num_scales)}
        )
        self.distillation = nn.ModuleList([MultiModalDistillation(self.tasks, front, c) for c in ch])
        self.heads = nn.ModuleDict({t: MultiScaleHead(ch, out_channels[t], opts.head_channels) for t in self.tasks})
        self.aux_weights = {f"scale_{s}": float(opts.deep_supervision_weight) for s in range(self.num_scales)}

    def forward(self, inputs: dict[str, Tensor]) -> dict:
        size = self.input_size(inputs)
        backbone = self.encoder(inputs)
        task_feats: list[dict[str, Tensor]] = [{} for _ in range(self.num_scales)]
        aux: dict[str, dict[str, Tensor]] = {}
        propagated = None
        for s in reversed(range(self.num_scales)):
            task_feats[s], aux[f"scale_{s}"] = self.initial[s](backbone[s], propagated)
            if s > 0:
                propagated = self.propagation[str(s)](task_feats[s])
        distilled = [self.distillation[s](task_feats[s]) for s in range(self.num_scales)]
        out: dict = {t: upsample_to(self.heads[t]([d[t] for d in distilled]), size) for t in self.tasks}
        out["aux"] = {f"scale_{s}": aux[f"scale_{s}"] for s in range(self.num_scales)}
        return out


@register_model("mtinet")
def build_mtinet(cfg: ModelConfig) -> MTINet:
    cfg.validate()
    opts = parse_options(MTINetOptions, cfg.options, cfg.name)
    if opts.fpm_softmax not in FPM_SOFTMAX:
        raise ValueError(
            f"model {cfg.name!r}: option fpm_softmax must be one of {FPM_SOFTMAX}, got {opts.fpm_softmax!r}"
        )
    if opts.head_channels is not None and opts.head_channels < 1:
        raise ValueError(f"model {cfg.name!r}: option head_channels must be >= 1, got {opts.head_channels}")
    return MTINet(cfg, opts)
