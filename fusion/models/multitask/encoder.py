"""The shared front of every multi-task model: options common to all, modality handling, backbone.

RGB-D input is beyond the MTL papers (they take RGB only). ``fusion`` selects how the config's
modalities reach the task layers:

- ``none``: exactly one modality, fed to the backbone;
- ``early``: the modalities concatenated on channels in config order (rgb then depth) into one
  backbone whose first conv takes the summed channel count;
- ``cen``: the CEN encoder (``fusion.cen.CENBackbone``, Wang et al., NeurIPS 2020): shared convs,
  private BNs per modality and channel exchanging (threshold ``cen_threshold``); its per-scale
  modality features are averaged before the task layers (CEN ensembles its per-modality
  *predictions* instead; averaging features keeps one set of task layers). ``regularization()``
  returns CEN's ℓ1 term on the exchange BN scales times ``cen_l1_weight``. ResNet backbones only;
  depth is replicated to the shared 3-channel stem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusion.backbones import build_backbone
from fusion.backbones.resnet import RESNET_SPECS
from fusion.cen import CENBackbone, cen_l1, exchange_diagnostics
from fusion.config import MODALITY_CHANNELS, TASKS, ModelConfig

FUSIONS = ("none", "early", "cen")


def task_out_channels(cfg: ModelConfig, tasks: list[str]) -> dict[str, int]:
    """Output channels of each task's prediction layer, from the task dict (``fusion.tasks``: a task
    is registered with its channel count, so every known task has a head config)."""
    out = {}
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"model {cfg.name!r}: unknown task {t!r} (known: {', '.join(TASKS)})")
        out[t] = cfg.task_channels(t)
    return out


@dataclass
class FusionOptions:
    """Options of every multi-task model that select and configure the modality fusion."""

    fusion: str = "none"
    cen_threshold: float = 2e-2
    cen_l1_weight: float = 2e-4


def front_end_tasks(cfg: ModelConfig, auxiliary_tasks: list[str]) -> list[str]:
    """``cfg.tasks`` followed by the auxiliary tasks (predicted at the front end only)."""
    problems = [
        f"auxiliary task {a!r} is unknown (known: {', '.join(TASKS)})" for a in auxiliary_tasks if a not in TASKS
    ]
    problems += [f"auxiliary task {a!r} is already in tasks {cfg.tasks}" for a in auxiliary_tasks if a in cfg.tasks]
    if len(set(auxiliary_tasks)) != len(auxiliary_tasks):
        problems.append(f"duplicate auxiliary task in {auxiliary_tasks}")
    if problems:
        raise ValueError(f"model {cfg.name!r}: " + "; ".join(problems))
    front = list(cfg.tasks) + list(auxiliary_tasks)
    if len(front) < 2:
        raise ValueError(
            f"model {cfg.name!r} distils between tasks and needs at least two (tasks + auxiliary_tasks), got {front}"
        )
    return front


class MultiTaskEncoder(nn.Module):
    """Backbone over the configured modalities: ``forward(inputs) -> list[Tensor]`` (fine to coarse)."""

    def __init__(self, cfg: ModelConfig, opts: FusionOptions) -> None:
        super().__init__()
        fusion = opts.fusion
        if fusion not in FUSIONS:
            raise ValueError(f"model {cfg.name!r}: option fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "none" and len(cfg.modalities) != 1:
            raise ValueError(
                f"model {cfg.name!r}: modalities {cfg.modalities} need option fusion 'early' or 'cen' "
                f"(fusion 'none' takes exactly one modality)"
            )
        if fusion == "cen" and sorted(cfg.modalities) != ["depth", "rgb"]:
            raise ValueError(f"model {cfg.name!r}: fusion 'cen' needs modalities rgb and depth, got {cfg.modalities}")
        self.name = cfg.name
        self.modalities = list(cfg.modalities)
        self.fusion = fusion
        if opts.cen_threshold < 0 or opts.cen_l1_weight < 0:
            raise ValueError(
                f"model {cfg.name!r}: options cen_threshold and cen_l1_weight must be >= 0, got "
                f"{opts.cen_threshold} and {opts.cen_l1_weight}"
            )
        self.cen_l1_weight = opts.cen_l1_weight
        if fusion == "cen":
            if cfg.backbone not in RESNET_SPECS:
                raise ValueError(
                    f"model {cfg.name!r}: fusion 'cen' needs a ResNet backbone "
                    f"({', '.join(RESNET_SPECS)}), got {cfg.backbone!r}"
                )
            resnet = build_backbone(cfg.backbone, 3, cfg.width, cfg.output_stride, pretrained=cfg.pretrained)
            self.backbone = CENBackbone(resnet, len(self.modalities), opts.cen_threshold)
        else:
            in_channels = sum(MODALITY_CHANNELS[m] for m in self.modalities)
            self.backbone = build_backbone(
                cfg.backbone,
                in_channels=in_channels,
                width=cfg.width,
                output_stride=cfg.output_stride,
                pretrained=cfg.pretrained,
            )
        self.channels: list[int] = list(self.backbone.channels)
        self.strides: list[int] = list(self.backbone.strides)

    def check_inputs(self, inputs: dict[str, Tensor]) -> None:
        for m in self.modalities:
            if m not in inputs:
                raise KeyError(
                    f"model {self.name!r}: input has no modality {m!r} (needs {self.modalities}, got {sorted(inputs)})"
                )
            x = inputs[m]
            if x.dim() != 4 or x.shape[1] != MODALITY_CHANNELS[m]:
                raise ValueError(
                    f"model {self.name!r}: input {m!r} must be B×{MODALITY_CHANNELS[m]}×H×W, got {tuple(x.shape)}"
                )

    def forward(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        self.check_inputs(inputs)
        if self.fusion == "cen":
            per_modality = self.backbone([inputs[m] for m in self.modalities])
            return [sum(scale) / len(scale) for scale in per_modality]
        return self.backbone(torch.cat([inputs[m] for m in self.modalities], dim=1))

    def regularization(self) -> dict[str, Tensor]:
        if self.fusion != "cen":
            return {}
        return {"cen_l1": self.cen_l1_weight * cen_l1(self.backbone.exchange_bns())}

    def diagnostics(self) -> dict[str, float]:
        """With fusion ``cen``, the fraction of channels each modality exchanges (``exchange_diagnostics``)."""
        if self.fusion != "cen":
            return {}
        return exchange_diagnostics(self.backbone, self.modalities)


class MultiTaskModel(nn.Module):
    """Common surface of the multi-task models: ``encoder``, ``tasks``, ``aux_weights`` and
    ``regularization()`` (the encoder's terms, e.g. CEN's L1 on BN scales)."""

    def __init__(self, cfg: ModelConfig, opts: FusionOptions, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.encoder = MultiTaskEncoder(cfg, opts)
        self.aux_weights: dict[str, float] = {}
        self.auxiliary_tasks = sorted(getattr(opts, "auxiliary_tasks", None) or [])

    @property
    def needs_aux_losses(self) -> str | None:
        """Why the model cannot train without its aux losses (``loss.deep_supervision`` false), or None."""
        if self.auxiliary_tasks:
            return (
                f"learns its auxiliary_tasks {self.auxiliary_tasks} only through their aux losses (they are "
                "never final outputs); drop them"
            )
        return None

    def input_size(self, inputs: dict[str, Tensor]) -> torch.Size:
        return inputs[self.encoder.modalities[0]].shape[-2:]

    def regularization(self) -> dict[str, Tensor]:
        return self.encoder.regularization()

    def diagnostics(self) -> dict[str, float]:
        return self.encoder.diagnostics()
