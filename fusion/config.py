"""The typed ``model`` config section shared by every registered model."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fusion.tasks import TASK_REGISTRY, TASKS

MODALITIES = ("rgb", "depth")
MODALITY_CHANNELS = {"rgb": 3, "depth": 1}


@dataclass
class ModelConfig:
    name: str
    tasks: list[str] = field(default_factory=lambda: ["semseg"])
    modalities: list[str] = field(default_factory=lambda: ["rgb"])
    num_classes: int = 13
    num_parts: int = 7
    backbone: str = "resnet18"
    width: float = 1.0
    output_stride: int = 32
    pretrained: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        if "name" not in d:
            raise ValueError("model config: missing required key 'name'")
        cfg = cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        for t in self.tasks:
            if t not in TASKS:
                problems.append(f"unknown task {t!r} (known: {', '.join(TASKS)})")
        for m in self.modalities:
            if m not in MODALITIES:
                problems.append(f"unknown modality {m!r} (known: {', '.join(MODALITIES)})")
        if not self.tasks:
            problems.append("tasks must not be empty")
        if not self.modalities:
            problems.append("modalities must not be empty")
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"duplicate task in {self.tasks}")
        if len(set(self.modalities)) != len(self.modalities):
            problems.append(f"duplicate modality in {self.modalities}")
        if self.num_classes < 1:
            problems.append(f"num_classes must be >= 1, got {self.num_classes}")
        if self.width <= 0:
            problems.append(f"width must be > 0, got {self.width}")
        if self.output_stride not in (8, 16, 32):
            problems.append(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if problems:
            raise ValueError(f"model config {self.name!r}: " + "; ".join(problems))

    def task_channels(self, task: str) -> int:
        """Channels of ``task``'s prediction: the task dict's count, or this config's class count."""
        if task not in TASK_REGISTRY:
            raise ValueError(f"model config {self.name!r}: unknown task {task!r} (known: {', '.join(TASKS)})")
        channels = TASK_REGISTRY[task].channels
        return getattr(self, channels) if isinstance(channels, str) else channels
