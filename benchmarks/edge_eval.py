"""Edge ODS: the BSDS protocol (thinning, one-to-one matching) against the max-pool approximation.

On synthetic ground truth (straight edges between random points) and four kinds of synthetic
prediction, it reports, per image size and kind, ``odsF`` of both protocols (``fusion.metrics.EdgeMetric``,
``protocol="bsds"`` and ``"approximate"``, ``max_dist`` 0.0075), how far the approximation is off, and
each protocol's CPU time per image:

- ``blurred``: the ground truth blurred (sigma 2 px) and scaled, plus noise: thick, soft responses,
  as a trained network gives;
- ``shifted``: the ground truth moved by a distance within the tolerance, plus noise;
- ``doubled``: responses on both sides of each edge, none on it (one-to-one matching can pair only one);
- ``untrained``: 0.5 plus small noise everywhere, as a network at initialisation.

Ratios: ``approx_minus_bsds_odsF_max`` and ``_mean`` (over all cases) and ``bsds_vs_approximate_time``
(median over the cases of the time ratio). ``--quick``: two sizes, two images per case.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from benchmarks._common import emit, parse_args
from fusion.metrics.edge import EdgeMetric


def ground_truth(h: int, w: int, rng: np.random.Generator, lines: int = 12) -> np.ndarray:
    gt = np.zeros((h, w), bool)
    for _ in range(lines):
        y0, y1 = rng.integers(0, h, 2)
        x0, x1 = rng.integers(0, w, 2)
        n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
        gt[np.linspace(y0, y1, n).round().astype(int), np.linspace(x0, x1, n).round().astype(int)] = True
    return gt


def prediction(kind: str, gt: np.ndarray, rng: np.random.Generator, tolerance: float) -> np.ndarray:
    noise = rng.normal(0.0, 0.05, gt.shape)
    if kind == "blurred":
        p = ndi.gaussian_filter(gt.astype(float), 2.0) * 6.0 + noise
    elif kind == "shifted":
        shift = max(1, int(tolerance))
        p = np.roll(gt, (shift, shift), axis=(0, 1)).astype(float) * 0.9 + noise
    elif kind == "doubled":
        side = np.roll(gt, 1, axis=1) | np.roll(gt, -1, axis=1)
        p = (side & ~gt).astype(float) * 0.9 + noise
    else:  # untrained
        p = 0.5 + rng.normal(0.0, 0.02, gt.shape)
    return np.clip(p, 0.0, 1.0)


def run(protocol: str, probs: list[np.ndarray], gts: list[np.ndarray]) -> tuple[float, float]:
    metric = EdgeMetric(from_logits=False, protocol=protocol)
    start = time.perf_counter()
    for p, g in zip(probs, gts, strict=True):
        metric.update(torch.from_numpy(p)[None, None], torch.from_numpy(g).float()[None, None])
    seconds = (time.perf_counter() - start) / len(probs)
    return metric.compute()["odsF"], seconds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    sizes = [(96, 128), (240, 320)] if args.quick else [(96, 128), (240, 320), (480, 640)]
    images = 2 if args.quick else 4
    results = []
    for h, w in sizes:
        tolerance = EdgeMetric().distance(h, w)
        for kind in ("blurred", "shifted", "doubled", "untrained"):
            rng = np.random.default_rng(0)
            gts = [ground_truth(h, w, rng) for _ in range(images)]
            probs = [prediction(kind, g, rng, tolerance) for g in gts]
            bsds, t_bsds = run("bsds", probs, gts)
            approx, t_approx = run("approximate", probs, gts)
            results.append(
                {
                    "size": [h, w],
                    "prediction": kind,
                    "images": images,
                    "tolerance_px": round(tolerance, 3),
                    "bsds_odsF": round(bsds, 4),
                    "approximate_odsF": round(approx, 4),
                    "approx_minus_bsds": round(approx - bsds, 4),
                    "bsds_s_per_image": round(t_bsds, 4),
                    "approximate_s_per_image": round(t_approx, 4),
                }
            )
    gaps = [r["approx_minus_bsds"] for r in results]
    ratios = {
        "approx_minus_bsds_odsF_max": max(gaps),
        "approx_minus_bsds_odsF_mean": round(statistics.mean(gaps), 4),
        "bsds_vs_approximate_time": round(
            statistics.median(r["bsds_s_per_image"] / max(r["approximate_s_per_image"], 1e-9) for r in results), 1
        ),
    }
    emit("edge_eval", results, ratios, args.json)


if __name__ == "__main__":
    main()
