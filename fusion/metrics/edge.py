"""Boundary detection: F-measure at the optimal dataset-wide threshold (ODS) and per image (OIS).

``protocol="bsds"`` (default) is the BSDS protocol as the official MTL code runs it through SEISM
(Pont-Tuset & Marques 2016; ``eval_cont.m`` -> ``edgesEvalImg``): at each threshold t_k = k/(K+1)
(K = 99: 0.01 .. 0.99, as the official ``eval_edge.py`` writes them) the prediction ``prob >= t_k`` is
thinned to one-pixel-wide lines (``thin``: MATLAB's ``bwmorph(.., 'thin', inf)``), then its pixels are
matched one-to-one to ground-truth edge pixels no further apart than ``max_dist`` times the image
diagonal (Euclidean; SEISM's ``maxDist``, 0.0075 for PASCAL-Context, the value the official code uses)
by a maximum bipartite matching (``scipy.sparse.csgraph.maximum_bipartite_matching``, exact; the
BSDS ``correspondPixels`` solves the same assignment with an outlier cost that also maximises the
number of matches). Per image and threshold that gives ``matched`` (= SEISM's cntR = cntP: one-to-one),
``n_gt`` (sumR) and ``n_pred`` (sumP, thinned). The state is those counts summed over images per
threshold, plus, for OIS, the three counts of each image at its own best threshold (SEISM's
``general_ois``: the first threshold of highest F; an image without ground-truth edges has F = 0 at
every threshold and so adds its lowest threshold's predictions): every entry is a sum, so the result
is exact across batches and DDP ranks.

``protocol="approximate"`` is the older, cheaper approximation, kept as an explicit option for
per-epoch validation of large images: a max-pool dilation of radius ``r = round(max_dist * diagonal)``
pixels (a square window of side ``2r+1``), no thinning, and many-to-one matches (one prediction may
recall several ground-truth pixels and vice versa). It is optimistic with respect to the BSDS protocol
(docs/benchmarks.md, ``benchmarks/edge_eval.py``, measures by how much) and has no OIS.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from torch import Tensor

from fusion.metrics.base import Metric

EDGE_PROTOCOLS = ("bsds", "approximate")


# ----------------------------------------------------------------------------------------------
# Thinning (Guo & Hall 1989, the algorithm of MATLAB's bwmorph 'thin', as in Lam, Lee & Suen 1992)
# ----------------------------------------------------------------------------------------------
# Neighbour k of a pixel, for bit k of its 8-neighbourhood code: x1 = east, then counter-clockwise.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations, indexed by the 8-neighbourhood code."""
    first, second = np.zeros(256, bool), np.zeros(256, bool)
    for code in range(256):
        x = [bool(code >> k & 1) for k in range(8)] + [bool(code & 1)]  # x[8] = x1 again
        g1 = sum((not x[i]) and (x[i + 1] or x[i + 2]) for i in (0, 2, 4, 6)) == 1
        n1 = sum(x[k] or x[k - 1] for k in (1, 3, 5, 7))
        n2 = sum(x[k] or x[k + 1] for k in (1, 3, 5, 7))
        g2 = 2 <= min(n1, n2) <= 3
        g3 = not ((x[1] or x[2] or not x[7]) and x[0])
        g3p = not ((x[5] or x[6] or not x[3]) and x[4])
        first[code], second[code] = g1 and g2 and g3, g1 and g2 and g3p
    return first, second


