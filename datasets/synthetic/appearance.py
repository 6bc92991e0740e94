"""Materials, procedural textures, Lambertian shading and colour-sensor noise.

Textures are functions of a surface point in its object's frame (Perlin-style value noise,
Perlin, SIGGRAPH 1985, with wood rings, stripes, checkers, weave and blotches built on it), so no
UV unwrapping is needed. Shading is Lambertian (radiance = albedo * (ambient + sum of
I * max(0, n.l) with a soft inverse-square falloff)) from one or two ceiling point lights; windows
and lamp shades emit. Deliberately left out: shadows, inter-reflection, specular highlights; and
for speed the camera response uses gamma 2 instead of sRGB's 2.2 and sensor noise is uniform
(with the intended standard deviation) instead of Gaussian.

Complementarity with depth (why RGB alone must not suffice): tables and cabinets share one wood
material and beds and sofas one fabric per scene, so only shape and height tell them apart; some
scenes are dim (low exposure, hence noisy) or low contrast.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

PLAIN, NOISE, WOOD, STRIPES, CHECKER, FABRIC, BLOTCH = range(7)
NOISE_RES = 64


@dataclass(frozen=True)
class Material:
    pattern: int
    c1: tuple[float, float, float]  # linear RGB albedo in [0, 1]
    c2: tuple[float, float, float]
    freq: float  # pattern cycles per metre
    emissive: float = 0.0  # > 0: radiance = emissive * albedo, unlit


def _hsv(rng, h, s, v) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(float(rng.uniform(*h)) % 1.0, float(rng.uniform(*s)), float(rng.uniform(*v)))


def _scaled(c, k):
    return tuple(min(1.0, x * k) for x in c)


def sample_materials(rng: np.random.Generator) -> tuple[dict, list[Material]]:
    """Per-scene materials and which role uses which (indices into the returned list)."""
    mats: list[Material] = []

    def add(m: Material) -> int:
        mats.append(m)
        return len(mats) - 1

    def paint(pale=True):
        c = _hsv(rng, (0, 1), (0.03, 0.3) if pale else (0.3, 0.9), (0.55, 0.9) if pale else (0.2, 0.9))
        return Material(NOISE, c, _scaled(c, 0.9), float(rng.uniform(2, 6)))

    wall = add(paint())
    accent = add(paint()) if rng.random() < 0.25 else wall
    walls = [wall] * 4
    walls[int(rng.integers(4))] = accent
    ceiling = add(Material(PLAIN, _hsv(rng, (0, 1), (0, 0.05), (0.8, 0.95)), (0.0, 0.0, 0.0), 1.0))
    floor_kind = int(rng.integers(3))
    if floor_kind == 0:
        c = _hsv(rng, (0.05, 0.1), (0.4, 0.7), (0.35, 0.7))
        floor = add(Material(WOOD, c, _scaled(c, 0.6), float(rng.uniform(3, 8))))
    elif floor_kind == 1:
        c = _hsv(rng, (0, 1), (0.1, 0.5), (0.25, 0.6))
        floor = add(Material(NOISE, c, _scaled(c, 0.7), float(rng.uniform(8, 20))))
    else:
        c = _hsv(rng, (0.05, 0.15), (0.0, 0.3), (0.4, 0.9))
        floor = add(Material(CHECKER, c, _scaled(c, float(rng.uniform(0.5, 0.85))), float(rng.uniform(1.5, 3.5))))
    c = _hsv(rng, (0.04, 0.11), (0.35, 0.8), (0.2, 0.7))
    wood = add(Material(WOOD, c, _scaled(c, 0.55), float(rng.uniform(4, 10))))
    c = _hsv(rng, (0, 1), (0.15, 0.7), (0.25, 0.8))
    fabric = add(Material(FABRIC, c, _scaled(c, 0.75), float(rng.uniform(25, 60))))
    chair = wood if rng.random() < 0.4 else add(paint(pale=False))
    door = wood if rng.random() < 0.5 else add(Material(PLAIN, _hsv(rng, (0, 1), (0, 0.1), (0.7, 0.9)), (0, 0, 0), 1))
    window = add(
        Material(
            NOISE,
            _hsv(rng, (0.5, 0.65), (0.05, 0.3), (0.85, 1.0)),
            (0.9, 0.9, 0.9),
            1.5,
            emissive=float(rng.uniform(1.2, 2.0)),
        )
    )
    picture = add(
        Material(
            BLOTCH,
            _hsv(rng, (0, 1), (0.5, 1), (0.3, 1)),
            _hsv(rng, (0, 1), (0.5, 1), (0.3, 1)),
            float(rng.uniform(2, 6)),
        )
    )
    metal = add(Material(PLAIN, _hsv(rng, (0, 1), (0, 0.1), (0.2, 0.6)), (0, 0, 0), 1))
    shade = add(Material(PLAIN, _hsv(rng, (0.08, 0.15), (0.1, 0.4), (0.85, 1.0)), (0, 0, 0), 1, emissive=1.3))
    clutter = []
    for _ in range(3):
        pattern = [PLAIN, STRIPES, CHECKER][int(rng.integers(3))]
        c1, c2 = _hsv(rng, (0, 1), (0.3, 1), (0.2, 1)), _hsv(rng, (0, 1), (0.3, 1), (0.2, 1))
        clutter.append(add(Material(pattern, c1, c2, float(rng.uniform(10, 25)))))
    # Room faces in raycast order: FLOOR, CEILING, WALL_Y0, WALL_XMAX, WALL_YMAX, WALL_X0.
    roles = {
        "room": (floor, ceiling, *walls),
        "wood": wood,
        "fabric": fabric,
        "chair": chair,
        "door": door,
        "window": window,
        "picture": picture,
        "metal": metal,
        "shade": shade,
        "clutter": clutter,
    }
    return roles, mats


def value_noise(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smoothly interpolated lattice noise in [0, 1], periodic with the (power of two) grid size."""
    n = grid.shape[0]
    flat = grid.reshape(-1)
    xf, yf = np.floor(x), np.floor(y)
    fx, fy = x - xf, y - yf
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    x0, y0 = xf.astype(np.int32) & (n - 1), (yf.astype(np.int32) & (n - 1)) * n
    x1, y1 = (x0 + 1) & (n - 1), (y0 + n) & (n * n - 1)
    g00, g01, g10, g11 = flat[y0 + x0], flat[y0 + x1], flat[y1 + x0], flat[y1 + x1]
    top = g00 + fx * (g01 - g00)
    return top + fy * (g10 + fx * (g11 - g10) - top)


