"""Analytic ray casting of a box-shaped room holding boxes, vertical cylinders and spheres.

World frame: metres, z up, the room is the axis-aligned box ``[0, Lx] x [0, Ly] x [0, Lz]``
seen from inside. Camera frame (docs/data-format.md): x right, y down, z forward. A rotation
``R`` (3x3, columns = camera axes in world coordinates) maps camera to world directions.

Every pixel's ray is ``d_c = ((u - cx) / fx, (v - cy) / fy, 1)``, deliberately *not* normalised:
with a unit z component the ray parameter ``t`` of a hit equals its camera z, so the z-depth map
is the nearest ``t`` with no per-pixel division (the pinhole model of Hartley & Zisserman,
"Multiple View Geometry", sec. 6.1). Intersections follow the textbook formulas (ray-plane,
Kay & Kajiya slab test for boxes, quadratic roots for cylinders and spheres). Each primitive is
tested only over the screen rectangle its bounding box projects to, all pixels of the rectangle
at once (numpy), so the cost is per primitive, never per pixel in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# NYUDv2 colour-camera intrinsics at 480x640 (the toolbox's camera_params.m).
NYU_SIZE = (480, 640)
NYU_FX, NYU_FY = 518.8579, 519.4696
NYU_CX, NYU_CY = 325.5824, 253.7362

BOX, CYLINDER, SPHERE = 0, 1, 2
NEAR = 0.05  # metres; hits closer than this are ignored (the camera is never inside an object)
# Room faces are primitives 0..5 of every hit map; objects follow from ROOM_FACES on.
FLOOR, CEILING, WALL_Y0, WALL_XMAX, WALL_YMAX, WALL_X0 = range(6)
ROOM_FACES = 6


@dataclass(frozen=True)
class Prim:
    """One solid. ``half`` = box half extents; cylinder (radius, radius, half height) with a
    vertical axis; sphere (radius, radius, radius). ``yaw`` turns the box about world z."""

    kind: int
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float
    cls: int
    inst: int
    mat: int


@dataclass
class Hits:
    """Per-pixel result of :func:`cast`; vector maps are stored as component planes (3 x H x W)."""

    depth: np.ndarray  # float32 H x W camera z (m)
    normal_cam: np.ndarray  # float32 H x W x 3, unit, facing the camera
    normal_world: np.ndarray  # float32 3 x H x W
    point: np.ndarray  # float32 3 x H x W, world hit point
    prim: np.ndarray  # int16 H x W; 0..5 room faces, ROOM_FACES + j object primitive j
    cls: np.ndarray  # uint8 H x W class id
    inst: np.ndarray  # uint8 H x W instance id


def intrinsics(height: int, width: int) -> tuple[float, float, float, float]:
    """NYUDv2 intrinsics scaled to ``height x width`` (principal point scaled with the image)."""
    sy, sx = height / NYU_SIZE[0], width / NYU_SIZE[1]
    return (NYU_FX * sx, NYU_FY * sy, NYU_CX * sx, NYU_CY * sy)


@lru_cache(maxsize=8)
def ray_lengths(height: int, width: int) -> np.ndarray:
    """|camera ray| per pixel (read-only), i.e. ray length per metre of z-depth."""
    n = np.linalg.norm(camera_rays(height, width), axis=-1)
    n.flags.writeable = False
    return n


@lru_cache(maxsize=8)
def camera_rays(height: int, width: int) -> np.ndarray:
    """H x W x 3 float32 camera-frame rays with z = 1 (read-only; cached per size)."""
    fx, fy, cx, cy = intrinsics(height, width)
    u = (np.arange(width, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
    v = (np.arange(height, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
    rays = np.empty((height, width, 3), dtype=np.float32)
    rays[..., 0] = u[None, :]
    rays[..., 1] = v[:, None]
    rays[..., 2] = 1.0
    rays.flags.writeable = False
    return rays


def _hit_room(o, d, room):
    """Exit distance from inside the room box: per axis the wall the ray runs towards."""
    ts = []
    for a in range(3):
        inv = np.float32(1.0) / d[a]
        # From inside, one wall of each pair is behind (t < 0) and one ahead; d = 0 gives +inf.
        ts.append(np.maximum(np.float32(-o[a]) * inv, np.float32(room[a] - o[a]) * inv))
    t = np.minimum(np.minimum(ts[0], ts[1]), ts[2])
    on_x = t == ts[0]
    on_y = ~on_x & (t == ts[1])
    on = (on_x, on_y, ~on_x & ~on_y)
    pos = [d[a] > 0 for a in range(3)]
    face = np.where(
        on[2],
        np.where(pos[2], CEILING, FLOOR),
        np.where(on_y, np.where(pos[1], WALL_YMAX, WALL_Y0), np.where(pos[0], WALL_XMAX, WALL_X0)),
    )
    # Inward normal of the wall hit: against the ray on the hit axis.
    normal = np.stack(
        [np.where(on[a], np.where(pos[a], np.float32(-1.0), np.float32(1.0)), np.float32(0.0)) for a in range(3)]
    )
    return t, normal, face.astype(np.int16)


def _rel(o, center):
    return [float(o[i]) - float(center[i]) for i in range(3)]


def _hit_box(o, d, p: Prim):
    c, s = np.float32(np.cos(p.yaw)), np.float32(np.sin(p.yaw))
    ox, oy, oz = _rel(o, p.center)
    lo = (c * ox + s * oy, -s * ox + c * oy, oz)
    ld = (c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2])
    near, far = [], []
    for a in range(3):
        t1 = (-p.half[a] - lo[a]) / ld[a]
        t2 = (p.half[a] - lo[a]) / ld[a]
        near.append(np.minimum(t1, t2))
        far.append(np.maximum(t1, t2))
    tmin = np.maximum(np.maximum(near[0], near[1]), near[2])
    tmax = np.minimum(np.minimum(far[0], far[1]), far[2])
    hit = (tmin <= tmax) & (tmin > NEAR)
    # The entry face is on the axis whose slab is entered last; its normal opposes the ray.
    on_x = near[0] >= tmin
    on_y = ~on_x & (near[1] >= tmin)
    nlx = np.where(on_x, -np.sign(ld[0]), 0.0)
    nly = np.where(on_y, -np.sign(ld[1]), 0.0)
    nlz = np.where(on_x | on_y, 0.0, -np.sign(ld[2]))
    return np.where(hit, tmin, np.inf), (c * nlx - s * nly, s * nlx + c * nly, nlz)


def _hit_cylinder(o, d, p: Prim):
    r, hz = p.half[0], p.half[2]
    ox, oy, oz = _rel(o, p.center)
    dx, dy, dz = d
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    disc = b * b - a * (ox * ox + oy * oy - r * r)
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    side_ok = (disc >= 0) & (a > 0) & (np.abs(oz + t_side * dz) <= hz) & (t_side > NEAR)
    t_side = np.where(side_ok, t_side, np.inf)
    # Only the cap on the camera's side can be seen (the camera is outside the cylinder).
    cap_z = hz if oz > hz else -hz
    t_cap = (cap_z - oz) / dz
    rx, ry = ox + t_cap * dx, oy + t_cap * dy
    cap_ok = (abs(oz) > hz) & (rx * rx + ry * ry <= r * r) & (t_cap > NEAR)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    use_cap = t_cap < t_side
    t = np.where(use_cap, t_cap, t_side)
    nx = np.where(use_cap, 0.0, (ox + t_side * dx) / r)
    ny = np.where(use_cap, 0.0, (oy + t_side * dy) / r)
    nz = np.where(use_cap, np.float32(np.sign(cap_z)), 0.0)
    return t, (nx, ny, nz)


def _hit_sphere(o, d, p: Prim):
    r = p.half[0]
    ox, oy, oz = _rel(o, p.center)
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = ox * d[0] + oy * d[1] + oz * d[2]
    disc = b * b - a * (ox * ox + oy * oy + oz * oz - r * r)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    ok = (disc >= 0) & (t > NEAR)
    return np.where(ok, t, np.inf), tuple((oc + t * dc) / r for oc, dc in zip((ox, oy, oz), d, strict=True))


_HIT = {BOX: _hit_box, CYLINDER: _hit_cylinder, SPHERE: _hit_sphere}


def world_aabb(p: Prim) -> tuple[np.ndarray, np.ndarray]:
    hx, hy, hz = p.half
    if p.kind == BOX:
        c, s = abs(np.cos(p.yaw)), abs(np.sin(p.yaw))
        hx, hy = c * p.half[0] + s * p.half[1], s * p.half[0] + c * p.half[1]
    ext = np.array([hx, hy, hz])
    return np.asarray(p.center) - ext, np.asarray(p.center) + ext


def _screen_rect(p: Prim, cam_pos, R, k, height, width):
    """Pixel rectangle (v0, v1, u0, u1) covering the primitive, or None when off screen."""
    lo, hi = world_aabb(p)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    pc = (corners - cam_pos) @ R
    if np.any(pc[:, 2] < NEAR):
        return 0, height, 0, width  # straddles the camera plane: projection is unbounded
    fx, fy, cx, cy = k
    u = fx * pc[:, 0] / pc[:, 2] + cx
    v = fy * pc[:, 1] / pc[:, 2] + cy
    u0, u1 = max(0, int(np.floor(u.min()))), min(width, int(np.ceil(u.max())) + 1)
    v0, v1 = max(0, int(np.floor(v.min()))), min(height, int(np.ceil(v.max())) + 1)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def cast(
    prims: list[Prim],
    room: tuple[float, float, float],
    cam_pos: np.ndarray,
    R: np.ndarray,
    height: int,
    width: int,
    room_cls: tuple[int, int, int],
) -> Hits:
    """Nearest hit per pixel. ``room_cls`` = class ids of (wall, floor, ceiling)."""
    # Misses are carried as inf / nan through the vectorised tests, so these warnings are expected.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _cast(prims, room, cam_pos, R, height, width, room_cls)


def _cast(prims, room, cam_pos, R, height, width, room_cls) -> Hits:
    rays = camera_rays(height, width)
    R32 = np.asarray(R, dtype=np.float32)
    # World ray = R @ (x, y, 1): columns of R weighted by the camera-frame components.
    d = [rays[..., 0] * R32[a, 0] + rays[..., 1] * R32[a, 1] + R32[a, 2] for a in range(3)]
    o = np.asarray(cam_pos, dtype=np.float64)
    zbuf, normal, prim = _hit_room(o, d, room)
    wall, floor, ceiling = room_cls
    face_cls = np.array([floor, ceiling, wall, wall, wall, wall], dtype=np.uint8)
    cls = np.take(face_cls, prim)
    inst = (prim + 1).astype(np.uint8)
    k = intrinsics(height, width)
    for j, p in enumerate(prims):
        rect = _screen_rect(p, cam_pos, R, k, height, width)
        if rect is None:
            continue
        block = (slice(rect[0], rect[1]), slice(rect[2], rect[3]))
        t, n = _HIT[p.kind](o, [c[block] for c in d], p)
        closer = t < zbuf[block]
        if not closer.any():
            continue
        np.copyto(zbuf[block], t, where=closer)
        for a in range(3):
            np.copyto(normal[a][block], n[a], where=closer)
        np.copyto(prim[block], ROOM_FACES + j, where=closer)
        np.copyto(cls[block], p.cls, where=closer)
        np.copyto(inst[block], p.inst, where=closer)
    normal /= np.sqrt(normal[0] ** 2 + normal[1] ** 2 + normal[2] ** 2)
    n_cam = np.stack([normal[0] * R32[0, a] + normal[1] * R32[1, a] + normal[2] * R32[2, a] for a in range(3)], -1)
    # Normals face the camera by construction; the flip only guards against rounding at edges.
    facing = n_cam[..., 0] * rays[..., 0] + n_cam[..., 1] * rays[..., 1] + n_cam[..., 2]
    n_cam[facing > 0] *= -1
    point = np.stack([np.float32(o[a]) + zbuf * d[a] for a in range(3)])
    return Hits(depth=zbuf, normal_cam=n_cam, normal_world=normal, point=point, prim=prim, cls=cls, inst=inst)
