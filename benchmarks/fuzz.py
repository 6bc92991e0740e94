"""Fuzzing the readers of untrusted bytes: tar reader, member decoders, manifest, shard loader.

Every case takes a valid input, mutates it with a seeded generator (``random.Random(seed)``) and runs
a reader on the result. The case passes when the reader returns correct data or raises one of the
project's named errors (``TarFormatError``, ``ShardFormatError``, ``ShardReadError``,
``ManifestError``). It fails as

* **unnamed**: any other exception (``UnicodeDecodeError``, ``MemoryError``, ``KeyError``, ...), or
* **silent**: a mutation the format must detect, read without an error into different data: a PNG
  member whose raw bytes changed (chunk CRCs), a shard whose bytes changed while its manifest entry
  did not (sha256), a map of the wrong dtype or shape, or a changed map from a shard whose
  manifest entry was updated to match (only ``meta.json``, which carries no checksum of its own,
  may change there).

Targets (the share of the cases each gets, and the mutations):

| target | share | input | mutations | reader |
|---|---|---|---|---|
| ``tar`` | 25% | a shard, and GNU and pax tars with long and non-ASCII names | bit flips, byte sets, truncation, insertions, deletions, repeated spans; header fields (size in octal and base-256, up to 2**95, negative, off by a little; name, type, magic, prefix) with the checksum fixed up | ``iter_tar`` on a file, a ``BytesIO`` and a stream of unknown length |
| ``members`` | 35% | each member of a sample (5 PNGs, ``meta.json``) | raw byte mutations; PNG chunks edited with their CRC fixed up (IHDR size, bit depth, colour type, methods; image data; chunks added or removed); a member's bytes swapped for another kind's; ``meta.json`` as other JSON, invalid UTF-8, deep nesting | ``decode_sample`` |
| ``manifest`` | 15% | a dataset's ``manifest.json`` | raw byte mutations; a field replaced by a value of the wrong type or range (``[]``, ``"3"``, -1, 2**70, null, paths with ``..`` or a leading ``/``, ...), deleted, or a shard listed twice | ``load_manifest``, then ``datasets.shards.verify``, ``inspect_dataset`` and a ``ShardStream`` over a split |
| ``shards`` | 25% | a dataset's validation shard | raw byte mutations with the manifest untouched (bit rot: must always be detected) or updated to the new size and sha256 (the reader itself must hold); forged header fields; a member replaced by a 16-bit or single-channel PNG; a quarter of the cases with ``errors="skip"`` (every change must be counted in ``bad_shards``) | ``ShardStream`` (evaluation, with a resize transform) |

The test suite runs 2,000 cases with seed 0 (``tests/datasets/test_fuzz.py``); this script runs
20,000 with seed 1 (``--quick``: the test's 2,000 with seed 0) and reports per target the cases,
outcomes, rate and the first failing cases.

    .venv/bin/python benchmarks/fuzz.py [--quick] [--json]
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import emit, parse_args  # noqa: E402
from datasets.codec import MEMBERS, ShardFormatError, decode_sample  # noqa: E402
from datasets.inspect import inspect_dataset  # noqa: E402
from datasets.loader import ShardStream  # noqa: E402
from datasets.manifest import ManifestError, load_manifest  # noqa: E402
from datasets.shards import ShardReadError  # noqa: E402
from datasets.shards import verify as verify_dataset  # noqa: E402
from datasets.sources.synthetic import SyntheticSource  # noqa: E402
from datasets.tario import TarFormatError, iter_tar  # noqa: E402
from datasets.transforms import build_transform  # noqa: E402
from datasets.writer import write_dataset  # noqa: E402

NAMED = (TarFormatError, ShardFormatError, ShardReadError, ManifestError)
TARGETS = ("tar", "members", "manifest", "shards")
SHARES = {"tar": 0.25, "members": 0.35, "manifest": 0.15, "shards": 0.25}
TASKS = ["semseg", "depth", "normals", "edge"]
MODALITIES = ["rgb", "depth"]
SHARD = "val/shard-000000.tar"
EXAMPLES = 5  # failing cases kept per target


class Silent(Exception):
    """A case read without an error into data that must not be there (see the module docstring)."""


@dataclass
class Tally:
    """Outcomes of one target's cases."""

    name: str
    cases: int = 0
    ok: int = 0
    named: int = 0
    unnamed: int = 0
    silent: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # named error types seen, by name
    failures: list[str] = field(default_factory=list)

    def run(self, describe: str, case: Callable[[], Any]) -> str:
        """Run one case; returns its outcome: ``ok``, ``named``, ``unnamed`` or ``silent``."""
        self.cases += 1
        try:
            case()
        except Silent as e:
            self.silent += 1
            self._fail(f"silent: {describe}: {e}")
            return "silent"
        except NAMED as e:
            self.named += 1
            self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
            return "named"
        except Exception as e:  # noqa: BLE001 - counting what escapes is the point
            self.unnamed += 1
            self._fail(f"unnamed {type(e).__name__}: {describe}: {str(e)[:200]}")
            return "unnamed"
        self.ok += 1
        return "ok"

    def _fail(self, text: str) -> None:
        if len(self.failures) < EXAMPLES:
            self.failures.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cases": self.cases,
            "ok": self.ok,
            "named": self.named,
            "unnamed": self.unnamed,
            "silent": self.silent,
            "named_errors": dict(sorted(self.errors.items())),
            "seconds": round(self.seconds, 3),
            "cases_per_s": round(self.cases / self.seconds, 1) if self.seconds > 0 else None,
            "failures": self.failures,
        }


