"""Saliency: mIoU and maxF as the official MTL code computes them (``evaluation/eval_sal.py``).

At each of 15 thresholds ``linspace(0.2, 0.9, 15)`` the prediction ``prob > t`` is compared with the
binary ground truth of each image: its Jaccard index (1 when both are empty), precision
``tp / (tp + fp + 1e-12)`` and recall ``tp / (tp + fn + 1e-12)``. These are averaged over images per
threshold; ``miou`` is the best mean Jaccard, ``maxF`` the best F of the mean precision and mean recall.
``miou`` is what the official multi-task performance (Δm) uses for saliency. The state is the number of
images and, per threshold, the sums of the per-image values, so it merges exactly across batches and
DDP ranks. (The official code reads predictions back from 8-bit PNGs, so its probabilities are
quantised to 1/255; here they are not.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusion.metrics.base import Metric

SALIENCY_THRESHOLDS = torch.linspace(0.2, 0.9, 15, dtype=torch.float64)


class SaliencyMetric(Metric):
    # state: n_images, then K Jaccard, K precision, K recall sums
    def __init__(self, from_logits: bool = True) -> None:
        self.thresholds = SALIENCY_THRESHOLDS.clone()
        self.from_logits = from_logits
        self._state = torch.zeros(1 + 3 * len(self.thresholds), dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: B×1×H×W logits (or probabilities if ``from_logits=False``); ``target``: B×1×H×W in [0, 1]."""
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(
                f"SaliencyMetric: expected B×1×H×W prediction and target, got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        prob = (torch.sigmoid(pred) if self.from_logits else pred).detach().double().flatten(1)
        gt = (target >= 0.5).flatten(1)
        t = self.thresholds.to(prob.device).view(-1, 1, 1)
        mask = prob.unsqueeze(0) > t  # K × B × N
        tp = (mask & gt).sum(-1).double()
        fp = (mask & ~gt).sum(-1).double()
        fn = (~mask & gt).sum(-1).double()
        union = tp + fp + fn
        jaccard = torch.where(union > 0, tp / union.clamp(min=1), torch.ones_like(tp))
        precision = tp / (tp + fp + 1e-12)
        recall = tp / (tp + fn + 1e-12)
        batch = torch.tensor([float(prob.shape[0])], dtype=torch.float64, device=prob.device)
        self._add(torch.cat([batch, jaccard.sum(1), precision.sum(1), recall.sum(1)]))

    def compute(self) -> dict[str, float]:
        n = self._state[0]
        if n == 0:
            return {"miou": math.nan, "maxF": math.nan}
        jaccard, precision, recall = (self._state[1:] / n).view(3, -1)
        f = 2 * precision * recall / (precision + recall + 1e-12)
        return {"miou": jaccard.max().item(), "maxF": f.max().item()}
