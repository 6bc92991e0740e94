"""Object builders and their floor/wall layout for synthetic rooms (see :mod:`datasets.synthetic.scene`).

Composite furniture (table = top + legs, chair = seat + back + legs, bed = base + headboard,
sofa = base + back + arms, floor lamp = base + pole + shade) is a list of primitives sharing
one class and instance id. Sizes follow common furniture dimensions in metres.
"""

from __future__ import annotations

import math

import numpy as np

from datasets.synthetic.raycast import BOX, CYLINDER, SPHERE, Prim


class Layout:
    """Places object footprints: rejects overlaps, spots near the camera and (mostly) unseen spots."""

    def __init__(self, rng, room, cam_xy, forward_xy):
        self.rng, self.room, self.cam_xy, self.fwd = rng, room, cam_xy, forward_xy
        self.floor: list[tuple[float, float, float]] = []
        self.wall: list[tuple[float, float, float]] = []
        self.supports: list[tuple[float, ...]] = []  # x, y, yaw, hx, hy, top z

    def _visible(self, x, y):
        vx, vy = x - self.cam_xy[0], y - self.cam_xy[1]
        return vx * self.fwd[0] + vy * self.fwd[1] > 0.6 * math.hypot(vx, vy)

    def _free(self, taken, x, y, r, want_visible):
        if want_visible and not self._visible(x, y):
            return False
        return all((x - a) ** 2 + (y - b) ** 2 > (r + c) ** 2 for a, b, c in taken)

    def free_spot(self, hx, hy):
        """Centre and yaw for an object standing freely on the floor, or None."""
        r = float(np.hypot(hx, hy))
        lx, ly = self.room[0], self.room[1]
        for attempt in range(25):
            x, y = self.rng.uniform(r, lx - r), self.rng.uniform(r, ly - r)
            near_cam = np.hypot(x - self.cam_xy[0], y - self.cam_xy[1]) < r + 0.7
            if not near_cam and self._free(self.floor, x, y, r, attempt < 20):
                self.floor.append((x, y, r))
                return x, y, float(self.rng.uniform(0, 2 * np.pi))
        return None

    def wall_spot(self, width, depth, on_floor=True, full_height=False):
        """(x, y, yaw) of an object backed against a wall (local +y points into the room)."""
        lx, ly = self.room[0], self.room[1]
        for attempt in range(25):
            w = int(self.rng.integers(4))
            length = lx if w % 2 == 0 else ly
            if length < width + 0.2:
                continue
            u = self.rng.uniform(width / 2 + 0.1, length - width / 2 - 0.1)
            x, y = [(u, depth / 2), (lx - depth / 2, u), (lx - u, ly - depth / 2), (depth / 2, ly - u)][w]
            r = float(np.hypot(width, depth) / 2)
            taken = self.floor if on_floor else self.wall
            near_cam = np.hypot(x - self.cam_xy[0], y - self.cam_xy[1]) < r + 0.6
            if not (on_floor and near_cam) and self._free(taken, x, y, r, attempt < 20):
                taken.append((x, y, r))
                if full_height:
                    self.wall.append((x, y, r))
                return x, y, w * np.pi / 2
        return None


def _box(center, half, yaw, cls, inst, mat):
    return Prim(BOX, tuple(map(float, center)), tuple(map(float, half)), float(yaw), cls, inst, mat)


