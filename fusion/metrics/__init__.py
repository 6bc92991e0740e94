"""Dense-prediction metrics, accumulated as exact sums so batches and DDP ranks merge losslessly.

Every metric has ``update(pred, target)``, ``state()`` (1-D float64 sums), ``load_state(t)``,
``merge(other)``, ``reset()`` and ``compute() -> dict[str, float]``; see docs/models.md, "Metrics".
"""

from fusion.metrics.base import Metric
from fusion.metrics.depth import DepthMetric
from fusion.metrics.edge import EdgeMetric
from fusion.metrics.multitask import DELTA_M_DIRECTIONS, MetricSet, build_metric, delta_m
from fusion.metrics.normals import NormalsMetric
from fusion.metrics.perclass import PerClassMetric
from fusion.metrics.semseg import SegmentationMetric

__all__ = [
    "DELTA_M_DIRECTIONS",
    "DepthMetric",
    "EdgeMetric",
    "Metric",
    "MetricSet",
    "NormalsMetric",
    "PerClassMetric",
    "SegmentationMetric",
    "build_metric",
    "delta_m",
]
