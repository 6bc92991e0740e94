"""Depth: RMSE, log-RMSE, abs-rel and threshold accuracies over valid pixels (target > 0).

RMSE and log-RMSE as the official MTL code (``evaluation/eval_depth.py``, predictions clamped to
1e-9 before the log); abs-rel and delta < 1.25^k as Eigen et al. 2014, section 4. All are sums over
pixels of the whole set (pixel-weighted), not per-image means.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusion.metrics.base import Metric

_EPS = 1e-9


class DepthMetric(Metric):
    # state: n, sum sq err, sum sq log err, sum abs-rel, count delta<1.25, <1.25^2, <1.25^3
    def __init__(self) -> None:
        self._state = torch.zeros(7, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``, ``target``: B×1×H×W metres; target 0 = missing."""
        if pred.shape != target.shape:
            raise ValueError(f"DepthMetric: prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")
        valid = target > 0
        t = target[valid].double()
        p = pred[valid].double().clamp(min=_EPS)
        ratio = torch.maximum(p / t, t / p)
        self._add(
            torch.stack(
                [
                    torch.tensor(float(t.numel()), dtype=torch.float64, device=t.device),
                    ((p - t) ** 2).sum(),
                    ((p.log() - t.log()) ** 2).sum(),
                    ((p - t).abs() / t).sum(),
                    (ratio < 1.25).sum().double(),
                    (ratio < 1.25**2).sum().double(),
                    (ratio < 1.25**3).sum().double(),
                ]
            )
        )

    def compute(self) -> dict[str, float]:
        n, sq, log_sq, abs_rel, d1, d2, d3 = self._state.tolist()
        if n == 0:
            return {k: float("nan") for k in ("rmse", "log_rmse", "abs_rel", "delta1", "delta2", "delta3")}
        return {
            "rmse": math.sqrt(sq / n),
            "log_rmse": math.sqrt(log_sq / n),
            "abs_rel": abs_rel / n,
            "delta1": d1 / n,
            "delta2": d2 / n,
            "delta3": d3 / n,
        }
