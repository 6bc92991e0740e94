"""``manifest.json``: what a dataset directory holds, and how to check it (docs/data-format.md).

The manifest is written last, so a directory with a manifest is complete; it carries no
timestamps, so equal inputs give byte-equal manifests and the manifest digest is a data version.

A manifest is untrusted input too: :func:`load_manifest` checks its whole structure (every field's
type and range, each shard path relative and inside the dataset, no shard listed twice, each split's
count the sum of its shards') and raises :class:`ManifestError` naming the field and the value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
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


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _show(value: Any) -> str:
    text = json.dumps(value)  # a value json.loads returned
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any, low: int = 0, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def shard_path_problem(rel: Any) -> str | None:
    """Why ``rel`` cannot be a shard path (one relative POSIX path inside the dataset), or ``None``."""
    if not isinstance(rel, str) or not rel:
        return "must be a non-empty string"
    if rel.startswith("/") or "\\" in rel or "\0" in rel or ":" in rel.split("/", 1)[0]:
        return "must be a relative path inside the dataset directory (no leading /, \\, drive or NUL)"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "must stay inside the dataset directory (no '..', '.' or empty parts)"
    return None


def check_manifest(m: Any, where: str) -> None:
    """Raise :class:`ManifestError` (prefixed ``where``) unless ``m`` has the manifest's structure."""

    def bad(field: str, value: Any, what: str) -> ManifestError:
        return ManifestError(f"{where}: field {field} {what}, got {_show(value)}")

    if not isinstance(m, dict):
        raise ManifestError(f"{where}: must hold a JSON object, got {type(m).__name__}")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    if m["schema_version"] != SCHEMA_VERSION or not _is_int(m["schema_version"]):
        raise ManifestError(
            f"{where}: schema_version {m['schema_version']!r} is not supported (expected {SCHEMA_VERSION})"
        )
    for field in ("name", "source"):
        if not isinstance(m[field], str):
            raise bad(field, m[field], "must be a string")
    for field in ("classes", "members"):
        value = m[field]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise bad(field, value, "must be a list of strings")
    if len(m["classes"]) > 255:
        raise bad("classes", f"{len(m['classes'])} names", "must hold at most 255 classes (8-bit ids, 255 = ignore)")
    if not _is_int(m["ignore_index"], 0, 255):
        raise bad("ignore_index", m["ignore_index"], "must be an integer in 0..255")
    if not isinstance(m["params"], dict):
        raise bad("params", m["params"], "must be an object")
    if not isinstance(m["splits"], dict):
        raise bad("splits", m["splits"], "must be an object {split: {num_samples, shards}}")
    paths: dict[str, str] = {}
    for split, info in m["splits"].items():
        at = f"splits.{split}"
        if not isinstance(info, dict):
            raise bad(at, info, "must be an object {num_samples, shards}")
        for field in ("num_samples", "shards"):
            if field not in info:
                raise ManifestError(f"{where}: split {split!r} lacks field {field!r}")
        if not _is_int(info["num_samples"]):
            raise bad(f"{at}.num_samples", info["num_samples"], "must be an integer >= 0")
        if not isinstance(info["shards"], list):
            raise bad(f"{at}.shards", info["shards"], "must be a list")
        for i, shard in enumerate(info["shards"]):
            sat = f"{at}.shards[{i}]"
            if not isinstance(shard, dict):
                raise bad(sat, shard, "must be an object {path, num_samples, bytes, sha256}")
            for field in ("path", "num_samples", "bytes", "sha256"):
                if field not in shard:
                    raise ManifestError(f"{where}: {sat} lacks field {field!r}")
            why = shard_path_problem(shard["path"])
            if why:
                raise bad(f"{sat}.path", shard["path"], why)
            if shard["path"] in paths:
                raise bad(f"{sat}.path", shard["path"], f"is listed twice (also in {paths[shard['path']]})")
            paths[shard["path"]] = sat
            for field in ("num_samples", "bytes"):
                if not _is_int(shard[field]):
                    raise bad(f"{sat}.{field}", shard[field], "must be an integer >= 0")
            if not isinstance(shard["sha256"], str) or not _SHA256_RE.fullmatch(shard["sha256"]):
                raise bad(f"{sat}.sha256", shard["sha256"], "must be 64 lowercase hex digits")
        total = sum(s["num_samples"] for s in info["shards"])
        if total != info["num_samples"]:
            raise bad(f"{at}.num_samples", info["num_samples"], f"must be the sum of its shards' num_samples ({total})")


def load_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``root/manifest.json``; :class:`ManifestError` names the file, field and value at fault."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (not a fusionpipe dataset, or its build did not finish)")
    try:
        m = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    check_manifest(m, str(path))
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


ShardCheck = Callable[[str, Path, dict[str, Any]], list[str]]


def verify(root: str | os.PathLike[str], check: ShardCheck | None = None) -> VerifyResult:
    """Check every shard's existence, size and sha256 against the manifest, and flag stray tars.

    ``check(split, path, entry)``, when given, replaces the sha256 step: it reads the shard itself
    (``datasets.shards.verify`` hashes it while parsing it, one pass) and returns its problems.
    """
    root = Path(root)
    m = load_manifest(root)
    problems: list[str] = []
    listed: set[str] = set()
    checked = 0
    for split, info in m["splits"].items():
        for shard in info["shards"]:
            listed.add(shard["path"])
            path = root / shard["path"]
            checked += 1
            try:
                size = path.stat().st_size if path.is_file() else None
            except OSError as e:  # a name too long, no permission, ...
                problems.append(f"{shard['path']}: cannot be read: {e}")
                continue
            if size is None:
                problems.append(f"{shard['path']}: missing")
                continue
            if size != shard["bytes"]:
                problems.append(f"{shard['path']}: {size} bytes, manifest says {shard['bytes']}")
                continue
            if check is not None:
                problems.extend(check(split, path, shard))
                continue
            try:
                digest = sha256_file(path)
            except OSError as e:
                problems.append(f"{shard['path']}: cannot be read: {e}")
                continue
            if digest != shard["sha256"]:
                problems.append(
                    f"{shard['path']}: sha256 {digest[:12]}... does not match manifest {shard['sha256'][:12]}..."
                )
    for tar in sorted(root.glob("*/*.tar")):
        rel = tar.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: not listed in the manifest")
    return VerifyResult(ok=not problems, checked=checked, problems=problems)