# --- byte mutations ---------------------------------------------------------------------------


def mutate_bytes(rng: random.Random, data: bytes, hot: int | None = None) -> tuple[bytes, str]:
    """One random raw mutation of ``data`` and its description. Positions fall below ``hot`` (the
    interesting part: a tar's members before its zero padding) four times in five."""
    b = bytearray(data)
    limit = len(b) if not hot or rng.random() < 0.2 else min(hot, len(b))

    def pos() -> int:
        return rng.randrange(max(1, limit))

    kind = rng.choice(("flip", "flip", "flip", "set", "truncate", "insert", "delete", "repeat"))
    if not b:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))), "random bytes"
    if kind == "flip":
        spots = [(pos(), rng.randrange(8)) for _ in range(rng.choice((1, 1, 2, 3, 4)))]
        for p, bit in spots:
            b[p] ^= 1 << bit
        return bytes(b), f"flip bits {spots}"
    if kind == "set":
        spots = [(pos(), rng.randrange(256)) for _ in range(rng.randint(1, 4))]
        for p, v in spots:
            b[p] = v
        return bytes(b), f"set bytes {spots}"
    if kind == "truncate":
        p = pos()
        return bytes(b[:p]), f"truncate at {p}"
    if kind == "insert":
        p, n = pos(), rng.choice((1, 2, 7, 512, 513))
        return bytes(b[:p]) + bytes(rng.randrange(256) for _ in range(n)) + bytes(b[p:]), f"insert {n} at {p}"
    if kind == "delete":
        p, n = pos(), rng.choice((1, 3, 511, 512, 4096))
        return bytes(b[:p] + b[p + n :]), f"delete {n} at {p}"
    p, n = pos(), rng.choice((1, 16, 512, 1024))
    return bytes(b[: p + n] + b[p : p + n] + b[p + n :]), f"repeat {n} at {p}"


# --- tar headers --------------------------------------------------------------------------------

_FIELDS = {
    "name": (0, 100),
    "mode": (100, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "typeflag": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 8),
    "prefix": (345, 155),
}


