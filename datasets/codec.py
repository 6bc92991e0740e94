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
``n = c / 255 * 2 - 1``, edges are 0/255. Decoding is strict: a PNG whose bit depth and colour type
are not those of its member's kind (a 16-bit or grayscale ``rgb.png``, an 8-bit ``depth.png``), a
map whose size differs from the RGB image, or a member this format does not know is an error
naming the member. Pickle-based members are never decoded.

Member bytes are untrusted. Before Pillow sees a PNG, :func:`check_png` walks its chunks: it
verifies every chunk's CRC-32 (zlib and Pillow do not check the CRCs of image data, so a flipped bit
would otherwise decode to different pixels), the header's bit depth and colour type, and that the
image data can hold the declared size (deflate expands at most 1032-fold), so a forged header cannot
make the decoder allocate more than the member's bytes can fill. ``meta.json`` must be a UTF-8 JSON
object. Every failure is a :class:`ShardFormatError`.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What each kind is stored as: (PNG bit depth, PNG colour type); colour type 0 = grayscale, 2 = RGB.
PNG_FORMAT: dict[str, tuple[int, int]] = {
    "rgb": (8, 2),
    "normals": (8, 2),
    "scalar16": (16, 0),
    "labels": (8, 0),
    "binary": (8, 0),
    "gray": (8, 0),
}
_PNG_COLOUR = {0: ("L", 1), 2: ("RGB", 3), 3: ("P", 1), 4: ("LA", 2), 6: ("RGBA", 4)}  # mode, channels
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Deflate emits at least 2 bits per 258-byte match: no zlib stream inflates more than 1032-fold.
DEFLATE_MAX_RATIO = 1032


def png_mode(bit_depth: int, colour_type: int) -> str:
    """Pillow's name for a PNG's pixel format: ``L``, ``I;16``, ``RGB``, ``RGB;16``, ``P``, ..."""
    mode = _PNG_COLOUR.get(colour_type, (f"colour type {colour_type}", 1))[0]
    if bit_depth == 16:
        return "I;16" if colour_type == 0 else f"{mode};16"
    if bit_depth < 8:
        return "1" if (colour_type, bit_depth) == (0, 1) else f"{mode};{bit_depth}"
    return mode


def _expected(member: Member) -> str:
    if member.kind == "scalar16":
        unit = f" in {member.unit}" if member.unit else f" (one unit = {member.scale:g})"
        return f"a 16-bit PNG{unit}"
    return "8-bit RGB" if member.kind in ("rgb", "normals") else "8-bit grayscale"


