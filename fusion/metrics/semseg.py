"""Semantic segmentation (and human parts): confusion matrix -> mIoU, pixel and mean class accuracy.

``miou_classes`` says which classes mIoU averages, as the two official codes differ:

- ``"present"`` (default): the classes that occur in the target or the prediction of the evaluated
  set; a class absent from both has an undefined 0/0 IoU and is skipped. The official CEN code
  (``utils/meter.py``, ``np.nanmean`` of the IoUs) and ANN's (``seg_running_score.py``) do this.
- ``"all"``: every class, an absent one counting 0, as the official MTI-Net code
  (``evaluation/eval_semseg.py``: ``tp / max(tp + fp + fn, 1e-8)`` averaged over all classes).

Both equal whenever every class occurs. Mean class accuracy averages over classes present in the target.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fusion.losses import IGNORE_INDEX
from fusion.metrics.base import Metric

MIOU_CLASSES = ("present", "all")


class SegmentationMetric(Metric):
    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, miou_classes: Literal["present", "all"] = "present"
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"SegmentationMetric: num_classes must be >= 1, got {num_classes}")
        if miou_classes not in MIOU_CLASSES:
            raise ValueError(f"SegmentationMetric: miou_classes must be one of {MIOU_CLASSES}, got {miou_classes!r}")
        self.num_classes = num_classes
        self.miou_classes = miou_classes
        self.ignore_index = ignore_index
        self._state = torch.zeros(num_classes * num_classes, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: B×C×H×W logits or B×H×W class ids; ``target``: B×H×W (or B×1×H×W) ids, 255 = ignore."""
        if target.dim() == 4:
            target = target[:, 0]
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(
                f"SegmentationMetric: prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}"
            )
        target = target.long().flatten()
        pred = pred.long().flatten()
        valid = target != self.ignore_index
        target, pred = target[valid], pred[valid]
        n = self.num_classes
        for name, ids in (("target", target), ("prediction", pred)):
            if ids.numel() and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"SegmentationMetric: {name} class id outside [0, {n}) (and not {self.ignore_index})")
        self._add(torch.bincount(target * n + pred, minlength=n * n))

    def confusion(self) -> Tensor:
        """Rows: target class, columns: predicted class."""
        return self._state.view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        cm = self.confusion()
        tp = cm.diag()
        gt = cm.sum(dim=1)
        predicted = cm.sum(dim=0)
        union = gt + predicted - tp
        present = union > 0
        total = cm.sum()
        if total == 0:
            return {"miou": float("nan"), "pixel_acc": float("nan"), "mean_acc": float("nan")}
        return {
            "miou": (tp / union.clamp(min=1)).mean().item()
            if self.miou_classes == "all"
            else (tp[present] / union[present]).mean().item(),
            "pixel_acc": (tp.sum() / total).item(),
            "mean_acc": (tp[gt > 0] / gt[gt > 0]).mean().item(),
        }
