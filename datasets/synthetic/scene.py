"""Random indoor scenes: a room, a camera and 3-12 objects, all drawn from one numpy Generator.

The layout mimics NYUDv2 captures (Silberman et al., ECCV 2012): a hand-held camera at 1.0-1.7 m
looking slightly down across a room, furniture standing on the floor or backed against a wall,
pictures, windows and doors on the walls, small clutter on the floor and on table and cabinet
tops (objects are built in :mod:`datasets.synthetic.furniture`). Deliberately simpler than real
rooms: no occluders near the lens, and objects never intersect one another's footprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datasets.synthetic.appearance import Material, sample_materials
from datasets.synthetic.furniture import BUILDERS, Layout
from datasets.synthetic.raycast import Prim

CLASSES = [
    "wall",
    "floor",
    "ceiling",
    "bed",
    "cabinet",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "picture",
    "lamp",
    "objects",
]
CLS = {name: i for i, name in enumerate(CLASSES)}
FIRST_OBJECT_INSTANCE = 7  # 1..6 are the room faces
MIN_OBJECTS, MAX_OBJECTS = 3, 12

# Object types, their draw weights, how many a room may hold, and placement order (big first).
_WEIGHTS = {
    "bed": 0.06,
    "sofa": 0.08,
    "cabinet": 0.12,
    "table": 0.13,
    "chair": 0.15,
    "lamp": 0.05,
    "door": 0.05,
    "window": 0.08,
    "picture": 0.12,
    "objects": 0.16,
}
_MAX = {"bed": 1, "sofa": 1, "door": 2, "window": 2, "lamp": 2}
_ORDER = ["bed", "sofa", "cabinet", "door", "window", "table", "chair", "lamp", "picture", "objects"]


@dataclass
class Scene:
    room: tuple[float, float, float]
    cam_pos: np.ndarray
    R: np.ndarray
    camera: dict
    prims: list[Prim]
    materials: list[Material]
    room_mats: tuple[int, ...]  # material per room face (FLOOR, CEILING, 4 walls)
    lights: list[tuple[np.ndarray, float]]
    lighting: dict
    max_range: float
    objects: list[str] = field(default_factory=list)


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Columns = camera x (right), y (down), z (forward) in world coordinates (z up)."""
    f = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    r = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    dn = np.cross(f, r)
    c, s = np.cos(roll), np.sin(roll)
    r, dn = c * r + s * dn, -s * r + c * dn
    return np.stack([r, dn, f], axis=1)


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a room, camera, objects, materials and lights; every draw comes from ``rng``."""
    room = (float(rng.uniform(3.0, 7.0)), float(rng.uniform(3.0, 9.5)), float(rng.uniform(2.4, 3.1)))
    cam_xy = np.array([rng.uniform(0.4, room[0] - 0.4), rng.uniform(0.4, room[1] - 0.4)])
    for _ in range(20):
        target = np.array([rng.uniform(0.2, room[0] - 0.2), rng.uniform(0.2, room[1] - 0.2)])
        if np.linalg.norm(target - cam_xy) > 1.8:
            break
    else:
        target = np.array([room[0] / 2, room[1] / 2]) + 0.01
    yaw = float(np.arctan2(*(target - cam_xy)[::-1]))
    pitch, roll = float(np.radians(rng.uniform(-30, -3))), float(np.radians(rng.uniform(-4, 4)))
    cam_h = float(rng.uniform(1.0, 1.7))
    R = camera_rotation(yaw, pitch, roll)
    fwd = np.array([np.cos(yaw), np.sin(yaw)])
    lay = Layout(rng, room, cam_xy, fwd)
    mats, materials = sample_materials(rng)

    counts: dict[str, int] = {}
    kinds = list(_WEIGHTS)
    p = np.array([_WEIGHTS[k] for k in kinds])
    drawn = []
    for k in rng.choice(len(kinds), size=int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)), p=p / p.sum()):
        kind = kinds[k]
        if counts.get(kind, 0) < _MAX.get(kind, 99):
            counts[kind] = counts.get(kind, 0) + 1
            drawn.append(kind)
    drawn.sort(key=_ORDER.index)
    prims: list[Prim] = []
    objects: list[str] = []
    # Caps and crowded rooms can leave fewer than 3 objects; top up with the easiest kinds to place.
    topup = [("picture", "objects")[int(k)] for k in rng.integers(2, size=20)]
    for i, kind in enumerate(drawn + topup):
        if i >= len(drawn) and len(objects) >= MIN_OBJECTS:
            break
        new = BUILDERS[kind](kind, rng, lay, CLS[kind], FIRST_OBJECT_INSTANCE + len(objects), mats, room[2])
        if new:
            prims += new
            objects.append(kind)

    dim = bool(rng.random() < 0.2)
    lights = []
    for _ in range(int(rng.integers(1, 3))):
        pos = np.array([rng.uniform(0.3, room[0] - 0.3), rng.uniform(0.3, room[1] - 0.3), room[2] - 0.15])
        lights.append((pos, float(rng.uniform(1.5, 3.0))))
    lighting = {
        "num_lights": len(lights),
        "ambient": float(rng.uniform(0.15, 0.35)),
        "exposure": float(rng.uniform(0.15, 0.35) if dim else rng.uniform(0.8, 1.2)),
        "contrast": float(rng.uniform(0.35, 0.6) if rng.random() < 0.15 else 1.0),
        "noise": float(rng.uniform(0.005, 0.02)),
        "dim": dim,
    }
    camera = {
        "height": cam_h,
        "yaw_deg": float(np.degrees(yaw)),
        "pitch_deg": float(np.degrees(pitch)),
        "roll_deg": float(np.degrees(roll)),
    }
    return Scene(
        room=room,
        cam_pos=np.array([cam_xy[0], cam_xy[1], cam_h]),
        R=R,
        camera=camera,
        prims=prims,
        materials=materials,
        room_mats=mats["room"],
        lights=lights,
        lighting=lighting,
        max_range=float(rng.uniform(8.0, 10.0)),
        objects=objects,
    )
