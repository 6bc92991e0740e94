"""One synthetic RGB-D sample from (seed, split, index): scene -> ray cast -> shading -> sensors.

Everything random is drawn from ``np.random.default_rng([seed, split_code, index])`` in a fixed
order, so a sample depends on nothing else (not on other samples, worker count or call order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datasets.codec import DEPTH_SCALE
from datasets.errors import SourceError
from datasets.labels import edges_from_labels
from datasets.synthetic.appearance import NOISE_RES, albedo_and_emission, expose, lambert, surface_coords
from datasets.synthetic.raycast import ROOM_FACES, Hits, camera_rays, cast, intrinsics, ray_lengths
from datasets.synthetic.scene import CLS, Scene, sample_scene
from datasets.synthetic.sensor import kinect_depth

GENERATOR_VERSION = 1
SPLIT_CODES = {"train": 0, "val": 1}
MIN_SIZE, MAX_SIZE = 16, 4096


def edge_thickness(width: int) -> int:
    """2 px (both sides of a boundary) up to 320 px wide, growing with the width so the band
    keeps about the same share of the image."""
    return max(2, round(2 * width / 320))


def check_render_args(seed: Any, split: Any, index: Any, height: Any, width: Any) -> None:
    for name, v in (("seed", seed), ("index", index)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise SourceError(f"synthetic: {name} must be a non-negative integer, got {v!r}")
    if split not in SPLIT_CODES:
        raise SourceError(f"synthetic: split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not MIN_SIZE <= v <= MAX_SIZE:
            raise SourceError(f"synthetic: {name} must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {v!r}")


def shade(scene: Scene, hits: Hits, rng: np.random.Generator) -> np.ndarray:
    """uint8 H x W x 3 image of the hit surfaces under the scene's lights and camera response."""
    h, w = hits.depth.shape
    n_prims = ROOM_FACES + len(scene.prims)
    centers = np.zeros((3, n_prims), dtype=np.float32)
    yaws = np.zeros(n_prims, dtype=np.float32)
    for j, p in enumerate(scene.prims):
        centers[:, ROOM_FACES + j] = p.center
        yaws[ROOM_FACES + j] = p.yaw
    mat_of = np.array(list(scene.room_mats) + [p.mat for p in scene.prims], dtype=np.int64)
    prim = hits.prim.reshape(-1)
    point = hits.point.reshape(3, -1)
    normal = hits.normal_world.reshape(3, -1)
    rel = np.stack([point[a] - np.take(centers[a], prim) for a in range(3)])
    grid = rng.random((NOISE_RES, NOISE_RES), dtype=np.float32)
    s, t = surface_coords(rel, normal, np.take(np.cos(yaws), prim), np.take(np.sin(yaws), prim), hits.inst.reshape(-1))
    albedo, emit = albedo_and_emission(scene.materials, np.take(mat_of, prim), s, t, grid)
    irr = lambert(point, normal, scene.lights, scene.lighting["ambient"])
    lit = scene.lighting
    noise = lit["noise"] * (2.0 if lit["dim"] else 1.0)
    return expose(albedo * np.where(emit > 0, emit, irr), lit["exposure"], lit["contrast"], noise, rng, h, w)


def render(seed: int, split: str, index: int, height: int = 240, width: int = 320) -> dict[str, Any]:
    """Sample ``index`` of ``split``: a dict in the :mod:`datasets.codec` in-memory format."""
    check_render_args(seed, split, index, height, width)
    rng = np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])
    scene = sample_scene(rng)
    hits = cast(
        scene.prims, scene.room, scene.cam_pos, scene.R, height, width, (CLS["wall"], CLS["floor"], CLS["ceiling"])
    )
    rgb = shade(scene, hits, rng)
    depth = kinect_depth(
        hits.depth,
        hits.normal_cam,
        camera_rays(height, width),
        ray_lengths(height, width),
        hits.cls == CLS["window"],
        scene.max_range,
        rng,
    )
    edge = edges_from_labels(hits.cls, hits.inst, thickness=edge_thickness(width), ignore_index=None)
    cam = scene.camera
    meta = {
        "id": f"{split}_{index:06d}",
        "source": "synthetic",
        "split": split,
        "intrinsics": [round(float(v), 6) for v in intrinsics(height, width)],
        "depth_scale": DEPTH_SCALE,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "index": int(index),
        "num_objects": len(scene.objects),
        "objects": list(scene.objects),
        "room_size_m": [round(v, 4) for v in scene.room],
        "camera": {k: round(v, 4) for k, v in cam.items()},
        "lighting": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scene.lighting.items()},
        "max_range_m": round(scene.max_range, 4),
        "missing_depth_fraction": round(float(np.mean(depth == 0)), 6),
    }
    return {"rgb": rgb, "depth": depth, "semseg": hits.cls, "normals": hits.normal_cam, "edge": edge, "meta": meta}


__all__ = ["GENERATOR_VERSION", "SPLIT_CODES", "render", "check_render_args", "edge_thickness"]
