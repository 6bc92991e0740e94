"""Blocks shared by PAD-Net and MTI-Net: squeeze-and-excitation, spatial attention, multi-modal
distillation, the feature propagation module and per-task refinement."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusion.backbones.resnet import BasicBlock, Bottleneck
from fusion.heads import upsample_to

FPM_SOFTMAX = ("task", "reference")


class SqueezeExcitation(nn.Module):
    """Channel gating (Hu et al., CVPR 2018, Sec. 3): ``x * sigmoid(W2 relu(W1 mean_hw(x)))``.

    The reduction ``r = 16`` as the official MTI-Net ``SEBlock``; the bottleneck keeps at least one
    channel so the narrow CPU configs (8-18 channels) still build.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class SpatialAttention(nn.Module):
    """PAD-Net's attention-guided message (Xu et al., CVPR 2018, Sec. 3.3, eq. 4) in the form of the
    official MTI-Net code's ``SABlock``: ``conv(x) * sigmoid(conv'(x))`` on the sending task's features
    ``x``, both 3×3 without bias. The PAD-Net paper's gate reads the receiving task's features instead;
    the official code gates with the sender's, and so does this one (docs/models.md)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.attention = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x) * torch.sigmoid(self.attention(x))


class MultiModalDistillation(nn.Module):
    """PAD-Net multi-modal distillation (Sec. 3.3, eq. 4), reused per scale by MTI-Net (Sec. 3.4):
    for every target task ``t``, ``F_t + sum_{s != t} SpatialAttention_{t,s}(F_s)`` over the
    source tasks ``s`` (the tasks predicted at the front end, auxiliary ones included)."""

    def __init__(self, tasks: list[str], source_tasks: list[str], channels: int) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.messages = nn.ModuleDict(
            {
                t: nn.ModuleDict({s: SpatialAttention(channels, channels) for s in source_tasks if s != t})
                for t in self.tasks
            }
        )

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for t in self.tasks:
            y = feats[t]
            for s, message in self.messages[t].items():
                y = y + message(feats[s])
            out[t] = y
        return out


def residual_blocks(
    in_channels: int, out_channels: int, num_blocks: int = 2, bottleneck: bool = False
) -> nn.Sequential:
    """``num_blocks`` ResNet blocks, the first projecting ``in_channels`` to ``out_channels``.

    Basic blocks (two 3×3 convs) as MTI-Net's official code, or bottlenecks (1×1, 3×3 at a quarter
    of the width, 1×1; ``out_channels`` must be a multiple of 4) as PAD-Net's.
    """
    if bottleneck and out_channels % 4:
        raise ValueError(f"bottleneck blocks need out_channels divisible by 4, got {out_channels}")
    down = None
    if in_channels != out_channels:
        down = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    if bottleneck:
        blocks = [Bottleneck(in_channels, out_channels // 4, downsample=down)]
        blocks += [Bottleneck(out_channels, out_channels // 4) for _ in range(num_blocks - 1)]
    else:
        blocks = [BasicBlock(in_channels, out_channels, downsample=down)]
        blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class FeaturePropagation(nn.Module):
    """MTI-Net's feature propagation module (Vandenhende et al., ECCV 2020, Sec. 3.3, Fig. 4).

    The task features ``F_t`` (C channels each) are concatenated (T·C), passed through a
    non-linear function (two basic blocks down to T·C/4, a 1×1 conv back to T·C), turned into
    an attention mask by a softmax, multiplied with the concatenation, reduced back to C by a
    basic block, and re-weighted per task by squeeze-and-excitation; the result is added to
    ``F_t`` as a residual.

    ``softmax="reference"`` (default) is the official code (``models/mti_net.py``, ``FPM``), which
    reshapes the task-major concatenation to (T·C/T, T) and so normalises over groups of T *adjacent*
    channels, mostly of the same task; the published results come from it. ``softmax="task"`` is the
    paper's text, a per-task attention: for every channel index and pixel the softmax runs over the T
    tasks; an option, not what the published numbers used.
    """

    def __init__(self, tasks: list[str], channels: int, softmax: str = "reference") -> None:
        super().__init__()
        if softmax not in FPM_SOFTMAX:
            raise ValueError(f"FeaturePropagation: softmax must be one of {FPM_SOFTMAX}, got {softmax!r}")
        self.tasks = list(tasks)
        self.softmax = softmax
        shared = len(self.tasks) * channels
        self.non_linear = nn.Sequential(
            residual_blocks(shared, max(1, shared // 4)), nn.Conv2d(max(1, shared // 4), shared, 1)
        )
        self.reduction = residual_blocks(shared, channels, num_blocks=1)
        self.se = nn.ModuleDict({t: SqueezeExcitation(channels) for t in self.tasks})

    def attention(self, logits: Tensor) -> Tensor:
        """The softmax mask for ``logits`` of shape B×(T·C)×H×W, in the same layout."""
        b, tc, h, w = logits.shape
        n = len(self.tasks)
        if self.softmax == "task":
            return torch.softmax(logits.view(b, n, tc // n, h, w), dim=1).view(b, tc, h, w)
        return torch.softmax(logits.view(b, tc // n, n, h, w), dim=2).view(b, tc, h, w)

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        concat = torch.cat([feats[t] for t in self.tasks], dim=1)
        shared = self.reduction(self.attention(self.non_linear(concat)) * concat)
        return {t: feats[t] + self.se[t](shared) for t in self.tasks}


class InitialPrediction(nn.Module):
    """Per-task refinement (two residual blocks) and a 1×1 prediction layer.

    PAD-Net's front end (Sec. 3.2) and MTI-Net's initial task predictions per scale (Sec. 3.2):
    when ``propagated_channels`` is set, each task's input is the shared feature concatenated
    with that task's propagated feature from the coarser scale, upsampled to this scale. Returns
    ``(features, predictions)``, both keyed by task.
    """

    def __init__(
        self,
        out_channels: dict[str, int],
        in_channels: int,
        channels: int,
        propagated_channels: int = 0,
        bottleneck: bool = False,
    ) -> None:
        super().__init__()
        self.refine = nn.ModuleDict(
            {
                t: residual_blocks(in_channels + propagated_channels, channels, bottleneck=bottleneck)
                for t in out_channels
            }
        )
        self.predict = nn.ModuleDict({t: nn.Conv2d(channels, c, 1) for t, c in out_channels.items()})

    def forward(
        self, x: Tensor, propagated: dict[str, Tensor] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        feats, preds = {}, {}
        for t, refine in self.refine.items():
            inp = x if propagated is None else torch.cat([x, upsample_to(propagated[t], x.shape[-2:])], dim=1)
            feats[t] = refine(inp)
            preds[t] = self.predict[t](feats[t])
        return feats, preds
