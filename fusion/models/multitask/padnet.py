"""PAD-Net (Xu et al., "PAD-Net: Multi-Tasks Guided Prediction-and-Distillation Network",
CVPR 2018), in the form of the official MTL code (``models/padnet.py``).

Backbone features of all scales are upsampled to the finest, concatenated and fused by a 1×1 conv,
BatchNorm and ReLU at the same width (the official code's HRNet input: every official PAD-Net config
sets ``fuse_hrnet``, which wraps the backbone in ``HighResolutionFuse``; its conv also has a bias,
redundant before BatchNorm; option ``fuse: false`` drops the layer; the paper uses the last ResNet
stage); per front-end task two bottleneck blocks
refine them to ``channels`` and a 1×1 conv makes the initial prediction (Sec. 3.2, deep
supervision, returned as ``aux["initial"]``); multi-modal distillation (Sec. 3.3, eq. 4, variant
(c): attention-guided messages from every other task) refines each final task's features, and a
head of two bottlenecks and a 1×1 conv predicts it. Auxiliary tasks (option ``auxiliary_tasks``)
are predicted at the front end only, as the paper's intermediate tasks. ``channels`` (256 in the
paper) is scaled with the config's ``width`` like the backbone and rounded to a multiple of 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from fusion.backbones import scale_channels
from fusion.config import ModelConfig
from fusion.heads import concat_scales, upsample_to
from fusion.models.multitask.encoder import FusionOptions, MultiTaskModel, front_end_tasks, task_out_channels
from fusion.models.multitask.layers import InitialPrediction, MultiModalDistillation, residual_blocks
from fusion.registry import parse_options, register_added_option, register_model


@dataclass
class PADNetOptions(FusionOptions):
    auxiliary_tasks: list[str] = field(default_factory=list)
    channels: int = 256
    deep_supervision_weight: float = 1.0
    fuse: bool = True


class PADNet(MultiTaskModel):
    def __init__(self, cfg: ModelConfig, opts: PADNetOptions) -> None:
        front = front_end_tasks(cfg, list(opts.auxiliary_tasks))
        out_channels = task_out_channels(cfg, front)
        super().__init__(cfg, opts, cfg.tasks)
        channels = 4 * max(2, scale_channels(opts.channels, cfg.width) // 4)
        concat = sum(self.encoder.channels)
        self.fuse = (
            nn.Sequential(nn.Conv2d(concat, concat, 1, bias=False), nn.BatchNorm2d(concat), nn.ReLU(inplace=True))
            if opts.fuse
            else nn.Identity()
        )
        self.initial = InitialPrediction(out_channels, concat, channels, bottleneck=True)
        self.distillation = MultiModalDistillation(self.tasks, front, channels)
        self.heads = nn.ModuleDict(
            {
                t: nn.Sequential(
                    residual_blocks(channels, channels, bottleneck=True), nn.Conv2d(channels, out_channels[t], 1)
                )
                for t in self.tasks
            }
        )
        self.aux_weights = {"initial": float(opts.deep_supervision_weight)}

    def forward(self, inputs: dict[str, Tensor]) -> dict:
        size = self.input_size(inputs)
        feats, initial = self.initial(self.fuse(concat_scales(self.encoder(inputs))))
        distilled = self.distillation(feats)
        out: dict = {t: upsample_to(self.heads[t](distilled[t]), size) for t in self.tasks}
        out["aux"] = {"initial": initial}
        return out


# Checkpoints written before the fuse layer came (stop 15) were built without it.
register_added_option("padnet", "fuse", before=False, default=True)


@register_model("padnet")
def build_padnet(cfg: ModelConfig) -> PADNet:
    cfg.validate()
    opts = parse_options(PADNetOptions, cfg.options, cfg.name)
    if opts.channels < 1:
        raise ValueError(f"model {cfg.name!r}: option channels must be >= 1, got {opts.channels}")
    return PADNet(cfg, opts)
