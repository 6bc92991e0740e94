"""The multi-task baseline: one shared encoder, one head per task (``single_task``: one task).

The baselines of MTI-Net (Vandenhende et al., ECCV 2020, Sec. 4.1, "single-task" and "multi-task
baseline"). Each head is the HRNetV2 head (``fusion.heads.MultiScaleHead``) over all four
backbone scales, as the official code's ``HighResolutionHead`` for HRNet; for ResNet backbones the
official code uses DeepLab-v3+ ASPP heads, here the same HRNetV2 head keeps the comparison with
MTI-Net (whose aggregation uses it) like for like.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from fusion.config import ModelConfig
from fusion.heads import MultiScaleHead, upsample_to
from fusion.models.multitask.encoder import FusionOptions, MultiTaskModel, task_out_channels
from fusion.registry import parse_options, register_model


@dataclass
class BaselineOptions(FusionOptions):
    """``model.options`` of ``single_task`` and ``mtl_baseline``."""

    head_channels: int | None = None  # hidden width of each head; None: min(sum of backbone channels, 512)


class MultiTaskBaseline(MultiTaskModel):
    def __init__(self, cfg: ModelConfig, opts: BaselineOptions) -> None:
        out_channels = task_out_channels(cfg, cfg.tasks)
        super().__init__(cfg, opts, cfg.tasks)
        self.heads = nn.ModuleDict(
            {t: MultiScaleHead(self.encoder.channels, c, opts.head_channels) for t, c in out_channels.items()}
        )

    def forward(self, inputs: dict[str, Tensor]) -> dict:
        feats = self.encoder(inputs)
        size = self.input_size(inputs)
        out: dict = {t: upsample_to(head(feats), size) for t, head in self.heads.items()}
        out["aux"] = {}
        return out


def baseline_options(cfg: ModelConfig) -> BaselineOptions:
    cfg.validate()
    opts = parse_options(BaselineOptions, cfg.options, cfg.name)
    if opts.head_channels is not None and opts.head_channels < 1:
        raise ValueError(f"model {cfg.name!r}: option head_channels must be >= 1, got {opts.head_channels}")
    return opts


@register_model("mtl_baseline")
def build_mtl_baseline(cfg: ModelConfig) -> MultiTaskBaseline:
    return MultiTaskBaseline(cfg, baseline_options(cfg))
