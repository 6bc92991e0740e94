"""``single_task``: the multi-task baseline restricted to one task (MTI-Net, Sec. 4.1)."""

from __future__ import annotations

from fusion.config import ModelConfig
from fusion.models.multitask.mtl_baseline import MultiTaskBaseline, baseline_options
from fusion.registry import register_model


@register_model("single_task")
def build_single_task(cfg: ModelConfig) -> MultiTaskBaseline:
    if len(cfg.tasks) != 1:
        raise ValueError(
            f"model 'single_task' predicts one task; got {cfg.tasks} (extra: {cfg.tasks[1:]}); "
            f"use 'mtl_baseline' for several"
        )
    return MultiTaskBaseline(cfg, baseline_options(cfg))
