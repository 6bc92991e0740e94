"""Multi-task models: ``single_task``, ``mtl_baseline``, ``padnet``, ``mtinet`` (see docs/models.md)."""

from fusion.models.multitask.mtinet import MTINet, MTINetOptions
from fusion.models.multitask.mtl_baseline import BaselineOptions, MultiTaskBaseline
from fusion.models.multitask.padnet import PADNet, PADNetOptions
from fusion.models.multitask.single_task import build_single_task

__all__ = [
    "BaselineOptions",
    "MTINet",
    "MTINetOptions",
    "MultiTaskBaseline",
    "PADNet",
    "PADNetOptions",
    "build_single_task",
]
