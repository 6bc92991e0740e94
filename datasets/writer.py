"""Stream a :class:`~datasets.sources.base.Source` into byte-reproducible WebDataset shards.

Rebuilds are byte-identical: members are written in sorted order with a fixed mtime, owner and
mode, PNG encoding is deterministic, and the manifest carries no timestamps. The build goes to a
temporary sibling directory that is renamed into place only once the manifest is written, so an
interrupted build never leaves a directory that looks complete, and an existing dataset at the
destination survives a failed rebuild untouched. A build that was killed (no chance to clean up) leaves
its hidden ``.NAME.tmp-PID`` directory behind: the next build of the same output removes those whose
process is gone (:func:`clean_up_killed_builds`).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from datasets import manifest as mf
from datasets.codec import encode_sample
from datasets.sources.base import Source, SourceError, check_key

TAR_MTIME = 0  # fixed, so the same samples give the same tar bytes on every machine
TAR_USER = "fusionpipe"


def _encode(source: Source, split: str, key: str) -> dict[str, bytes]:
    sample = source.load(split, key)
    missing = [m for m in source.members if m not in sample]
    if missing:
        raise SourceError(f"{source.name} {split}/{key}: sample lacks member(s) {', '.join(missing)}")
    semseg = sample.get("semseg")
    if semseg is not None:
        bad = semseg[(semseg >= len(source.classes)) & (semseg != source.ignore_index)]
        if bad.size:
            raise SourceError(
                f"{source.name} {split}/{key}: semseg class id {int(bad.max())} out of range "
                f"(dataset has {len(source.classes)} classes, ignore = {source.ignore_index})"
            )
    return encode_sample(sample)


_WORKER_SOURCE: Source | None = None


def _init_worker(source: Source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _encode_in_worker(job: tuple[str, str]) -> dict[str, bytes]:
    assert _WORKER_SOURCE is not None
    return _encode(_WORKER_SOURCE, *job)


def _encoded(source: Source, split: str, keys: list[str], workers: int) -> Iterator[dict[str, bytes]]:
    jobs = [(split, k) for k in keys]
    if workers <= 1 or len(jobs) < 2 * workers:
        for job in jobs:
            yield _encode(source, *job)
        return
    # fork keeps the source's state without pickling it per task; order is preserved by imap.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(source,)) as pool:
        yield from pool.imap(_encode_in_worker, jobs, chunksize=4)


def _write_split(
    source: Source, split: str, tmp_root: Path, shard_size: int, workers: int, progress: bool
) -> dict[str, Any]:
    keys = [check_key(k, f"{source.name} {split}") for k in source.keys(split)]
    if len(set(keys)) != len(keys):
        raise SourceError(f"{source.name} {split}: duplicate sample keys")
    (tmp_root / split).mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    bar = tqdm(total=len(keys), desc=f"{source.name}/{split}", unit="sample", disable=not progress)
    encoded = _encoded(source, split, keys, workers)
    for start in range(0, len(keys), shard_size):
        rel = f"{split}/shard-{len(shards):06d}.tar"
        buf = io.BytesIO()
        count = 0
        with wds.TarWriter(buf, encoder=False, mtime=TAR_MTIME, user=TAR_USER, group=TAR_USER) as tw:
            for key in keys[start : start + shard_size]:
                members = next(encoded)
                tw.write({"__key__": key, **members})
                count += 1
                bar.update(1)
        data = buf.getvalue()
        (tmp_root / rel).write_bytes(data)
        shards.append(
            {"path": rel, "num_samples": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    bar.close()
    return {"num_samples": len(keys), "shards": shards}


def build_manifest(source: Source, splits: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": mf.SCHEMA_VERSION,
        "name": source.params().get("name", source.name),
        "source": source.name,
        "classes": list(source.classes),
        "ignore_index": source.ignore_index,
        "members": list(source.members),
        "params": source.params(),
        "splits": splits,
    }


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    if pid <= 0:  # os.kill(0, ...) would mean this process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # no process has such an id
        return False
    return True


def clean_up_killed_builds(out: Path) -> list[Path]:
    """Remove what builds of ``out`` that were killed left beside it; returns what was removed or restored.

    Only directories named as :func:`write_dataset` names them (``.NAME.tmp-PID``: a build's output so far;
    ``.NAME.old-PID``: the dataset a build was replacing) count, and only those whose process ``PID`` no
    longer runs on this machine: a build still running keeps its own. A ``.NAME.old-PID`` is the previous
    dataset, moved aside in the instant before the new one took its place: when ``out`` is missing, the
    build was killed in that instant, and the previous dataset is put back instead of removed.
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)")
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:  # no parent yet: nothing was left there
        return []
    done = []
    for path in entries:
        m = pattern.fullmatch(path.name)
        if not m or path.is_symlink() or not path.is_dir():
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            if m.group(1) == "old" and not out.exists():
                os.replace(path, out)
                note = f"restored {out} from {path.name}"
            else:
                shutil.rmtree(path)
                note = f"removed {path}"
        except FileNotFoundError:  # another build of the same output cleaned it up first
            continue
        print(f"{note}, left by a build of {out.name} (process {pid}) that was killed", file=sys.stderr)
        done.append(path)
    return done


def write_dataset(
    source: Source,
    out: str | os.PathLike[str],
    shard_size: int = 256,
    workers: int = 1,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write every split of ``source`` to ``out`` atomically; returns the manifest."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out)
    clean_up_killed_builds(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / mf.MANIFEST).is_file():
        # A dataset is replaced whole; anything else (a parent of datasets, say) is never deleted.
        raise FileExistsError(
            f"{out}: exists, is not empty and holds no {mf.MANIFEST}, so it is not a dataset "
            "this command would replace; remove it or choose another output directory"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        splits = {s: _write_split(source, s, tmp, shard_size, workers, progress) for s in source.splits()}
        manifest = build_manifest(source, splits)
        mf.write_atomic(tmp / mf.MANIFEST, mf.dumps(manifest))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(new: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(new, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
