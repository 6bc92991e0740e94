"""Kinect-like depth degradation of an exact z-depth map.

Axial noise follows Nguyen, Izadi & Lovell (3DIMPVT 2012, eq. 5): sigma_z = 0.0012 + 0.0019 (z - 0.4)^2
metres. Missing pixels (0) arise as with the structured-light Kinect used for NYUDv2: beyond the
working range, at grazing incidence where the projected pattern is too stretched to match, in a
thin random band along depth discontinuities (the projector/camera baseline shadows and mixed
pixels there), and on window glass, which the infrared pattern passes through. Depth is then
quantised in disparity as the Kinect does (Khoshelham & Elberink, Sensors 2012, sec. 3: 1/8 pixel
steps at baseline x focal ~= 0.075 m x 580 px, so the step grows as z^2 / 348 m). Deliberately
simpler than the sensor: the noise is triangular rather than Gaussian (cheaper to draw, same
standard deviation) and there is no one-sided shadow geometry.
"""

from __future__ import annotations

import numpy as np

GRAZING_COS = 0.12  # |n . v| below this (about 83 degrees from the normal) reads as missing
EDGE_REL_JUMP = 0.04  # neighbouring depths differing by more than 4 % count as a discontinuity
EDGE_DROP_P = 0.6  # probability that a pixel of the discontinuity band is missing
NEAR_LIMIT = 0.3  # metres; keeps the disparity finite
DISPARITY_UNITS = 0.075 * 580.0 * 8  # baseline (m) x IR focal (px) x 8 sub-pixel steps


def discontinuities(z: np.ndarray, rel_jump: float = EDGE_REL_JUMP) -> np.ndarray:
    """Pixels with a 4-neighbour whose depth differs by more than ``rel_jump`` of the nearer one."""
    band = np.zeros(z.shape, dtype=bool)
    dv = np.abs(z[1:] - z[:-1]) > rel_jump * np.minimum(z[1:], z[:-1])
    dh = np.abs(z[:, 1:] - z[:, :-1]) > rel_jump * np.minimum(z[:, 1:], z[:, :-1])
    band[1:] |= dv
    band[:-1] |= dv
    band[:, 1:] |= dh
    band[:, :-1] |= dh
    return band


def kinect_depth(
    z: np.ndarray,
    normal_cam: np.ndarray,
    rays: np.ndarray,
    ray_len: np.ndarray,
    glass: np.ndarray,
    max_range: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Noisy depth (float32 metres, 0 = missing) from exact z-depth ``z`` (H x W).

    ``rays`` are the camera rays with z = 1 and ``ray_len`` their lengths (the view direction is
    rays / ray_len); ``glass`` marks pixels whose surface does not return the pattern."""
    sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
    # u1 + u2 - 1 is triangular on [-1, 1] with variance 1/6.
    tri = rng.random(z.shape, dtype=np.float32) + rng.random(z.shape, dtype=np.float32) - 1.0
    noisy = np.maximum(z + np.float32(np.sqrt(6.0)) * sigma * tri, NEAR_LIMIT)
    noisy = np.float32(DISPARITY_UNITS) / np.rint(np.float32(DISPARITY_UNITS) / noisy)
    n = normal_cam
    cos = np.abs(n[..., 0] * rays[..., 0] + n[..., 1] * rays[..., 1] + n[..., 2]) / ray_len
    band = discontinuities(z)
    # Widen the band by one pixel horizontally: the Kinect baseline is horizontal.
    band[:, 1:] |= band[:, :-1]
    missing = (z > max_range) | (cos < GRAZING_COS) | glass
    missing |= band & (rng.random(z.shape, dtype=np.float32) < EDGE_DROP_P)
    return np.where(missing, np.float32(0.0), noisy)
