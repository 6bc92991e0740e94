"""Encode and decode shard members (docs/data-format.md).

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

Each map is a :class:`Member` of one kind (``MEMBERS``); :func:`register_member` adds a map for a
new task, and everything below, augmentation and ``to_tensors`` follow its kind.

On disk (tar members) depth is a 16-bit PNG in millimetres, normals are 8-bit with
``n = c / 255 * 2 - 1``, edges are 0/255. Decoding is strict: a depth PNG that is not 16-bit,
a map whose size differs from the RGB image, or a member this format does not know is an error
naming the member. Pickle-based members are never decoded.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

DEPTH_SCALE = 0.001  # metres per unit in depth.png
IGNORE_INDEX = 255
# Members webdataset would unpickle; a shard that carries one is refused, never decoded.
PICKLE_EXTS = ("pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "mp", "msgpack")
PNG_COMPRESS_LEVEL = 3

MemberKind = Literal["rgb", "scalar16", "normals", "labels", "binary", "gray"]
MEMBER_KINDS: tuple[str, ...] = ("rgb", "scalar16", "normals", "labels", "binary", "gray")


class ShardFormatError(ValueError):
    """A shard member that does not follow the format; the message names where."""


@dataclass(frozen=True)
class Member:
    """How one map is stored in a shard (``<name>.png``), held in memory and handed to a model.

    ``kind`` fixes all of it (see docs/data-format.md, "Members and their kinds"):

    | kind | in memory | on disk | padding | as a target tensor |
    |---|---|---|---|---|
    | ``rgb`` | uint8 H×W×3 | 8-bit RGB | 0 | float 3×H×W in [0, 1] |
    | ``scalar16`` | float32 H×W, 0 = missing | 16-bit, value = stored × ``scale`` | 0 | float 1×H×W |
    | ``normals`` | float32 H×W×3 unit vectors, 0 = missing | 8-bit RGB, n = c/255·2−1 | 0 | float 3×H×W |
    | ``labels`` | uint8 H×W ids, 255 = ignore | 8-bit | 255 | long H×W |
    | ``binary`` | uint8 H×W in {0, 1} | 8-bit, 255 = on | 0 | float 1×H×W in {0, 1} |
    | ``gray`` | uint8 H×W | 8-bit | 0 | float 1×H×W, value / 255 |

    Geometric augmentation resamples the input image ``rgb`` bilinearly and every other member
    (``rgb``-kind targets included) nearest, so a value is always a stored value or the padding;
    ``normals`` are also rotated with the warp (datasets/transforms.py). The padding of ``rgb``,
    ``binary`` and ``gray`` maps (0) is also a real value: where a warp leaves the image, such a target
    reads as black / off. ``unit`` names what a ``scalar16`` integer counts, for error messages.
    """

    name: str
    kind: MemberKind
    scale: float | None = None
    unit: str = ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.kind in ("scalar16", "normals") else np.uint8)

    @property
    def channels(self) -> int:
        """3 for an H×W×3 array, 1 for an H×W map."""
        return 3 if self.kind in ("rgb", "normals") else 1

    @property
    def pad(self) -> float:
        """The value that marks "no data" where a warp leaves the image."""
        return float(IGNORE_INDEX) if self.kind == "labels" else 0.0


MEMBERS: dict[str, Member] = {}
# Not member names: the sample's meta.json, and the folder converter's input images and split lists.
RESERVED_NAMES = ("meta", "images", "splits")
PLUGIN_HINT = "a module that registers it (datasets.codec.register_member) is missing: pass --plugin MODULE or list it under plugins"


def register_member(name: str, kind: str, scale: float | None = None, unit: str = "", replace: bool = False) -> Member:
    """Teach the shard format a new map ``<name>.png`` of the given kind (e.g. a registered task's target).

    From then on :func:`encode_sample`/:func:`decode_sample` store and read it, augmentation warps it and
    :func:`datasets.transforms.to_tensors` hands it to the model as a target. ``scale`` (required for
    ``scalar16``, e.g. 0.001 for millimetres stored, metres in memory) is the value of one stored unit.
    A second member of the same name is an error unless ``replace``.
    """
    if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_NAMES:
        raise ValueError(
            f"register_member: member name must be an identifier other than "
            f"{', '.join(map(repr, RESERVED_NAMES))}, got {name!r}"
        )
    if name in MEMBERS and not replace:
        raise ValueError(f"register_member: member {name!r} is already registered (pass replace=True to redefine it)")
    if kind not in MEMBER_KINDS:
        raise ValueError(f"register_member: member {name!r}: unknown kind {kind!r}; kinds: {', '.join(MEMBER_KINDS)}")
    if kind == "scalar16":
        if (
            scale is None
            or not isinstance(scale, (int, float))
            or isinstance(scale, bool)
            or not np.isfinite(scale)
            or not np.float32(scale) > 0
        ):
            raise ValueError(
                f"register_member: member {name!r}: a scalar16 member needs a finite scale > 0 (the "
                f"value of one stored unit), got {scale!r}"
            )
        scale = float(scale)
    elif scale is not None:
        raise ValueError(f"register_member: member {name!r}: scale is only for scalar16 members, not {kind!r}")
    member = Member(name, kind, scale, unit)  # type: ignore[arg-type]
    MEMBERS[name] = member
    return member


for _name, _kind, _scale, _unit in (
    ("rgb", "rgb", None, ""),
    ("depth", "scalar16", DEPTH_SCALE, "millimetres"),
    ("semseg", "labels", None, ""),
    ("normals", "normals", None, ""),
    ("edge", "binary", None, ""),
    ("parts", "labels", None, ""),
    ("sal", "gray", None, ""),
):
    register_member(_name, _kind, _scale, _unit)


def get_member(name: str, where: str = "") -> Member:
    if name not in MEMBERS:
        loc = f"{where}: " if where else ""
        raise ShardFormatError(
            f"{loc}unknown member {name!r}; known: {', '.join(MEMBERS)}, meta (datasets.codec.register_member adds one)"
        )
    return MEMBERS[name]


def member_name(member: str) -> str:
    return "meta.json" if member == "meta" else f"{get_member(member).name}.png"


def _png(arr: np.ndarray) -> bytes:
    # Pillow infers the mode from dtype and shape: uint8 H×W -> L, H×W×3 -> RGB, uint16 -> I;16.
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def encode_scalar16(value: np.ndarray, scale: float) -> np.ndarray:
    """Floats (0 = missing) -> uint16 units of ``scale``; NaN, Inf and values beyond 65535 units become missing."""
    # In the input's own float precision, as before members had kinds: rebuilt shards stay byte-identical.
    units = np.rint(np.nan_to_num(np.asarray(value), nan=0.0, posinf=0.0, neginf=0.0) / scale)
    units[(units < 0) | (units > 65535)] = 0
    return units.astype(np.uint16)


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metres (float, 0 = missing) -> uint16 millimetres; beyond 65.535 m is stored as missing."""
    return encode_scalar16(depth_m, DEPTH_SCALE)


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


def encode_member(member: Member, value: Any) -> bytes:
    """One in-memory map -> the bytes of ``<name>.png``."""
    if member.kind == "rgb":
        return _png(np.ascontiguousarray(value, dtype=np.uint8))
    if member.kind == "scalar16":
        return _png(encode_scalar16(value, member.scale))  # type: ignore[arg-type]
    if member.kind == "normals":
        return _png(encode_normals(value))
    if member.kind == "binary":
        return _png((np.asarray(value) > 0).astype(np.uint8) * 255)
    return _png(np.ascontiguousarray(value, dtype=np.uint8))  # labels, gray


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes]:
    """A sample dict -> ``{member file name: bytes}``, deterministic for equal input."""
    out: dict[str, bytes] = {}
    for key, value in sample.items():
        if key == "meta":
            out["meta.json"] = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        elif key in MEMBERS:
            out[f"{key}.png"] = encode_member(MEMBERS[key], value)
        else:
            raise ShardFormatError(
                f"unknown sample key {key!r}; known: {', '.join([*MEMBERS, 'meta'])} "
                "(datasets.codec.register_member adds one)"
            )
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
    if ext != "png" or base not in MEMBERS:
        hint = f" ({PLUGIN_HINT})" if ext == "png" and base.isidentifier() else ""
        raise ShardFormatError(f"{loc}unknown member {name!r}{hint}")
    member = MEMBERS[base]
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types for corrupt data
        raise ShardFormatError(f"{loc}member {name!r} is not a readable PNG: {e}") from e
    if member.kind == "rgb":
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(img)
    if member.kind == "scalar16":
        if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
            unit = f" in {member.unit}" if member.unit else f" (one unit = {member.scale:g})"
            raise ShardFormatError(
                f"{loc}member {name!r} is {img.mode} ({'8-bit' if img.mode in ('L', 'P', 'RGB') else img.mode}); "
                f"{base} must be a 16-bit PNG{unit}"
            )
        units = np.asarray(img).astype(np.float32)
        return units * np.float32(member.scale)
    if member.kind == "normals":
        if img.mode != "RGB":
            raise ShardFormatError(f"{loc}member {name!r} must be 8-bit RGB, got mode {img.mode}")
        return decode_normals(np.asarray(img))
    if img.mode != "L":
        raise ShardFormatError(f"{loc}member {name!r} must be 8-bit grayscale, got mode {img.mode}")
    arr = np.array(img)
    if member.kind == "binary":
        return (arr > 127).astype(np.uint8)
    return arr


def decode_sample(members: dict[str, bytes], where: str = "", only: Collection[str] | None = None) -> dict[str, Any]:
    """``{member file name: bytes}`` -> sample dict, checking that all maps share the RGB size.

    With ``only``, maps not named there are left undecoded (``meta`` is always decoded), so a reader
    that needs ``rgb`` and ``semseg`` neither pays for the other maps nor needs a plugin for a member
    it does not use. A pickle-capable member is refused either way.
    """
    sample: dict[str, Any] = {}
    for name in sorted(members):
        key = name.split(".", 1)[0]
        if only is not None and key != "meta" and key not in only and name.rpartition(".")[2] not in PICKLE_EXTS:
            continue
        sample[key] = decode_member(name, members[name], where)
    maps = [k for k in sample if k != "meta"]
    if maps:  # every decoded map has the size of rgb, or of the first map when rgb was not decoded
        ref = "rgb" if "rgb" in sample else maps[0]
        hw = sample[ref].shape[:2]
        for key in maps:
            if sample[key].shape[:2] != hw:
                raise ShardFormatError(f"{where}: member {key!r} is {sample[key].shape[:2]}, {ref} is {hw}")
    return sample