def pattern(kind: int, s: np.ndarray, t: np.ndarray, f: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mix weight between a material's two colours, in [0, 1], at surface coordinates (s, t) metres."""
    if kind == PLAIN:
        return np.zeros(s.shape, dtype=np.float32)
    if kind == NOISE:
        return value_noise(grid, s * f, t * f)
    if kind == WOOD:
        # Grain runs along s: rings in t, warped by low-frequency noise.
        rings = np.sin(2 * np.pi * (t * f + 2.0 * value_noise(grid, s * 0.8, t * f * 0.5)))
        return (0.5 + 0.5 * rings) ** 2
    if kind == STRIPES:
        return (np.mod(s * f, 1.0) < 0.5).astype(np.float32)
    if kind == CHECKER:
        return (np.mod(np.floor(s * f) + np.floor(t * f), 2.0)).astype(np.float32)
    if kind == FABRIC:
        weave = 0.5 + 0.25 * (np.sin(2 * np.pi * s * f) * np.sin(2 * np.pi * t * f))
        return 0.5 * weave + 0.5 * value_noise(grid, s * 3, t * 3)
    if kind == BLOTCH:
        return np.clip((value_noise(grid, s * f, t * f) - 0.35) * 4.0, 0.0, 1.0)
    raise ValueError(f"unknown texture pattern id {kind}")


def surface_coords(rel: np.ndarray, normal: np.ndarray, cos: np.ndarray, sin: np.ndarray, inst: np.ndarray):
    """(s, t) texture coordinates (N,) from world offsets to each pixel's primitive centre.

    ``rel`` and ``normal`` are 3 x N; ``cos``/``sin`` of the primitive yaw per pixel. The
    coordinates are the two local axes spanning the face (the dominant local normal axis is
    dropped), offset per instance so that equal objects do not show identical texture."""
    lx = cos * rel[0] + sin * rel[1]
    ly = -sin * rel[0] + cos * rel[1]
    nlx = np.abs(cos * normal[0] + sin * normal[1])
    nly = np.abs(-sin * normal[0] + cos * normal[1])
    nlz = np.abs(normal[2])
    face_z = (nlz >= nlx) & (nlz >= nly)
    face_x = ~face_z & (nlx >= nly)
    off = inst.astype(np.float32)
    return np.where(face_x, ly, lx) + 3.7 * off, np.where(face_z, ly, rel[2]) + 7.3 * off


def albedo_and_emission(
    mats: list[Material], mat_id: np.ndarray, s: np.ndarray, t: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel linear albedo (3 x N) and emission factor (N,)."""
    c1 = np.array([m.c1 for m in mats], dtype=np.float32)
    dc = np.array([m.c2 for m in mats], dtype=np.float32) - c1
    freq = np.array([m.freq for m in mats], dtype=np.float32)
    emit = np.array([m.emissive for m in mats], dtype=np.float32)
    pix_pat = np.take(np.array([m.pattern for m in mats], dtype=np.int8), mat_id)
    w = np.zeros(mat_id.shape, dtype=np.float32)
    for kind in sorted({m.pattern for m in mats} - {PLAIN}):
        sel = pix_pat == kind
        if sel.any():
            w[sel] = pattern(kind, s[sel], t[sel], np.take(freq, mat_id[sel]), grid)
    albedo = np.stack([np.take(c1[:, ch], mat_id) + w * np.take(dc[:, ch], mat_id) for ch in range(3)])
    return albedo, np.take(emit, mat_id)


def lambert(point: np.ndarray, normal: np.ndarray, lights, ambient: float) -> np.ndarray:
    """Irradiance (N,) = ambient + sum_l I_l max(0, n.l) / (1 + d^2 / 4); point, normal 3 x N."""
    irr = np.full(point.shape[1], ambient, dtype=np.float32)
    for pos, power in lights:
        lx, ly, lz = (np.float32(pos[a]) - point[a] for a in range(3))
        d2 = lx * lx + ly * ly + lz * lz
        ndl = (normal[0] * lx + normal[1] * ly + normal[2] * lz) / np.sqrt(d2)
        irr += np.float32(power) * np.maximum(ndl, 0.0) / (1.0 + d2 / 4.0)
    return irr


def expose(
    radiance: np.ndarray,
    exposure: float,
    contrast: float,
    noise: float,
    rng: np.random.Generator,
    height: int,
    width: int,
) -> np.ndarray:
    """Linear radiance (3 x N) -> uint8 H x W x 3: exposure, gamma, contrast, lens blur, sensor noise."""
    # Gamma 2 (a square root) is close to sRGB's 2.2 and several times cheaper.
    img = np.sqrt(np.clip(radiance * np.float32(exposure), 0.0, 1.0)).reshape(3, height, width)
    if contrast != 1.0:
        img = img.mean() + (img - img.mean()) * np.float32(contrast)
    # Uniform noise with standard deviation ``noise``: five times cheaper to draw than Gaussian,
    # and after 8-bit quantisation the shape of the distribution is immaterial for training.
    u = rng.random(img.shape, dtype=np.float32)
    out = np.empty((height, width, 3), dtype=np.uint8)
    for ch in range(3):
        # A 3x3 Gaussian stands in for optics and anti-aliasing of the one-ray-per-pixel render.
        plane = cv2.GaussianBlur(img[ch], (3, 3), 0) + np.float32(noise * np.sqrt(12.0)) * (u[ch] - 0.5)
        out[..., ch] = np.clip(plane * 255.0 + 0.5, 0, 255)
    return out