_THIN_LUTS = _thin_luts()


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary H×W mask to one-pixel-wide lines, to convergence (MATLAB ``bwmorph(mask, 'thin', inf)``)."""
    return thin_many(np.asarray(mask, dtype=bool)[None])[0]


def thin_many(masks: np.ndarray) -> np.ndarray:
    """:func:`thin` of each mask of a T×H×W stack, all in one pass.

    Each sub-iteration decides every deletion from the same snapshot, as the algorithm requires. Only
    pixels next to the background can be deleted (the code of an interior pixel, 255, deletes nothing),
    so each pass looks at those alone, and at the neighbours of what the last one deleted: the work
    follows the pixels removed, not image size × passes. Every mask is padded with a zero border, so
    the masks of the stack never touch.
    """
    masks = np.asarray(masks, dtype=bool)
    t, h, w = masks.shape
    wp = w + 2
    img = np.zeros((t, h + 2, wp), np.uint8)
    img[:, 1:-1, 1:-1] = masks
    img = img.ravel()
    offsets = np.array([dy * wp + dx for dy, dx in _NEIGHBOURS])
    on = np.flatnonzero(img)
    full = np.ones(on.size, bool)
    for off in offsets:
        full &= img[on + off] == 1
    cand = on[~full]
    weights = (1 << np.arange(8)).astype(np.int32)
    marked = np.zeros(img.size, bool)  # marked[i]: i is in cand
    marked[cand] = True
    stamp = np.zeros(img.size, np.int64)
    changed = True
    while changed and cand.size:
        changed = False
        for lut in _THIN_LUTS:
            codes = (img[cand[:, None] + offsets[None, :]].astype(np.int32) * weights).sum(axis=1)
            delete = lut[codes]
            if not delete.any():
                continue
            changed = True
            gone = cand[delete]
            img[gone] = 0
            marked[gone] = False
            cand = cand[~delete]
            # The pixels next to a deleted one may now border the background: add them once each.
            nbrs = (gone[:, None] + offsets[None, :]).ravel()
            nbrs = nbrs[(img[nbrs] == 1) & ~marked[nbrs]]
            if nbrs.size:
                order = np.arange(nbrs.size)
                stamp[nbrs] = order
                nbrs = nbrs[stamp[nbrs] == order]
                marked[nbrs] = True
                cand = np.concatenate([cand, nbrs])
    return img.reshape(t, h + 2, wp)[:, 1:-1, 1:-1].astype(bool)


# ----------------------------------------------------------------------------------------------
# One-to-one matching within a radius
# ----------------------------------------------------------------------------------------------
def _disc(radius: float) -> list[tuple[int, int]]:
    r = int(math.floor(radius))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius * radius]


def match_count(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """The most pairs (predicted pixel, ground-truth pixel) at distance <= ``radius``, each pixel in one pair."""
    return int(match_counts(np.asarray(pred, dtype=bool)[None], gt, radius)[0])


# Pixels of the threshold maps thinned at once (bounds the memory of a stack of maps).
_MAX_PIXELS = 8_000_000


def match_counts(preds: np.ndarray, gt: np.ndarray, radius: float) -> np.ndarray:
    """:func:`match_count` of each prediction of a T×H×W stack against the same ground truth.

    One maximum bipartite matching (Hopcroft-Karp) per prediction: scipy's takes far longer on the
    disjoint union of several graphs than on each of them in turn.
    """
    t = preds.shape[0]
    out = np.zeros(t, np.int64)
    gy, gx = np.nonzero(gt)
    if gy.size == 0:
        return out
    disc = _disc(radius)
    r = max(max(abs(dy), abs(dx)) for dy, dx in disc)
    h, w = gt.shape
    wp = w + 2 * r
    gt_index = np.full((h + 2 * r) * wp, -1, np.int64)
    gt_index[(gy + r) * wp + gx + r] = np.arange(gy.size)
    offsets = np.array([dy * wp + dx for dy, dx in disc])
    for i in range(t):
        py, px = np.nonzero(preds[i])
        if py.size == 0:
            continue
        idx = gt_index[((py + r) * wp + px + r)[:, None] + offsets[None, :]]  # P × D: the gt pixel there
        rows, slots = np.nonzero(idx >= 0)
        if rows.size:
            # Only the pixels with a candidate partner enter the graph: isolated ones cannot match, and
            # scipy's matching slows down badly with many of them.
            row_ids, rows = np.unique(rows, return_inverse=True)
            col_ids, cols = np.unique(idx[row_ids[rows], slots], return_inverse=True)
            graph = csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(row_ids.size, col_ids.size))
            out[i] = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    return out


def _f_measure(matched: Tensor, n_gt: Tensor, n_pred: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SEISM's precision, recall and F from summed counts (no ground truth: recall 1, precision 0;
    no prediction: recall 0, precision 1)."""
    recall = torch.where(n_gt > 0, matched / n_gt.clamp(min=1), torch.ones_like(matched))
    precision = torch.where(
        n_gt > 0,
        torch.where(n_pred > 0, matched / n_pred.clamp(min=1), torch.ones_like(matched)),
        torch.zeros_like(matched),
    )
    f = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(recall)
    )
    return precision, recall, f


