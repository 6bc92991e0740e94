"""Semantic segmentation (and human parts): confusion matrix -> mIoU, pixel and mean class accuracy.

mIoU is averaged over the classes that occur in the target or the prediction of the evaluated
set (a class absent from both has an undefined 0/0 IoU and is skipped); the official MTL code
(``evaluation/eval_semseg.py``) averages over all classes, which equals ours whenever every class
occurs, as on the full NYUD-v2 and PASCAL-Context validation sets. Mean class accuracy averages
over classes present in the target.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.losses import IGNORE_INDEX
from fusion.metrics.base import Metric


class SegmentationMetric(Metric):
    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"SegmentationMetric: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
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
            "miou": (tp[present] / union[present]).mean().item(),
            "pixel_acc": (tp.sum() / total).item(),
            "mean_acc": (tp[gt > 0] / gt[gt > 0]).mean().item(),
        }