def _local(x, y, yaw, lx, ly, z):
    """World point of local offset (lx, ly) from (x, y) in a frame turned by yaw, at height z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return (x + c * lx - s * ly, y + s * lx + c * ly, z)


def _legs(x, y, yaw, hx, hy, height, leg, cls, inst, mat):
    return [
        _box(
            _local(x, y, yaw, sx * (hx - leg), sy * (hy - leg), height / 2), (leg, leg, height / 2), yaw, cls, inst, mat
        )
        for sx in (-1, 1)
        for sy in (-1, 1)
    ]


def _table(kind, rng, lay, c, inst, m, room_h):
    u = rng.uniform
    hx, hy, h = u(0.4, 0.8), u(0.3, 0.5), u(0.7, 0.78)
    spot = lay.free_spot(hx, hy)
    if spot is None:
        return []
    x, y, yaw = spot
    lay.supports.append((x, y, yaw, hx * 0.7, hy * 0.7, h))
    return [_box((x, y, h - 0.02), (hx, hy, 0.02), yaw, c, inst, m["wood"])] + _legs(
        x, y, yaw, hx, hy, h - 0.04, 0.03, c, inst, m["wood"]
    )


def _chair(kind, rng, lay, c, inst, m, room_h):
    u = rng.uniform
    hw, seat = u(0.2, 0.25), u(0.42, 0.48)
    spot = lay.free_spot(hw, hw)
    if spot is None:
        return []
    x, y, yaw = spot
    back_h = u(0.35, 0.5)
    return [
        _box((x, y, seat - 0.025), (hw, hw, 0.025), yaw, c, inst, m["chair"]),
        _box(_local(x, y, yaw, 0, -hw + 0.025, seat + back_h / 2), (hw, 0.025, back_h / 2), yaw, c, inst, m["chair"]),
    ] + _legs(x, y, yaw, hw, hw, seat - 0.05, 0.02, c, inst, m["chair"])


def _against_wall(kind, rng, lay, c, inst, m, room_h):
    """Bed (base + headboard), sofa (base + back + arms) or cabinet, backed against a wall."""
    u = rng.uniform
    if kind == "bed":
        hw, hd, h = u(0.5, 0.9), u(0.95, 1.05), u(0.45, 0.6)
    elif kind == "sofa":
        hw, hd, h = u(0.75, 1.2), u(0.4, 0.48), u(0.4, 0.45)
    else:
        hw, hd, h = u(0.25, 0.6), u(0.2, 0.3), u(0.6, 2.0)
    spot = lay.wall_spot(2 * hw, 2 * hd)
    if spot is None:
        return []
    x, y, yaw = spot
    mat = m["fabric"] if kind != "cabinet" else m["wood"]
    prims = [_box((x, y, h / 2), (hw, hd, h / 2), yaw, c, inst, mat)]
    if kind == "cabinet":
        if h < 1.2:
            lay.supports.append((x, y, yaw, hw * 0.8, hd * 0.8, h))
    elif kind == "bed":
        head_h = u(0.9, 1.2)
        prims.append(
            _box(_local(x, y, yaw, 0, -hd + 0.03, head_h / 2), (hw + 0.03, 0.03, head_h / 2), yaw, c, inst, m["wood"])
        )
    else:
        back_h, arm = u(0.75, 0.9), 0.12
        prims.append(_box(_local(x, y, yaw, 0, -hd + 0.1, back_h / 2), (hw, 0.1, back_h / 2), yaw, c, inst, mat))
        prims += [
            _box(_local(x, y, yaw, sx * (hw - arm), 0, (h + 0.2) / 2), (arm, hd, (h + 0.2) / 2), yaw, c, inst, mat)
            for sx in (-1, 1)
        ]
    return prims


def _on_wall(kind, rng, lay, c, inst, m, room_h):
    """Door (from the floor), window or picture: a 4 cm thick box on a wall."""
    u = rng.uniform
    if kind == "door":
        hw, h0, h1 = u(0.4, 0.48), 0.0, u(2.0, 2.1)
    elif kind == "window":
        hw, h0 = u(0.4, 0.9), u(0.8, 1.0)
        h1 = min(room_h - 0.2, h0 + u(1.0, 1.4))
    else:
        hw, hh, zc = u(0.15, 0.5), u(0.15, 0.4), u(1.4, 1.8)
        h0, h1 = zc - hh, min(room_h - 0.1, zc + hh)
    spot = lay.wall_spot(2 * hw, 0.04, on_floor=kind == "door", full_height=kind == "door")
    if spot is None:
        return []
    x, y, yaw = spot
    return [_box((x, y, (h0 + h1) / 2), (hw, 0.02, (h1 - h0) / 2), yaw, c, inst, m[kind])]


def _lamp(kind, rng, lay, c, inst, m, room_h):
    spot = lay.free_spot(0.2, 0.2)
    if spot is None:
        return []
    x, y, _ = spot
    pole = rng.uniform(1.3, 1.6)
    return [
        Prim(CYLINDER, (x, y, 0.015), (0.15, 0.15, 0.015), 0.0, c, inst, m["metal"]),
        Prim(CYLINDER, (x, y, pole / 2), (0.015, 0.015, pole / 2), 0.0, c, inst, m["metal"]),
        Prim(CYLINDER, (x, y, pole + 0.1), (0.18, 0.18, 0.15), 0.0, c, inst, m["shade"]),
    ]


def _clutter(kind, rng, lay, c, inst, m, room_h):
    """A box, bin or ball on a table or low cabinet top when there is one, else on the floor."""
    u = rng.uniform
    shape = int(rng.integers(3))
    mat = m["clutter"][int(rng.integers(len(m["clutter"])))]
    if lay.supports and rng.random() < 0.6:
        sx, sy, syaw, shx, shy, top = lay.supports[int(rng.integers(len(lay.supports)))]
        s = u(0.05, 0.12)
        x, y = _local(sx, sy, syaw, u(-shx, shx) * 0.8, u(-shy, shy) * 0.8, 0)[:2]
        base = top
    else:
        s = u(0.12, 0.3)
        spot = lay.free_spot(s, s)
        if spot is None:
            return []
        x, y, _ = spot
        base = 0.0
    if shape == 0:
        hz = s * u(0.6, 1.5)
        return [_box((x, y, base + hz), (s, s * u(0.6, 1.0), hz), rng.uniform(0, np.pi), c, inst, mat)]
    if shape == 1:
        hz = s * u(0.8, 2.0)
        return [Prim(CYLINDER, (x, y, base + hz), (s * 0.7, s * 0.7, hz), 0.0, c, inst, mat)]
    return [Prim(SPHERE, (x, y, base + s), (s, s, s), 0.0, c, inst, mat)]


# Each builder returns the primitives of one object, or [] when the layout found no free spot.
BUILDERS = {
    "table": _table,
    "chair": _chair,
    "bed": _against_wall,
    "sofa": _against_wall,
    "cabinet": _against_wall,
    "door": _on_wall,
    "window": _on_wall,
    "picture": _on_wall,
    "lamp": _lamp,
    "objects": _clutter,
}