def header_offsets(tar: bytes) -> list[int]:
    """Offsets of the headers of a tar, up to its end-of-archive block."""
    offsets, pos = [], 0
    while pos + 512 <= len(tar) and tar[pos : pos + 512] != bytes(512):
        offsets.append(pos)
        size = tarfile.nti(tar[pos + 124 : pos + 136])
        pos += 512 + -(-size // 512) * 512
    return offsets


def content_end(tar: bytes) -> int:
    offsets = header_offsets(tar)
    if not offsets:
        return len(tar)
    last = offsets[-1]
    return last + 512 + -(-tarfile.nti(tar[last + 124 : last + 136]) // 512) * 512 + 1024


def _field_value(rng: random.Random, name: str, width: int, old: bytes) -> bytes:
    if name == "size":
        size = tarfile.nti(old)
        choices = [
            b"%011o\0" % rng.choice((size + 1, max(0, size - 1), size + 512, size + 10**6, 8**11 - 1)),
            b"\x80" + bytes(rng.randrange(256) for _ in range(11)),  # GNU base-256, up to 2**88
            b"\x80" + (2**80 + rng.randrange(2**40)).to_bytes(11, "big"),
            b"\xff" * 12,  # base-256 negative
            b"77777777777\0",
            bytes(rng.randrange(256) for _ in range(12)),
            b"\0" * 12,
        ]
        return rng.choice(choices)
    if name == "typeflag":
        return rng.choice((b"0", b"\0", b"5", b"2", b"x", b"g", b"L", b"K", bytes([rng.randrange(256)])))
    if name in ("name", "prefix", "linkname"):
        text = rng.choice(
            (
                b"../../etc/passwd",
                b"/abs/key.rgb.png",
                b"k\xff\xfe.rgb.png",
                b"nodot",
                b"",
                b"a.b.c.d",
                b"000000.meta.json",
                b"\xc3\x28.png",
                bytes(rng.randrange(256) for _ in range(rng.randint(1, width))),
            )
        )
        return text[:width].ljust(width, b"\0")
    if name == "magic":
        return rng.choice((b"ustar\x0000", b"ustar  \0", bytes(8)))
    return bytes(rng.randrange(256) for _ in range(width))


def mutate_header(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    """A header field of a random member set to a forged value, with the checksum recomputed."""
    offsets = header_offsets(tar)
    if not offsets:
        return mutate_bytes(rng, tar)
    h = rng.choice(offsets)
    name = rng.choice(tuple(_FIELDS))
    start, width = _FIELDS[name]
    b = bytearray(tar)
    value = _field_value(rng, name, width, bytes(b[h + start : h + start + width]))
    b[h + start : h + start + width] = value
    checksum = sum(b[h : h + 148]) + sum(b[h + 156 : h + 512]) + 256
    b[h + 148 : h + 156] = b"%06o\0 " % checksum
    return bytes(b), f"header at {h}: {name} = {value[:24]!r}"


def _tar(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class _Stream:
    """A stream of unknown length: no file descriptor, not seekable."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(n)


# --- PNG chunks ---------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, data)`` of each chunk of a valid PNG."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG from chunks, every CRC correct."""
    parts = [b"\x89PNG\r\n\x1a\n"]
    for ctype, body in chunks:
        parts.append(struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body)))
    return b"".join(parts)


def mutate_png_chunks(rng: random.Random, png: bytes) -> tuple[bytes, str]:
    """A PNG whose chunks were edited and re-sealed with correct CRCs: it reaches the decoder."""
    chunks = png_chunks(png)
    kind = rng.choice(("ihdr", "ihdr", "idat", "add", "remove", "split"))
    if kind == "ihdr":
        w, h, depth, colour, comp, filt, inter = struct.unpack(">IIBBBBB", chunks[0][1])
        which = rng.randrange(7)
        new = [w, h, depth, colour, comp, filt, inter]
        new[which] = rng.choice(
            (
                (0, 1, w + 1, w * 1000, 2**31 - 1, 2**32 - 1),
                (0, 1, h - 1, h * 1000, 2**31 - 1),
                (1, 2, 4, 8, 16, 3),
                (0, 2, 3, 4, 6, 5),
                (0, 1),
                (0, 1),
                (0, 1, 2),
            )[which]
        )
        chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", *new))
        return png_from_chunks(chunks), f"IHDR {new}"
    idats = [i for i, (t, _) in enumerate(chunks) if t == b"IDAT"]
    if kind == "idat" and idats:
        i = rng.choice(idats)
        body, desc = mutate_bytes(rng, chunks[i][1])
        chunks[i] = (b"IDAT", body)
        return png_from_chunks(chunks), f"IDAT {desc}"
    if kind == "add":
        ctype = rng.choice((b"tEXt", b"zTXt", b"iCCP", b"PLTE", b"tRNS", b"ABCD", b"abcd", b"IDAT", b"IEND"))
        body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 3, 12, 300))))
        chunks.insert(rng.randrange(1, len(chunks) + 1), (ctype, body))
        return png_from_chunks(chunks), f"add {ctype!r} ({len(body)} bytes)"
    if kind == "remove" and len(chunks) > 1:
        i = rng.randrange(len(chunks))
        removed = chunks.pop(i)[0]
        return png_from_chunks(chunks), f"remove {removed!r}"
    # Split the image data into two chunks: the same PNG, which must decode to the same pixels.
    if idats:
        i = idats[0]
        body = chunks[i][1]
        cut = rng.randrange(len(body) + 1)
        chunks[i : i + 1] = [(b"IDAT", body[:cut]), (b"IDAT", body[cut:])]
        return png_from_chunks(chunks), f"split IDAT at {cut}"
    return mutate_bytes(rng, png)