class EdgeMetric(Metric):
    """``odsF`` (with its ``precision``, ``recall``, ``threshold``) and, with ``protocol="bsds"``, ``oisF``.

    bsds state: n_gt, K n_pred, K matched, then the OIS sums matched, n_gt, n_pred.
    approximate state: n_gt, K n_pred, K matched-predicted, K recalled-gt.
    """

    def __init__(
        self,
        num_thresholds: int = 99,
        tolerance_px: float | None = None,
        max_dist: float = 0.0075,
        from_logits: bool = True,
        protocol: Literal["bsds", "approximate"] = "bsds",
    ) -> None:
        if num_thresholds < 1:
            raise ValueError(f"EdgeMetric: num_thresholds must be >= 1, got {num_thresholds}")
        if tolerance_px is not None and tolerance_px < 0:
            raise ValueError(f"EdgeMetric: tolerance_px must be >= 0, got {tolerance_px}")
        if protocol not in EDGE_PROTOCOLS:
            raise ValueError(f"EdgeMetric: protocol must be one of {EDGE_PROTOCOLS}, got {protocol!r}")
        self.thresholds = torch.arange(1, num_thresholds + 1, dtype=torch.float64) / (num_thresholds + 1)
        self.tolerance_px = tolerance_px
        self.max_dist = max_dist
        self.from_logits = from_logits
        self.protocol = protocol
        k = num_thresholds
        self._state = torch.zeros(1 + 2 * k + 3 if protocol == "bsds" else 1 + 3 * k, dtype=torch.float64)

    def distance(self, height: int, width: int) -> float:
        """Matching distance in pixels (bsds): ``tolerance_px``, else ``max_dist`` times the image diagonal."""
        if self.tolerance_px is not None:
            return float(self.tolerance_px)
        return self.max_dist * math.hypot(height, width)

    def radius(self, height: int, width: int) -> int:
        """Max-pool radius in pixels (approximate): the matching distance, rounded."""
        return int(round(self.distance(height, width)))

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
        if self.protocol == "approximate":
            self._update_approximate(prob, gt)
        else:
            prob_np, gt_np = prob.cpu().numpy(), gt.cpu().numpy()
            for b in range(prob_np.shape[0]):
                for c in range(prob_np.shape[1]):
                    self._update_bsds(prob_np[b, c], gt_np[b, c])

    def image_counts(self, prob: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """For one H×W probability map and boolean ground truth: per threshold the matched and the
        (thinned) predicted pixel counts, and the number of ground-truth edge pixels."""
        k = len(self.thresholds)
        matched, n_pred = np.zeros(k), np.zeros(k)
        n_gt = int(gt.sum())
        # Thresholds that select the same pixels give the same counts: each distinct map is done once.
        levels = np.searchsorted(self.thresholds.numpy(), prob, side="right")  # thresholds <= prob
        present = np.unique(levels[levels > 0])  # t_j is passed by exactly the pixels with level >= j + 1
        if present.size == 0:
            return matched, n_pred, n_gt
        # The distinct maps are those starting at t_0 and after each present level; the first above
        # the highest present level selects nothing.
        firsts = np.concatenate([[0], present[:-1]])  # threshold index where each distinct map starts
        maps_from = [int(i) for i in firsts]
        ends = [int(i) for i in present]  # ... and where it ends (exclusive)
        radius = self.distance(*gt.shape)
        chunk = max(1, _MAX_PIXELS // max(1, prob.size))
        for c in range(0, len(maps_from), chunk):
            starts = maps_from[c : c + chunk]
            stack = np.stack([levels > j for j in starts])  # prob >= t_j: level >= j + 1
            lines = thin_many(stack)
            m = match_counts(lines, gt, radius)
            p = lines.reshape(len(starts), -1).sum(axis=1)
            for i, (j0, j1) in enumerate(zip(starts, ends[c : c + chunk], strict=True)):
                matched[j0:j1], n_pred[j0:j1] = m[i], p[i]
        return matched, n_pred, n_gt

    def _update_bsds(self, prob: np.ndarray, gt: np.ndarray) -> None:
        matched, n_pred, n_gt = self.image_counts(prob, gt)
        m, p = torch.from_numpy(matched), torch.from_numpy(n_pred)
        g = torch.full_like(m, float(n_gt))
        best = int(_f_measure(m, g, p)[2].argmax())  # the first threshold of highest F, as MATLAB's max
        self._add(torch.cat([torch.tensor([float(n_gt)]), p, m, torch.stack([m[best], g[best], p[best]])]))

    def _update_approximate(self, prob: Tensor, gt: Tensor) -> None:
        r = self.radius(*prob.shape[-2:])
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
        nan = {"odsF": math.nan, "precision": math.nan, "recall": math.nan, "threshold": math.nan}
        if self.protocol == "approximate":
            n_pred, matched, recalled = self._state[1:].view(3, k)
            if n_gt == 0 and n_pred.sum() == 0:  # nothing seen (or nothing to find and nothing found): undefined
                return nan
            precision = torch.where(n_pred > 0, matched / n_pred.clamp(min=1), torch.ones_like(n_pred))
            recall = recalled / n_gt if n_gt > 0 else torch.zeros_like(recalled)
            f = torch.where(
                precision + recall > 0,
                2 * precision * recall / (precision + recall).clamp(min=1e-12),
                torch.zeros_like(precision),
            )
            extra: dict[str, float] = {}
        else:
            n_pred, matched = self._state[1 : 1 + 2 * k].view(2, k)
            if n_gt == 0 and n_pred.sum() == 0:
                return {**nan, "oisF": math.nan}
            precision, recall, f = _f_measure(matched, n_gt.expand(k), n_pred)
            ois = self._state[1 + 2 * k :]
            extra = {"oisF": _f_measure(ois[0:1], ois[1:2], ois[2:3])[2].item()}
        best = int(f.argmax())
        return {
            "odsF": f[best].item(),
            "precision": precision[best].item(),
            "recall": recall[best].item(),
            "threshold": self.thresholds[best].item(),
            **extra,
        }
