"""Camera geometry for depth maps: back-projection and surface normals from depth.

Conventions follow the shard format (docs/data-format.md): a pinhole camera with
intrinsics ``[fx, fy, cx, cy]`` in pixels, camera frame x right, y down, z forward, depth is
metric z-depth with 0 = missing, and normals are unit vectors that face the camera
(``n · P < 0`` for the surface point ``P``).

``normals_from_depth`` uses central differences of the back-projected point cloud, the method
of Silberman et al. (ECCV 2012, "Indoor Segmentation and Support Inference from RGBD Images",
Sec. 3, which fits local planes) reduced to its smallest window: the two tangent vectors
``P(u+s) - P(u-s)`` and ``P(v+s) - P(v-s)`` span the local plane and their cross product is its
normal. It deliberately differs from the NYU toolbox in two ways: no least-squares plane fit
over a larger window (``step`` widens the baseline instead, which smooths quantisation noise
without a per-pixel eigen-decomposition), and pixels whose neighbours jump in depth by more
than ``max_rel_jump`` of the centre depth are marked missing rather than given a normal that
straddles two surfaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_intrinsics(intrinsics: Sequence[float]) -> tuple[float, float, float, float]:
    if len(intrinsics) != 4:
        raise ValueError(f"intrinsics must be [fx, fy, cx, cy], got {list(intrinsics)!r}")
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    if not (fx > 0 and fy > 0):
        raise ValueError(f"intrinsics fx and fy must be positive, got fx={fx}, fy={fy}")
    return fx, fy, cx, cy


def backproject(depth: np.ndarray, intrinsics: Sequence[float]) -> np.ndarray:
    """Metric z-depth H×W -> camera-frame points H×W×3 (float32); missing depth gives (0,0,0).

    Pixel centres are at integer coordinates, matching how ``cx, cy`` are given for NYUDv2.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be H×W, got shape {depth.shape}")
    fx, fy, cx, cy = _check_intrinsics(intrinsics)
    h, w = depth.shape
    z = np.nan_to_num(depth.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    z = np.where(z > 0, z, 0.0)
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    x = (u - cx) / fx * z
    y = (v - cy) / fy * z
    return np.stack([x, y, z], axis=-1).astype(np.float32)


def normals_from_depth(
    depth: np.ndarray,
    intrinsics: Sequence[float],
    step: int = 1,
    max_rel_jump: float = 0.1,
) -> np.ndarray:
    """Unit surface normals H×W×3 (float32) facing the camera; (0,0,0) where undefined.

    A normal is undefined (zero) at pixels with missing depth, within ``step`` pixels of the
    image border, where any of the four neighbours at distance ``step`` has missing depth, or
    where a neighbour's depth differs from the centre by more than ``max_rel_jump`` × centre
    depth (a depth discontinuity: the two sides belong to different surfaces). The default
    0.1 keeps planes seen at up to about 85° from frontal at NYUDv2 resolution
    (a plane at angle θ changes depth by about tan(θ)·step/fx of the depth per pixel).
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if max_rel_jump <= 0:
        raise ValueError(f"max_rel_jump must be > 0, got {max_rel_jump}")
    p = backproject(depth, intrinsics).astype(np.float64)
    h, w = depth.shape
    normals = np.zeros((h, w, 3), dtype=np.float32)
    if h <= 2 * step or w <= 2 * step:
        return normals
    s = step
    centre = p[s:-s, s:-s]
    left, right = p[s:-s, : -2 * s], p[s:-s, 2 * s :]
    up, down = p[: -2 * s, s:-s], p[2 * s :, s:-s]
    z = centre[..., 2]
    valid = z > 0
    for nb in (left, right, up, down):
        nz = nb[..., 2]
        valid &= (nz > 0) & (np.abs(nz - z) <= max_rel_jump * z)
    n = np.cross(right - left, down - up)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid &= norm[..., 0] > 0
    n = n / np.where(norm > 0, norm, 1.0)
    # Orient every normal towards the camera: the viewing ray to the point is P itself.
    facing_away = np.sum(n * centre, axis=-1) > 0
    n[facing_away] *= -1.0
    n[~valid] = 0.0
    normals[s:-s, s:-s] = n.astype(np.float32)
    return normals


def axis_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-axis cosine-style agreement of two normal maps over pixels where both are defined.

    Returns three numbers in [-1, 1]: ``sum(a_k * b_k) / sqrt(sum(a_k²) * sum(b_k²))``; a clearly
    negative entry means axis k is flipped in one map relative to the other. NaN where an axis
    has no signal (e.g. every defined normal has a zero k component).
    """
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"normal maps must both be H×W×3, got {a.shape} and {b.shape}")
    both = np.any(a != 0, axis=-1) & np.any(b != 0, axis=-1)
    av = a[both].astype(np.float64)
    bv = b[both].astype(np.float64)
    num = np.sum(av * bv, axis=0)
    den = np.sqrt(np.sum(av * av, axis=0) * np.sum(bv * bv, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
