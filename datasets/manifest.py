"""``manifest.json``: what a dataset directory holds, and how to check it (docs/data-format.md).

The manifest is written last, so a directory with a manifest is complete; it carries no
timestamps, so equal inputs give byte-equal manifests and the manifest digest is a data version.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_REQUIRED = ("schema_version", "name", "source", "classes", "ignore_index", "members", "params", "splits")


class ManifestError(ValueError):
    """A missing or malformed manifest; the message names the file and field."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dumps(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (a temp file beside it, then a rename); on failure the old file,
    if any, stays and the temp file is removed. The file gets the usual mode (0666 less the umask)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (not a fusionpipe dataset, or its build did not finish)")
    try:
        m = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)}")
    if m["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema_version {m['schema_version']!r} is not supported (expected {SCHEMA_VERSION})"
        )
    for split, info in m["splits"].items():
        for field in ("num_samples", "shards"):
            if field not in info:
                raise ManifestError(f"{path}: split {split!r} lacks field {field!r}")
        for i, shard in enumerate(info["shards"]):
            for field in ("path", "num_samples", "bytes", "sha256"):
                if field not in shard:
                    raise ManifestError(f"{path}: splits.{split}.shards[{i}] lacks field {field!r}")
    return m


def manifest_digest(root: str | os.PathLike[str]) -> str:
    """sha256 of manifest.json: it pins every shard's sha256, so it names the data version."""
    return sha256_file(Path(root) / MANIFEST)


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked_shards": self.checked, "problems": self.problems}


def verify(root: str | os.PathLike[str]) -> VerifyResult:
    """Check every shard's existence, size and sha256 against the manifest, and flag stray tars."""
    root = Path(root)
    m = load_manifest(root)
    problems: list[str] = []
    listed: set[str] = set()
    checked = 0
    for split, info in m["splits"].items():
        total = sum(s["num_samples"] for s in info["shards"])
        if total != info["num_samples"]:
            problems.append(f"split {split!r}: shards hold {total} samples, manifest says {info['num_samples']}")
        for shard in info["shards"]:
            listed.add(shard["path"])
            path = root / shard["path"]
            checked += 1
            if not path.is_file():
                problems.append(f"{shard['path']}: missing")
                continue
            size = path.stat().st_size
            if size != shard["bytes"]:
                problems.append(f"{shard['path']}: {size} bytes, manifest says {shard['bytes']}")
                continue
            digest = sha256_file(path)
            if digest != shard["sha256"]:
                problems.append(
                    f"{shard['path']}: sha256 {digest[:12]}... does not match manifest {shard['sha256'][:12]}..."
                )
    for tar in sorted(root.glob("*/*.tar")):
        rel = tar.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: not listed in the manifest")
    return VerifyResult(ok=not problems, checked=checked, problems=problems)
