"""Boundary detection (and saliency): F-measure at the optimal dataset-wide threshold (ODS).

The official MTL code evaluates edges with the SEISM benchmark (Pont-Tuset & Marques 2016):
predictions are thinned, then matched one-to-one to ground-truth edge pixels within a distance
of ``maxDist`` times the image diagonal (0.0075 on PASCAL-Context, 0.011 on NYUD) by bipartite
matching, and precision/recall are accumulated over the dataset at each of 99 thresholds.

Here the matching is approximated with a max-pool dilation of radius ``r`` pixels (a square
window of side ``2r+1``): a predicted edge pixel counts as correct when a ground-truth edge lies
within the window, and a ground-truth pixel is recalled when a prediction above the threshold
lies within it. Unlike bipartite matching, one prediction may recall several ground-truth pixels
(and vice versa) and predictions are not thinned, so the figure is optimistic with respect to
SEISM; it is exact, mergeable and cheap, which makes it fit for model selection and comparisons
within this project. Per threshold ``t_k = (k+1)/(K+1)`` the state holds the number of predicted
pixels, of matched predicted pixels and of recalled ground-truth pixels, computed for all
thresholds at once from histograms (recall uses the max-pooled probability map, since dilating
``prob >= t`` equals thresholding the max-pooled probabilities).

With ``tolerance_px=0`` the same metric is the pixel-exact maxF used for saliency.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.metrics.base import Metric


class EdgeMetric(Metric):
    # state: n_gt, then K predicted, K matched-predicted, K recalled-gt counts
    def __init__(
        self,
        num_thresholds: int = 99,
        tolerance_px: int | None = None,
        max_dist: float = 0.0075,
        from_logits: bool = True,
    ) -> None:
        if num_thresholds < 1:
            raise ValueError(f"EdgeMetric: num_thresholds must be >= 1, got {num_thresholds}")
        if tolerance_px is not None and tolerance_px < 0:
            raise ValueError(f"EdgeMetric: tolerance_px must be >= 0, got {tolerance_px}")
        self.thresholds = torch.arange(1, num_thresholds + 1, dtype=torch.float64) / (num_thresholds + 1)
        self.tolerance_px = tolerance_px
        self.max_dist = max_dist
        self.from_logits = from_logits
        self._state = torch.zeros(1 + 3 * num_thresholds, dtype=torch.float64)

    def radius(self, height: int, width: int) -> int:
        """Matching radius in pixels: ``tolerance_px``, else ``max_dist`` times the image diagonal."""
        if self.tolerance_px is not None:
            return self.tolerance_px
        return int(round(self.max_dist * math.hypot(height, width)))

    def _count_at_least(self, values: Tensor) -> Tensor:
        """For every threshold t_k, the number of ``values >= t_k``."""
        k = len(self.thresholds)
        thresholds = self.thresholds.to(values.device)
        below = torch.bucketize(values.double().flatten(), thresholds, right=True)  # thresholds <= value
        hist = torch.bincount(below, minlength=k + 1).double()
        return hist.flip(0).cumsum(0).flip(0)[1:]

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: B×1×H×W logits (or probabilities if ``from_logits=False``); ``target``: B×1×H×W in {0, 1}."""
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(
                f"EdgeMetric: expected B×1×H×W prediction and target, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        prob = (torch.sigmoid(pred) if self.from_logits else pred).detach().double()
        gt = target >= 0.5
        r = self.radius(*pred.shape[-2:])
        if r > 0:
            near_gt = F.max_pool2d(gt.double(), 2 * r + 1, stride=1, padding=r) > 0
            near_prob = F.max_pool2d(prob, 2 * r + 1, stride=1, padding=r)
        else:
            near_gt, near_prob = gt, prob
        self._add(
            torch.cat(
                [
                    gt.sum().double().view(1),
                    self._count_at_least(prob),
                    self._count_at_least(prob[near_gt]),
                    self._count_at_least(near_prob[gt]),
                ]
            )
        )

    def compute(self) -> dict[str, float]:
        k = len(self.thresholds)
        n_gt = self._state[0]
        n_pred, matched, recalled = self._state[1:].view(3, k)
        if n_gt == 0 and n_pred.sum() == 0:  # nothing seen (or nothing to find and nothing found): undefined
            return {"odsF": math.nan, "precision": math.nan, "recall": math.nan, "threshold": math.nan}
        precision = torch.where(n_pred > 0, matched / n_pred.clamp(min=1), torch.ones_like(n_pred))
        recall = recalled / n_gt if n_gt > 0 else torch.zeros_like(recalled)
        f = torch.where(
            precision + recall > 0,
            2 * precision * recall / (precision + recall).clamp(min=1e-12),
            torch.zeros_like(precision),
        )
        best = int(f.argmax())
        return {
            "odsF": f[best].item(),
            "precision": precision[best].item(),
            "recall": recall[best].item(),
            "threshold": self.thresholds[best].item(),
        }