def check_png(data: bytes, name: str, member: Member, where: str = "", crc: bool = True) -> None:
    """Raise :class:`ShardFormatError` unless ``data`` is a whole PNG in ``member``'s pixel format.

    Walks the chunks (signature, lengths, IHDR first, IEND last and nothing after it), compares the
    header's bit depth and colour type with the member's kind, bounds the declared pixel data by what
    its IDAT bytes can inflate to, and with ``crc`` verifies every chunk's CRC-32. Cheap next to the
    decode: one ``zlib.crc32`` pass over bytes already in memory.
    """
    loc = f"{where}: " if where else ""
    bad = f"{loc}member {name!r} is not a valid PNG"
    view = memoryview(data)
    if view[:8] != PNG_SIGNATURE:
        raise ShardFormatError(f"{bad}: no PNG signature")
    pos, end = 8, len(view)
    ihdr: tuple[int, int, int, int, int, int, int] | None = None
    idat = 0
    while True:
        if pos + 12 > end:
            raise ShardFormatError(f"{bad}: cut short at byte {pos} (no IEND chunk)")
        length, ctype = struct.unpack_from(">I4s", view, pos)
        if length > end - pos - 12:
            raise ShardFormatError(
                f"{bad}: chunk {ctype!r} at byte {pos} declares {length} bytes, {end - pos - 12} remain"
            )
        if not ctype.isalpha():
            raise ShardFormatError(f"{bad}: chunk type {ctype!r} at byte {pos} is not 4 letters")
        if crc:
            (stored,) = struct.unpack_from(">I", view, pos + 8 + length)
            if zlib.crc32(view[pos + 4 : pos + 8 + length]) != stored:
                raise ShardFormatError(
                    f"{loc}member {name!r}: CRC mismatch in its {ctype.decode()} chunk at byte {pos} (corrupt bytes)"
                )
        body = view[pos + 8 : pos + 8 + length]
        if ihdr is None:
            if ctype != b"IHDR" or length != 13:
                raise ShardFormatError(f"{bad}: the first chunk is {ctype!r} ({length} bytes), not a 13-byte IHDR")
            ihdr = struct.unpack_from(">IIBBBBB", body)
        elif ctype == b"IHDR":
            raise ShardFormatError(f"{bad}: a second IHDR chunk at byte {pos}")
        elif ctype == b"IDAT":
            idat += length
        elif ctype == b"IEND":
            if pos + 12 != end:
                raise ShardFormatError(f"{bad}: {end - pos - 12} stray bytes after its IEND chunk")
            break
        elif ctype[0:1].isupper() and ctype != b"PLTE":
            raise ShardFormatError(f"{bad}: unknown critical chunk {ctype!r} at byte {pos}")
        pos += 12 + length
    width, height, depth, colour, compression, filtering, interlace = ihdr
    if not (0 < width < 2**31 and 0 < height < 2**31) or compression or filtering or interlace > 1:
        raise ShardFormatError(
            f"{bad}: bad IHDR (size {width}x{height}, methods {compression}/{filtering}/{interlace})"
        )
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise ShardFormatError(f"{bad}: bit depth {depth} with colour type {colour}")
    if (depth, colour) != PNG_FORMAT[member.kind]:
        raise ShardFormatError(
            f"{loc}member {name!r} is {png_mode(depth, colour)} ({depth}-bit); {member.name} must be {_expected(member)}"
        )
    channels = _PNG_COLOUR[colour][1]
    raw = height * (1 + (width * channels * depth + 7) // 8)  # filter byte + packed pixels per row
    if raw > DEFLATE_MAX_RATIO * idat + 1024:
        raise ShardFormatError(
            f"{bad}: its header declares {width}x{height} ({raw} bytes of pixel data), more than its {idat} bytes "
            "of image data can hold"
        )


def decode_member(name: str, data: bytes, where: str = "", verify: bool = True) -> Any:
    """Decode one member by its file name (``rgb.png``, ``depth.png``, ``meta.json``, ...).

    ``verify=False`` skips the PNG CRC check (and nothing else): for measuring what it costs.
    """
    loc = f"{where}: " if where else ""
    base, _, ext = name.rpartition(".")
    if ext in PICKLE_EXTS:
        raise ShardFormatError(f"{loc}member {name!r} is a pickle-capable format; refusing to decode it")
    if name == "meta.json":
        try:
            meta = json.loads(data)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
            raise ShardFormatError(f"{loc}member 'meta.json' is not valid JSON: {e}") from e
        if not isinstance(meta, dict):
            raise ShardFormatError(f"{loc}member 'meta.json' must hold a JSON object, got {type(meta).__name__}")
        return meta
    if ext != "png" or base not in MEMBERS:
        hint = f" ({PLUGIN_HINT})" if ext == "png" and base.isidentifier() else ""
        raise ShardFormatError(f"{loc}unknown member {name!r}{hint}")
    member = MEMBERS[base]
    check_png(data, name, member, where, crc=verify)
    try:
        img = Image.open(io.BytesIO(data), formats=("PNG",))
        img.load()
        arr = np.asarray(img)
    except Exception as e:  # PIL raises many types for corrupt data
        raise ShardFormatError(f"{loc}member {name!r} is not a readable PNG: {e}") from e
    want = (img.height, img.width, 3) if member.channels == 3 else (img.height, img.width)
    if arr.shape != want:  # the header was checked; this is Pillow disagreeing with it
        raise ShardFormatError(f"{loc}member {name!r} decodes to shape {arr.shape}, expected {want}")
    if member.kind == "rgb":
        return np.array(arr, dtype=np.uint8)
    if member.kind == "scalar16":
        return arr.astype(np.float32) * np.float32(member.scale)
    if member.kind == "normals":
        return decode_normals(arr)
    if member.kind == "binary":
        return (arr > 127).astype(np.uint8)
    return np.array(arr, dtype=np.uint8)


def decode_sample(
    members: dict[str, bytes], where: str = "", only: Collection[str] | None = None, verify: bool = True
) -> dict[str, Any]:
    """``{member file name: bytes}`` -> sample dict, checking that all maps share the RGB size.

    With ``only``, maps not named there are left undecoded (``meta`` is always decoded), so a reader
    that needs ``rgb`` and ``semseg`` neither pays for the other maps nor needs a plugin for a member
    it does not use. A pickle-capable member is refused either way. ``verify`` as in :func:`decode_member`.
    """
    sample: dict[str, Any] = {}
    for name in sorted(members):
        key = name.split(".", 1)[0]
        if only is not None and key != "meta" and key not in only and name.rpartition(".")[2] not in PICKLE_EXTS:
            continue
        sample[key] = decode_member(name, members[name], where, verify)
    maps = [k for k in sample if k != "meta"]
    if maps:  # every decoded map has the size of rgb, or of the first map when rgb was not decoded
        ref = "rgb" if "rgb" in sample else maps[0]
        hw = sample[ref].shape[:2]
        for key in maps:
            if sample[key].shape[:2] != hw:
                raise ShardFormatError(f"{where}: member {key!r} is {sample[key].shape[:2]}, {ref} is {hw}")
    return sample
