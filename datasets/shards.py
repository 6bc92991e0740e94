"""One shard as samples, checked against its manifest entry; a whole dataset checked the same way.

A shard is untrusted bytes: it may have rotted on disk, been copied in part, or been edited or
forged. :func:`iter_shard` groups the members of a tar (read by :mod:`datasets.tario`) into samples
and checks, for every shard:

* every key matches ``[A-Za-z0-9_-]+``, every member name has an extension, no member appears twice
  in a sample and no key appears twice in the shard (a repeated sample would be trained on twice);

and, given the shard's manifest entry:

* before reading anything, the file's size is the manifest's ``bytes`` (a truncated or appended-to
  file fails here, and every member's declared size is bounded by the file);
* at the end of the shard, the number of samples is the manifest's ``num_samples`` and the sha256 of
  every byte of the file is the manifest's ``sha256``. The hash is computed from the bytes the tar
  reader reads anyway (and the end-of-archive padding after them), so it costs one hashing pass and
  no second read. These end-of-shard checks run *before* the shard's last sample is handed out.

Every failure is a :class:`ShardReadError` naming the shard (and the key, member or hash at fault).
:func:`verify` runs the same checks over every shard of a dataset and also finds keys repeated
across the shards of a split; it is what ``fusionpipe data verify`` runs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from datasets import manifest as mf
from datasets.tario import iter_tar

KEY_PATTERN = "[A-Za-z0-9_-]+"
_KEY_RE = re.compile(KEY_PATTERN)
_REST_CHUNK = 1 << 20


class ShardReadError(RuntimeError):
    """A shard or sample that cannot be read; the message names shard, key and member."""


class _HashingReader:
    """A binary file whose every byte read also goes into a sha256."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        return data

    def hexdigest_to_end(self) -> str:
        """Hash the rest of the file (the archive's zero blocks and padding), then the digest."""
        while block := self._f.read(_REST_CHUNK):
            self.sha.update(block)
        return self.sha.hexdigest()


def iter_shard(
    path: str | os.PathLike[str], entry: dict[str, Any] | None = None, verify: bool = True
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {member file name: bytes})`` for each sample of one tar, in file order.

    ``entry`` is the shard's record in the manifest (``bytes``, ``num_samples``, ``sha256``); with
    it the size, count and (``verify``) sha256 checks of the module docstring apply. ``verify=False``
    skips only the hash, for measuring its cost. Raises :class:`ShardReadError`.
    """
    path = Path(path)
    key: str | None = None
    done: str | None = None  # the last sample yielded whole
    members: dict[str, bytes] = {}
    keys: set[str] = set()
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            size = os.fstat(f.fileno()).st_size
            if entry is not None and size != entry["bytes"]:
                raise ShardReadError(
                    f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated, appended to or "
                    "replaced since it was written)"
                )
            hashing = _HashingReader(f) if entry is not None and verify else None
            for fname, data in iter_tar(hashing or f, size):
                k, _, member = fname.partition(".")
                if not member:
                    raise ShardReadError(f"{path}: tar member {fname!r} has no extension")
                if k != key:
                    if not _KEY_RE.fullmatch(k):
                        raise ShardReadError(f"{path}: tar member {fname!r}: key {k!r} does not match {KEY_PATTERN}")
                    if k in keys:
                        raise ShardReadError(
                            f"{path}: key {k!r} appears twice (a repeated sample, or its members are not consecutive)"
                        )
                    if key is not None:
                        yield key, members
                        done = key
                    key, members = k, {}
                    keys.add(k)
                if member in members:
                    raise ShardReadError(f"{path}: key {k!r} has member {member!r} twice")
                members[member] = data
            if hashing is not None:
                digest = hashing.hexdigest_to_end()
                if digest != entry["sha256"]:
                    raise ShardReadError(
                        f"{path}: sha256 {digest} does not match the manifest's {entry['sha256']}: "
                        "its bytes changed since it was written (bit rot, an incomplete copy or an edit)"
                    )
            if entry is not None and len(keys) != entry["num_samples"]:
                raise ShardReadError(f"{path}: holds {len(keys)} samples, the manifest says {entry['num_samples']}")
    except ShardReadError:
        raise
    except (OSError, ValueError) as e:  # TarFormatError (a ValueError) for truncated or corrupt tars
        reading = f" (while reading key {key!r})" if key is not None else ""
        raise ShardReadError(f"{path}: corrupt or truncated shard after key {done!r}{reading}: {e}") from e
    if key is not None:
        yield key, members


def verify(root: str | os.PathLike[str]) -> mf.VerifyResult:
    """:func:`datasets.manifest.verify` with every shard read through :func:`iter_shard` (one pass:
    tar structure, keys, sample count, sha256), and keys repeated across a split's shards reported."""
    seen: dict[str, dict[str, str]] = {}  # split -> key -> the shard it was first seen in

    def check(split: str, path: Path, entry: dict[str, Any]) -> list[str]:
        keys = seen.setdefault(split, {})
        problems = []
        try:
            for key, _ in iter_shard(path, entry):
                if key in keys:
                    problems.append(f"{entry['path']}: key {key!r} is also in {keys[key]} (split {split!r})")
                else:
                    keys[key] = entry["path"]
        except ShardReadError as e:
            problems.append(str(e))
        return problems

    return mf.verify(root, check)
