"""All of a model's task metrics as one mergeable state, and the multi-task performance Δm."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fusion.metrics.base import Metric

# DELTA_M_DIRECTIONS: the metric Δm is computed on per task, as in MTI-Net (Vandenhende et al. 2020,
# section 4.1), with whether higher or lower is better; a live mapping over the task dict.
from fusion.tasks import DELTA_M_DIRECTIONS, TASK_REGISTRY, TASKS


def build_metric(
    task: str,
    num_classes: int = 13,
    num_parts: int = 7,
    edge_tolerance_px: int | None = None,
    edge_max_dist: float = 0.0075,
    miou_classes: str = "present",
    edge_protocol: str = "bsds",
) -> Metric:
    """The metric of ``task`` from the task dict (``fusion.tasks``).

    ``miou_classes``: ``"present"`` or ``"all"`` (:class:`fusion.metrics.semseg.SegmentationMetric`);
    ``edge_protocol``: ``"bsds"`` or ``"approximate"`` (:class:`fusion.metrics.edge.EdgeMetric`).
    """
    if task not in TASK_REGISTRY:
        raise ValueError(f"metrics: unknown task {task!r} (known: {', '.join(TASKS)})")
    return TASK_REGISTRY[task].metric(
        num_classes=num_classes,
        num_parts=num_parts,
        edge_tolerance_px=edge_tolerance_px,
        edge_max_dist=edge_max_dist,
        miou_classes=miou_classes,
        edge_protocol=edge_protocol,
    )


class MetricSet:
    """One metric per task; ``state()`` is their states concatenated in task order, so a trainer
    can ``all_reduce`` a single flat float64 tensor and ``load_state`` the sum on every rank."""

    def __init__(
        self,
        tasks: list[str],
        num_classes: int = 13,
        num_parts: int = 7,
        edge_tolerance_px: int | None = None,
        edge_max_dist: float = 0.0075,
        miou_classes: str = "present",
        edge_protocol: str = "bsds",
    ) -> None:
        self.metrics = {
            t: build_metric(t, num_classes, num_parts, edge_tolerance_px, edge_max_dist, miou_classes, edge_protocol)
            for t in tasks
        }

    def update(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for task, metric in self.metrics.items():
            for where, d in (("outputs", outputs), ("targets", targets)):
                if task not in d:
                    raise KeyError(f"MetricSet.update: {where} have no {task!r}; {where}: {sorted(d)}")
            metric.update(outputs[task], targets[task])

    def state(self) -> Tensor:
        return torch.cat([m.state() for m in self.metrics.values()])

    def load_state(self, state: Tensor) -> None:
        sizes = [m.state().numel() for m in self.metrics.values()]
        if state.numel() != sum(sizes):
            raise ValueError(
                f"MetricSet.load_state: expected {sum(sizes)} values for tasks "
                f"{list(self.metrics)}, got {state.numel()}"
            )
        for m, chunk in zip(self.metrics.values(), torch.split(state.flatten(), sizes), strict=True):
            m.load_state(chunk)

    def merge(self, other: MetricSet) -> None:
        if list(other.metrics) != list(self.metrics):
            raise ValueError(f"MetricSet.merge: tasks differ: {list(self.metrics)} vs {list(other.metrics)}")
        for t, m in self.metrics.items():
            m.merge(other.metrics[t])

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()

    def compute(self) -> dict[str, float]:
        """Flat ``{"task/metric": value}``."""
        return {f"{t}/{k}": v for t, m in self.metrics.items() for k, v in m.compute().items()}


def delta_m(
    metrics: Mapping[str, float], baseline: Mapping[str, float], directions: Mapping[str, str] = DELTA_M_DIRECTIONS
) -> float:
    """Multi-task performance in percent (MTI-Net, section 4.1; Maninis et al. 2019):
    ``Δm = 100/T * sum_t (-1)^{l_t} (M_m,t - M_b,t) / M_b,t`` with ``l_t = 1`` when lower is better.

    ``T`` runs over the metrics of ``directions`` present in both dicts (flat ``"task/metric"``
    keys as :meth:`MetricSet.compute` returns); at least one must be.
    """
    keys = [k for k in directions if k in metrics and k in baseline]
    if not keys:
        raise ValueError(
            f"delta_m: no metric of {sorted(directions)} is in both dicts "
            f"(model: {sorted(metrics)}, baseline: {sorted(baseline)})"
        )
    total = 0.0
    for k in keys:
        if directions[k] not in ("higher", "lower"):
            raise ValueError(f"delta_m: direction of {k!r} must be 'higher' or 'lower', got {directions[k]!r}")
        if baseline[k] == 0:
            raise ValueError(f"delta_m: baseline {k!r} is 0, the relative change is undefined")
        sign = -1.0 if directions[k] == "lower" else 1.0
        total += sign * (metrics[k] - baseline[k]) / baseline[k]
    return 100.0 * total / len(keys)
