"""The built-in tasks of the task dict (:mod:`fusion.tasks`), with the official MTI-Net / PAD-Net losses.

``semseg``, ``depth``, ``normals``, ``edge`` (NYUD-v2) plus ``parts`` and ``sal`` (PASCAL-Context),
registered in this order when the module is imported; ``fusion/__init__.py`` imports it, so every
``import fusion...`` has them. They live here rather than in :mod:`fusion.tasks` because they name
the loss functions and metric classes, and :mod:`fusion.losses` and :mod:`fusion.metrics` look tasks
up in the task dict: the dict itself depends on neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from fusion.losses import EDGE_POS_WEIGHT, balanced_bce, cross_entropy, depth_l1, normals_l1, ohem_cross_entropy
from fusion.metrics.depth import DepthMetric
from fusion.metrics.edge import EdgeMetric
from fusion.metrics.normals import NormalsMetric
from fusion.metrics.saliency import SaliencyMetric
from fusion.metrics.semseg import SegmentationMetric
from fusion.tasks import Task, register_task

LossFn = Callable[[Tensor, Tensor], Tensor]


def _semseg_loss(ohem: bool = False, ohem_thresh: float = 0.7, ohem_min_kept: int = 100_000, **_: Any) -> LossFn:
    if ohem:
        return lambda p, t: ohem_cross_entropy(p, t, thresh=ohem_thresh, min_kept=ohem_min_kept)
    return cross_entropy


def _cross_entropy(**_: Any) -> LossFn:
    return cross_entropy


def _depth_l1(**_: Any) -> LossFn:
    return depth_l1


def _normals_l1(**_: Any) -> LossFn:
    return normals_l1


def _edge_bce(edge_pos_weight: float = EDGE_POS_WEIGHT, **_: Any) -> LossFn:
    return lambda p, t: balanced_bce(p, t, pos_weight=edge_pos_weight)


def _batch_balanced_bce(**_: Any) -> LossFn:
    return balanced_bce


def _segmentation_metric(field: str) -> Callable[..., SegmentationMetric]:
    def make(num_classes: int = 13, num_parts: int = 7, miou_classes: str = "present", **_: Any) -> SegmentationMetric:
        return SegmentationMetric(num_classes if field == "num_classes" else num_parts, miou_classes=miou_classes)

    return make


def _depth_metric(**_: Any) -> DepthMetric:
    return DepthMetric()


def _normals_metric(**_: Any) -> NormalsMetric:
    return NormalsMetric()


def _edge_metric(
    edge_tolerance_px: int | None = None, edge_max_dist: float = 0.0075, edge_protocol: str = "bsds", **_: Any
) -> EdgeMetric:
    return EdgeMetric(tolerance_px=edge_tolerance_px, max_dist=edge_max_dist, protocol=edge_protocol)


def _saliency_metric(**_: Any) -> SaliencyMetric:
    return SaliencyMetric()


BUILTIN_TASKS = (
    Task("semseg", "num_classes", _semseg_loss, _segmentation_metric("num_classes"), ("miou", "higher")),
    Task("depth", 1, _depth_l1, _depth_metric, ("rmse", "lower")),
    Task("normals", 3, _normals_l1, _normals_metric, ("mean", "lower")),
    Task("edge", 1, _edge_bce, _edge_metric, ("odsF", "higher")),
    Task("parts", "num_parts", _cross_entropy, _segmentation_metric("num_parts"), ("miou", "higher")),
    # Saliency enters Δm by its mIoU, as in the official calculate_multi_task_performance; maxF is reported too.
    Task("sal", 1, _batch_balanced_bce, _saliency_metric, ("miou", "higher")),
)

for _task in BUILTIN_TASKS:
    register_task(_task)
