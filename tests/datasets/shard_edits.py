"""Edits of a written dataset for tests: rewrite a shard's members, flip a byte, re-seal the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path


def reseal(root: Path, shard: str) -> None:
    """Record the shard's current size and sha256 in the manifest, as if it had been written so: the
    checks after the manifest's (tar, keys, members) are then what a test exercises."""
    data = (root / shard).read_bytes()
    m = json.loads((root / "manifest.json").read_text())
    for entry in (e for info in m["splits"].values() for e in info["shards"]):
        if entry["path"] == shard:
            entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (root / "manifest.json").write_text(json.dumps(m))


def edit_manifest(root: Path, edit: Callable[[dict], object]) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


def rewrite_members(root: Path, shard: str, edit: Callable[[list[tuple[tarfile.TarInfo, bytes]]], list]) -> None:
    """Rewrite a shard's tar with ``edit(members) -> members`` (``(TarInfo, data)`` pairs), then re-seal it."""
    path = root / shard
    with tarfile.open(path) as src:
        members = [(ti, src.extractfile(ti).read()) for ti in src.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for ti, data in edit(members):
            ti.size = len(data)
            dst.addfile(ti, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    reseal(root, shard)


def rewrite_member(root: Path, shard: str, key: str, member: str, data: bytes) -> None:
    rewrite_members(root, shard, lambda ms: [(ti, data if ti.name == f"{key}.{member}" else d) for ti, d in ms])


def flip_meta_bit(root: Path, shard: str, sample: int) -> None:
    """Flip one bit of the ``sample``-th ``meta.json`` of a shard ("toy" -> "tny"), leaving the manifest
    as it was: still valid JSON, so only the shard's sha256 can tell."""
    path = root / shard
    data = bytearray(path.read_bytes())
    pos = -1
    for _ in range(sample + 1):
        pos = data.index(b'"source":"toy"', pos + 1)
    data[pos + len('"source":"t')] ^= 0x01
    path.write_bytes(bytes(data))