def mutate_meta(rng: random.Random, meta: bytes) -> tuple[bytes, str]:
    kind = rng.randrange(6)
    if kind == 0:
        value = rng.choice(([], 3, "x", None, [1, 2], True, 1.5))
        return json.dumps(value).encode(), f"meta.json = {value!r}"
    if kind == 1:
        depth = rng.choice((100, 10000, 100000))
        return b"[" * depth + b"]" * depth, f"nesting {depth}"
    if kind == 2:
        p = rng.randrange(len(meta))
        bad = rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"))
        return meta[:p] + bad + meta[p:], f"invalid UTF-8 {bad!r} at {p}"
    if kind == 3:
        return b"\xef\xbb\xbf" + meta, "UTF-8 BOM"
    if kind == 4:
        value = json.loads(meta)
        key = rng.choice(sorted(value))
        value[key] = rng.choice(([], {}, "3", -1, 2**70, None, [1e308, 1e308, -1, 0], float("nan"), "é"))
        return json.dumps(value).encode(), f"meta[{key!r}] = {value[key]!r}"
    return b"1" * rng.choice((10, 5000)), "a long number"


# --- manifests ----------------------------------------------------------------------------------

_WEIRD = ([], {}, "3", -1, 2**70, None, True, 1.5, "", "../train/shard-000000.tar", "/etc/passwd", "a\\b", "x" * 300)


