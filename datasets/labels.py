"""Label-derived maps shared by sources: edges from semantic / instance labels."""

from __future__ import annotations

import numpy as np


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbour has a different label (both sides of the boundary)."""
    b = np.zeros(labels.shape, dtype=bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    b[1:, :] |= dv
    b[:-1, :] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)² square, as shifted ORs (no scipy needed on the hot path)."""
    if radius <= 0:
        return mask
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx == 0:
                continue
            ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
            xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
            out[yd, xd] |= mask[ys, xs]
    return out


def edges_from_labels(*label_maps: np.ndarray, thickness: int = 2, ignore_index: int | None = 255) -> np.ndarray:
    """Semantic and instance boundaries as a uint8 {0,1} map, about ``thickness`` pixels thick.

    NYUD's edge ground truth (as used by MTI-Net) marks semantic and instance boundaries; this
    marks every pixel that has a 4-neighbour with another label in any of the given maps, then
    dilates so the band is ``thickness`` pixels wide. Boundaries with ignore pixels are not edges.
    """
    if not label_maps:
        raise ValueError("edges_from_labels needs at least one label map")
    shape = label_maps[0].shape
    edge = np.zeros(shape, dtype=bool)
    ignore = np.zeros(shape, dtype=bool)
    for lab in label_maps:
        if lab.shape != shape:
            raise ValueError(f"label maps differ in shape: {lab.shape} vs {shape}")
        edge |= _boundary(lab)
    if ignore_index is not None:
        ignore = label_maps[0] == ignore_index
        # A boundary that exists only because one side is ignored is not a real edge.
        edge &= ~_dilate(ignore, 1)
    # Both sides are marked, so the raw band is 2 px; dilate to reach the requested thickness.
    edge = _dilate(edge, max(0, (thickness - 2 + 1) // 2))
    return edge.astype(np.uint8)
