"""Encode and decode shard members (shared/ARCHITECTURE.md, "Shard format").

In memory a sample is a dict of numpy arrays:

| key       | dtype / shape        | meaning                                             |
|-----------|----------------------|-----------------------------------------------------|
| `rgb`     | uint8  H×W×3         | colour image                                        |
| `depth`   | float32 H×W          | metric z-depth in metres, 0 = missing               |
| `semseg`  | uint8  H×W           | class ids, 255 = ignore                             |
| `normals` | float32 H×W×3        | unit camera-frame normals, (0,0,0) = missing        |
| `edge`    | uint8  H×W           | 1 = edge, 0 = not                                   |
| `parts`, `sal` | uint8 H×W       | PASCAL-MT extras (class ids / 255 = salient)        |
| `meta`    | dict                 | `id`, `source`, `split`, `intrinsics`, `depth_scale`, ... |

On disk (tar members) depth is a 16-bit PNG in millimetres, normals are 8-bit with
``n = c / 255 * 2 - 1``, edges are 0/255. Decoding is strict: a depth PNG that is not 16-bit,
a map whose size differs from the RGB image, or a member this format does not know is an error
naming the member. Pickle-based members are never decoded.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

DEPTH_SCALE = 0.001  # metres per unit in depth.png
IGNORE_INDEX = 255
IMAGE_MEMBERS = ("rgb", "depth", "semseg", "normals", "edge", "parts", "sal")
MEMBER_EXT = {m: "png" for m in IMAGE_MEMBERS} | {"meta": "json"}
# Members webdataset would unpickle; a shard that carries one is refused, never decoded.
PICKLE_EXTS = ("pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "mp", "msgpack")
PNG_COMPRESS_LEVEL = 3


class ShardFormatError(ValueError):
    """A shard member that does not follow the format; the message names where."""


def member_name(member: str) -> str:
    return f"{member}.{MEMBER_EXT[member]}"


def _png(arr: np.ndarray) -> bytes:
    # Pillow infers the mode from dtype and shape: uint8 H×W -> L, H×W×3 -> RGB, uint16 -> I;16.
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metres (float, 0 = missing) -> uint16 millimetres; beyond 65.535 m is stored as missing."""
    mm = np.rint(np.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0) / DEPTH_SCALE)
    mm[(mm < 0) | (mm > 65535)] = 0
    return mm.astype(np.uint16)


def encode_normals(n: np.ndarray) -> np.ndarray:
    """Unit vectors (H×W×3, zero = missing) -> uint8 H×W×3 with (0,0,0) reserved for missing."""
    valid = np.any(n != 0, axis=-1)
    c = np.clip(np.rint((np.clip(n, -1.0, 1.0) + 1.0) * 0.5 * 255.0), 0, 255).astype(np.uint8)
    # A valid normal can never encode to (0,0,0): that would need n = (-1,-1,-1), not a unit vector.
    c[~valid] = 0
    return c


def decode_normals(c: np.ndarray) -> np.ndarray:
    valid = np.any(c != 0, axis=-1)
    n = c.astype(np.float32) / 255.0 * 2.0 - 1.0
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 0, n / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
    n[~valid] = 0.0
    return n


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes]:
    """A sample dict -> ``{member file name: bytes}``, deterministic for equal input."""
    out: dict[str, bytes] = {}
    for key, value in sample.items():
        if key == "meta":
            out["meta.json"] = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        elif key == "rgb":
            out["rgb.png"] = _png(np.ascontiguousarray(value, dtype=np.uint8))
        elif key == "depth":
            out["depth.png"] = _png(encode_depth(value))
        elif key == "normals":
            out["normals.png"] = _png(encode_normals(value))
        elif key == "edge":
            out["edge.png"] = _png((np.asarray(value) > 0).astype(np.uint8) * 255)
        elif key in ("semseg", "parts", "sal"):
            out[f"{key}.png"] = _png(np.ascontiguousarray(value, dtype=np.uint8))
        else:
            raise ShardFormatError(f"unknown sample key {key!r}; known: {', '.join(IMAGE_MEMBERS + ('meta',))}")
    return out


def decode_member(name: str, data: bytes, where: str = "") -> Any:
    """Decode one member by its file name (``rgb.png``, ``depth.png``, ``meta.json``, ...)."""
    loc = f"{where}: " if where else ""
    base, _, ext = name.rpartition(".")
    if ext in PICKLE_EXTS:
        raise ShardFormatError(f"{loc}member {name!r} is a pickle-capable format; refusing to decode it")
    if name == "meta.json":
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise ShardFormatError(f"{loc}member 'meta.json' is not valid JSON: {e}") from e
    if ext != "png" or base not in IMAGE_MEMBERS:
        raise ShardFormatError(f"{loc}unknown member {name!r}")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types for corrupt data
        raise ShardFormatError(f"{loc}member {name!r} is not a readable PNG: {e}") from e
    if base == "rgb":
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(img)
    if base == "depth":
        if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ShardFormatError(
                f"{loc}member 'depth.png' is {img.mode} ({'8-bit' if img.mode in ('L', 'P', 'RGB') else img.mode}); "
                "depth must be a 16-bit PNG in millimetres"
            )
        mm = np.asarray(img).astype(np.float32)
        return mm * np.float32(DEPTH_SCALE)
    if base == "normals":
        if img.mode != "RGB":
            raise ShardFormatError(f"{loc}member 'normals.png' must be 8-bit RGB, got mode {img.mode}")
        return decode_normals(np.asarray(img))
    if img.mode != "L":
        raise ShardFormatError(f"{loc}member {name!r} must be 8-bit grayscale, got mode {img.mode}")
    arr = np.array(img)
    if base == "edge":
        return (arr > 127).astype(np.uint8)
    return arr


def decode_sample(members: dict[str, bytes], where: str = "") -> dict[str, Any]:
    """``{member file name: bytes}`` -> sample dict, checking that all maps share the RGB size."""
    sample: dict[str, Any] = {}
    for name in sorted(members):
        key = name.split(".", 1)[0]
        sample[key] = decode_member(name, members[name], where)
    if "rgb" in sample:
        hw = sample["rgb"].shape[:2]
        for key, v in sample.items():
            if key not in ("meta", "rgb") and v.shape[:2] != hw:
                raise ShardFormatError(f"{where}: member {key!r} is {v.shape[:2]}, rgb is {hw}")
    return sample