def _paths(value: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


def mutate_manifest(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    if rng.random() < 0.35:
        return mutate_bytes(rng, text)
    m = json.loads(text)
    at = rng.choice(_paths(m)[1:])
    parent = m
    for k in at[:-1]:
        parent = parent[k]
    kind = rng.randrange(4)
    if kind == 0 and isinstance(parent, dict):
        del parent[at[-1]]
        desc = f"delete {'.'.join(map(str, at))}"
    elif kind == 1 and at[-1] == "path":
        parent["path"] = rng.choice(("../val/shard-000000.tar", "/tmp/x.tar", "val/./shard-000000.tar", "train", ""))
        desc = f"{'.'.join(map(str, at))} = {parent['path']!r}"
    elif kind == 2 and isinstance(parent, list):
        parent.append(parent[0])
        desc = f"repeat {'.'.join(map(str, at[:-1]))}[0]"
    else:
        parent[at[-1]] = rng.choice(_WEIRD)
        desc = f"{'.'.join(map(str, at))} = {parent[at[-1]]!r}"[:120]
    return json.dumps(m).encode(), desc


# --- the dataset the manifest and shard targets read --------------------------------------------


def build_dataset(root: Path) -> Path:
    """3 validation samples in one shard (and 2 training samples) at 24x32."""
    write_dataset(
        SyntheticSource(num_train=2, num_val=3, height=24, width=32, seed=0),
        root,
        shard_size=3,
        workers=1,
        progress=False,
    )
    return root


def _stream(root: Path, errors: str = "raise", train: bool = False) -> ShardStream:
    """The validation split as evaluation reads it (resized), or as training does (shuffled, no
    augmentation, so every sample it yields can be compared with the original)."""
    return ShardStream(
        root,
        "val",
        tasks=TASKS,
        modalities=MODALITIES,
        batch_size=1,
        train=train,
        shuffle_buffer=2,
        errors=errors,
        transform=None if train else build_transform({"resize": (12, 16)}, train=False),
    )


def _maps(item: dict[str, Any]) -> list[torch.Tensor]:
    return [item["inputs"][k] for k in sorted(item["inputs"])] + [item["targets"][k] for k in sorted(item["targets"])]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _reseal(root: Path, manifest: dict[str, Any], shard: bytes) -> None:
    m = json.loads(json.dumps(manifest))
    entry = m["splits"]["val"]["shards"][0]
    entry.update(bytes=len(shard), sha256=hashlib.sha256(shard).hexdigest())
    (root / "manifest.json").write_text(json.dumps(m))


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _replace_member(rng: random.Random, tar: bytes) -> tuple[bytes, str, bool]:
    """A member replaced by a valid PNG (16-bit, single-channel, RGB, RGBA, one row too many), and
    whether the loader must refuse it: its pixel format or size is not the member's."""
    names = [n for n, _ in iter_tar(io.BytesIO(tar))]
    target = rng.choice([n for n in names if n.endswith(".png")])
    h, w = 24, 32
    arr = rng.choice(
        (
            np.full((h, w), 40000, np.uint16),
            np.full((h, w), 7, np.uint8),
            np.zeros((h, w, 3), np.uint8),
            np.zeros((h, w, 4), np.uint8),
            np.zeros((h + 1, w), np.uint8),
        )
    )
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for ti in src.getmembers():
            payload = src.extractfile(ti).read()
            if ti.name == target:
                payload = _png(arr)
                ti.size = len(payload)
            dst.addfile(ti, io.BytesIO(payload))
    member = MEMBERS[target.split(".")[1]]
    fits = (
        arr.shape[:2] == (h, w)
        and arr.dtype == (np.uint16 if member.kind == "scalar16" else np.uint8)
        and arr.shape[2:] == ((3,) if member.channels == 3 else ())
    )
    return out.getvalue(), f"{target} = PNG of {arr.dtype} {arr.shape}", not fits


# --- the targets --------------------------------------------------------------------------------


def fuzz_tar(rng: random.Random, n: int, tally: Tally, shard: bytes, workdir: Path) -> None:
    long = "d/" + "x" * 150 + ".rgb.png"
    bases = [
        shard,
        _tar([(long, b"abc"), ("sämple.rgb.png", b"\x00" * 700), ("k.meta.json", b"{}")], tarfile.PAX_FORMAT),
        _tar([(long, b"abc" * 300), ("k.depth.png", b"z" * 513)], tarfile.GNU_FORMAT),
    ]
    path = workdir / "case.tar"
    for _ in range(n):
        base = rng.choice(bases)
        data, desc = mutate_header(rng, base) if rng.random() < 0.4 else mutate_bytes(rng, base, content_end(base))
        how = rng.randrange(3)
        if how == 0:
            path.write_bytes(data)

            def case(path: Path = path) -> None:
                with open(path, "rb") as f:
                    for _ in iter_tar(f):
                        pass

        else:

            def case(data: bytes = data, how: int = how) -> None:
                for _ in iter_tar(io.BytesIO(data) if how == 1 else _Stream(data)):
                    pass

        tally.run(f"{desc} ({('file', 'BytesIO', 'stream')[how]})", case)


def fuzz_members(rng: random.Random, n: int, tally: Tally, members: dict[str, bytes]) -> None:
    reference = decode_sample(members, "reference")
    names = sorted(members)
    pngs = [m for m in names if m.endswith(".png")]
    for _ in range(n):
        name = rng.choice(names)
        original = members[name]
        kind = rng.random()
        if name == "meta.json":
            data, desc = mutate_meta(rng, original) if kind < 0.6 else mutate_bytes(rng, original)
            strict = False  # no checksum inside meta.json: the shard's sha256 guards it
        elif kind < 0.5:
            data, desc = mutate_bytes(rng, original)
            strict = True  # any change to a PNG's raw bytes must be refused (CRC, structure)
        elif kind < 0.9:
            data, desc = mutate_png_chunks(rng, original)
            strict = desc.startswith("split")  # the same image in other chunks
        else:
            other = rng.choice(pngs)
            data, desc = members[other], f"the bytes of {other}"
            strict = False

        def case(name: str = name, data: bytes = data, strict: bool = strict) -> None:
            got = decode_sample({**members, name: data}, "fuzz")
            key = name.split(".", 1)[0]
            if key != "meta":
                member = MEMBERS[key]
                arr = got[key]
                want_ndim = 3 if member.channels == 3 else 2
                if arr.dtype != member.dtype or arr.ndim != want_ndim or (want_ndim == 3 and arr.shape[2] != 3):
                    raise Silent(f"{name} decoded to {arr.dtype} {arr.shape}")
                if strict and not np.array_equal(arr, reference[key]):
                    raise Silent(f"{name} decoded to other values")

        tally.run(f"{name}: {desc}", case)


def fuzz_manifest(rng: random.Random, n: int, tally: Tally, root: Path) -> None:
    original = (root / "manifest.json").read_bytes()
    try:
        for _ in range(n):
            data, desc = mutate_manifest(rng, original)
            (root / "manifest.json").write_bytes(data)

            def case() -> None:
                load_manifest(root)
                verify_dataset(root)
                inspect_dataset(root)
                for _ in _stream(root):
                    pass

            tally.run(desc, case)
    finally:
        (root / "manifest.json").write_bytes(original)


def fuzz_shards(rng: random.Random, n: int, tally: Tally, root: Path) -> None:
    shard_path = root / SHARD
    original = shard_path.read_bytes()
    manifest_bytes = (root / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    references = {
        False: [_maps(item) for item in _stream(root)],
        True: [_maps(item) for item in _stream(root, train=True)],
    }
    hot = content_end(original)
    try:
        for _ in range(n):
            mode = rng.choice(("rot", "rot", "resealed", "resealed", "header", "member"))
            refuse = False  # a member replaced by a PNG that is not of its format must be refused
            if mode == "header":
                data, desc = mutate_header(rng, original)
            elif mode == "member":
                data, desc, refuse = _replace_member(rng, original)
            else:
                data, desc = mutate_bytes(rng, original, hot)
            shard_path.write_bytes(data)
            if mode == "rot":
                (root / "manifest.json").write_bytes(manifest_bytes)
            else:
                _reseal(root, manifest, data)
            errors = "skip" if rng.random() < 0.25 else "raise"
            train = rng.random() < 0.3
            changed = data != original

            def case(
                mode: str = mode,
                errors: str = errors,
                changed: bool = changed,
                refuse: bool = refuse,
                train: bool = train,
            ) -> None:
                stream = _stream(root, errors, train)
                got = [_maps(item) for item in stream]
                reference = references[train]
                if mode == "member":  # a valid shard: a member of the right format may hold other values
                    if refuse and (stream.skipped == 0 if errors == "skip" else True):
                        raise Silent("a PNG of another format or size was read as the member")
                    return
                if errors == "skip":
                    if mode == "rot" and changed and stream.bad_shards == 0:
                        raise Silent("changed bytes, no bad shard counted")
                    for maps in got:  # what was used is a sample of the original data
                        if not any(_same(maps, ref) for ref in reference):
                            raise Silent("a sample with changed maps was handed out")
                    return
                if mode == "rot" and changed:
                    raise Silent("changed bytes read without an error")
                if len(got) != len(reference) or not all(any(_same(g, ref) for ref in reference) for g in got):
                    raise Silent("maps differ from the original")

            tally.run(f"{mode}, errors={errors}, {'train' if train else 'eval'}: {desc}", case)
    finally:
        shard_path.write_bytes(original)
        (root / "manifest.json").write_bytes(manifest_bytes)


def run(cases: int, seed: int, workdir: Path) -> list[dict[str, Any]]:
    """``cases`` cases over the four targets (``SHARES``), seeded; one result per target."""
    rng = random.Random(seed)
    root = build_dataset(workdir / "ds")
    shard = (root / SHARD).read_bytes()
    _, members = next(group_samples(iter_tar(io.BytesIO(shard))))  # the first sample's members, by file name
    counts = {t: int(cases * SHARES[t]) for t in TARGETS}
    counts["members"] += cases - sum(counts.values())
    results = []
    for target in TARGETS:
        tally = Tally(target)
        start = time.perf_counter()
        if target == "tar":
            fuzz_tar(rng, counts[target], tally, shard, workdir)
        elif target == "members":
            fuzz_members(rng, counts[target], tally, members)
        elif target == "manifest":
            fuzz_manifest(rng, counts[target], tally, root)
        else:
            fuzz_shards(rng, counts[target], tally, root)
        tally.seconds = time.perf_counter() - start
        results.append(tally.to_dict())
    return results


def group_samples(items: Any) -> Any:
    """``(key, {member file name: bytes})`` of consecutive tar members that share a key."""
    key, members = None, {}
    for name, data in items:
        k, _, member = name.partition(".")
        if k != key and key is not None:
            yield key, members
            members = {}
        key = k
        members[member] = data
    if key is not None:
        yield key, members


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Failing cases over all cases: unnamed exceptions and silent changes (target 0 for both)."""
    total = sum(r["cases"] for r in results)
    if total <= 0:
        raise ValueError("no cases were run")
    return {
        "unnamed_fraction": round(sum(r["unnamed"] for r in results) / total, 6),
        "silent_fraction": round(sum(r["silent"] for r in results) / total, 6),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    logging.getLogger("datasets.loader").setLevel(logging.ERROR)  # errors="skip" cases log every skip
    cases, seed = (2000, 0) if args.quick else (20000, 1)
    with tempfile.TemporaryDirectory(prefix="fusionpipe-fuzz-") as tmp:
        results = run(cases, seed, Path(tmp))
    emit("fuzz", results, ratios(results), args.json)


if __name__ == "__main__":
    main()
