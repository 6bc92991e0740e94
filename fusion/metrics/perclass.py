"""Metrics per semantic class: IoU and accuracy of each class, and the depth and normals errors on the
pixels of each class (by the target's label), from one flat vector of sums.

The state is the confusion matrix (rows: target class, columns: predicted class), then per target
class the valid-depth pixel count and squared-error sum, then the valid-normals pixel count and
angle sum (degrees). Summed over batches or DDP ranks (``all_reduce`` of :meth:`state`), it gives the
same result as one pass over the whole set. A pixel whose label is the ignore index counts nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fusion.losses import IGNORE_INDEX
from fusion.metrics.base import Metric


def _angles_deg(pred: Tensor, target: Tensor) -> Tensor:
    """Angles between ``pred`` and ``target`` (N×3), as :class:`fusion.metrics.NormalsMetric` measures them."""
    cross = torch.linalg.vector_norm(torch.linalg.cross(pred, target, dim=-1), dim=-1)
    angle = torch.rad2deg(torch.atan2(cross, (pred * target).sum(dim=-1)))
    return angle.masked_fill((pred == 0).all(dim=-1), 90.0)


class PerClassMetric(Metric):
    """Per-class IoU (``semseg`` in ``tasks``: it gives the classes), depth RMSE (``depth``) and mean
    normals angle (``normals``), for ``num_classes`` classes."""

    def __init__(self, num_classes: int, tasks: Sequence[str], ignore_index: int = IGNORE_INDEX) -> None:
        if "semseg" not in tasks:
            raise ValueError(f"PerClassMetric: needs the semseg task for the classes; tasks: {list(tasks)}")
        if num_classes < 1:
            raise ValueError(f"PerClassMetric: num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.depth, self.normals = "depth" in tasks, "normals" in tasks
        n = num_classes
        self._state = torch.zeros(n * n + 4 * n, dtype=torch.float64)

    def _counts(self, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return torch.bincount(labels, weights=weights, minlength=self.num_classes).double()

    def update(self, pred: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> None:  # type: ignore[override]
        """``pred``: the model's outputs (``semseg`` B×C×H×W logits or B×H×W ids, ``depth`` B×1×H×W,
        ``normals`` B×3×H×W); ``target``: the targets, ``semseg`` B×H×W ids (255 = ignore)."""
        n = self.num_classes
        labels = target["semseg"].long()
        if labels.dim() == 4:
            labels = labels[:, 0]
        seg = pred["semseg"]
        seg = seg.argmax(dim=1) if seg.dim() == labels.dim() + 1 else seg.long()
        if seg.shape != labels.shape:
            raise ValueError(f"PerClassMetric: semseg prediction {tuple(seg.shape)} != target {tuple(labels.shape)}")
        labelled = labels != self.ignore_index
        for name, ids in (("target", labels[labelled]), ("prediction", seg[labelled])):
            if ids.numel() and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"PerClassMetric: {name} class id outside [0, {n}) (and not {self.ignore_index})")
        add = torch.zeros_like(self._state)
        t, p = labels[labelled], seg[labelled]
        add[: n * n] = torch.bincount(t * n + p, minlength=n * n).double().cpu()
        if self.depth:
            d_pred, d_true = pred["depth"][:, 0].double(), target["depth"][:, 0].double()
            valid = labelled & (d_true > 0)
            err = (d_pred[valid].clamp(min=1e-9) - d_true[valid]) ** 2
            add[n * n : n * n + n] = self._counts(labels[valid]).cpu()
            add[n * n + n : n * n + 2 * n] = self._counts(labels[valid], err).cpu()
        if self.normals:
            v_pred = pred["normals"].double().movedim(1, -1)
            v_true = target["normals"].double().movedim(1, -1)
            valid = labelled & (v_true != 0).any(dim=-1)
            angle = _angles_deg(v_pred[valid], v_true[valid])
            add[n * n + 2 * n : n * n + 3 * n] = self._counts(labels[valid]).cpu()
            add[n * n + 3 * n :] = self._counts(labels[valid], angle).cpu()
        self._add(add)

    def confusion(self) -> Tensor:
        """Pixel counts, rows: target class, columns: predicted class."""
        n = self.num_classes
        return self._state[: n * n].view(n, n)

    def compute(self) -> dict[str, float]:
        """Flat ``{"iou/<class id>": ..., "depth_rmse/<id>": ..., "normals_mean/<id>": ...}``; NaN for a
        class with no pixel to measure (IoU: absent from both target and prediction)."""
        return {f"{k}/{i}": v for i, row in enumerate(self.rows()) for k, v in row.items() if k != "pixels"}

    def rows(self) -> list[dict[str, float]]:
        """One dict per class id: ``pixels`` (labelled pixels of the class), ``iou``, ``acc`` (its pixels
        predicted as it), and ``depth_rmse`` / ``normals_mean`` when those tasks are measured."""
        n = self.num_classes
        cm = self.confusion()
        tp, gt, predicted = cm.diag(), cm.sum(dim=1), cm.sum(dim=0)
        union = gt + predicted - tp
        d_n, d_sq, v_n, v_sum = self._state[n * n :].view(4, n)
        out = []
        for c in range(n):
            row = {
                "pixels": float(gt[c]),
                "iou": float(tp[c] / union[c]) if union[c] > 0 else math.nan,
                "acc": float(tp[c] / gt[c]) if gt[c] > 0 else math.nan,
            }
            if self.depth:
                row["depth_rmse"] = math.sqrt(d_sq[c] / d_n[c]) if d_n[c] > 0 else math.nan
            if self.normals:
                row["normals_mean"] = float(v_sum[c] / v_n[c]) if v_n[c] > 0 else math.nan
            out.append(row)
        return out

    def report(self, class_names: Sequence[str]) -> dict[str, Any]:
        """``{"classes": {name: row}, "confusion": {"classes": names, "counts": n×n, "normalized": n×n}}``:
        :meth:`rows` by class name, and the confusion matrix with each row divided by its sum (the share
        of a class's pixels predicted as each class; a class without pixels has a row of NaN)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"PerClassMetric.report: {len(class_names)} class names for {self.num_classes} classes")
        cm = self.confusion()
        sums = cm.sum(dim=1, keepdim=True)
        normalized = torch.where(sums > 0, cm / sums.clamp(min=1), torch.full_like(cm, math.nan))
        return {
            "classes": dict(zip(class_names, self.rows(), strict=True)),
            "confusion": {
                "classes": list(class_names),
                "counts": cm.tolist(),
                "normalized": normalized.tolist(),
            },
        }
