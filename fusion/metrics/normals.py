"""Surface normals: angular error statistics over valid pixels (target vector non-zero).

Mean, RMSE and % of pixels under 11.25, 22.5 and 30 degrees as the official MTL code
(``evaluation/eval_normals.py``); the angle is that between the two vectors whatever their lengths
(as after the official L2-normalisation), computed with atan2 for accuracy. The median
is read from a histogram of angles with 0.1 degree bins over [0, 180], interpolating linearly in the
bin that holds the middle rank: its error is below 0.1 degree, and unlike an exact median it can
be accumulated across batches and ranks as fixed-size sums.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusion.metrics.base import Metric

BIN_DEG = 0.1
NUM_BINS = int(round(180 / BIN_DEG))
THRESHOLDS_DEG = (11.25, 22.5, 30.0)


class NormalsMetric(Metric):
    # state: n, sum angle, sum angle^2, 3 threshold counts, NUM_BINS histogram
    def __init__(self) -> None:
        self._state = torch.zeros(3 + len(THRESHOLDS_DEG) + NUM_BINS, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``, ``target``: B×3×H×W vectors (the prediction need not be unit length); target 0 = missing."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"NormalsMetric: expected B×3×H×W prediction and target, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        valid = (target != 0).any(dim=1)
        p = pred.double().movedim(1, -1)[valid]
        t = target.double().movedim(1, -1)[valid]
        # atan2(|p x t|, p . t) is the angle without normalising and, unlike acos, stays accurate
        # near 0 and 180 degrees, where acos of a rounded cosine is off by ~1e-6 rad.
        cross = torch.linalg.vector_norm(torch.linalg.cross(p, t, dim=-1), dim=-1)
        angle = torch.rad2deg(torch.atan2(cross, (p * t).sum(dim=-1)))
        # A zero prediction has no direction: 90 degrees, as the official dot product with 0 gives.
        angle = angle.masked_fill((p == 0).all(dim=-1), 90.0)
        bins = (angle / BIN_DEG).long().clamp(max=NUM_BINS - 1)
        self._add(
            torch.cat(
                [
                    torch.stack(
                        [
                            torch.tensor(float(angle.numel()), dtype=torch.float64, device=angle.device),
                            angle.sum(),
                            (angle**2).sum(),
                            *[(angle < th).sum().double() for th in THRESHOLDS_DEG],
                        ]
                    ),
                    torch.bincount(bins, minlength=NUM_BINS).double(),
                ]
            )
        )

    def _median(self, hist: Tensor, n: float) -> float:
        rank = n / 2
        cum = hist.cumsum(0)
        k = int(torch.searchsorted(cum, torch.tensor([rank], dtype=torch.float64)).item())
        before = cum[k - 1].item() if k > 0 else 0.0
        return (k + (rank - before) / hist[k].item()) * BIN_DEG

    def compute(self) -> dict[str, float]:
        n, total, total_sq = self._state[:3].tolist()
        counts = self._state[3 : 3 + len(THRESHOLDS_DEG)].tolist()
        keys = ("mean", "median", "rmse", "11.25", "22.5", "30")
        if n == 0:
            return {k: float("nan") for k in keys}
        hist = self._state[3 + len(THRESHOLDS_DEG) :]
        values = [total / n, self._median(hist, n), math.sqrt(total_sq / n), *[100 * c / n for c in counts]]
        return dict(zip(keys, values, strict=True))
