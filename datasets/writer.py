"""Stream a :class:`~datasets.sources.base.Source` into byte-reproducible WebDataset shards.

Rebuilds are byte-identical: members are written in sorted order with a fixed mtime, owner and
mode, PNG encoding is deterministic, and the manifest carries no timestamps. The build goes to a
temporary sibling directory that is renamed into place only once the manifest is written, so an
interrupted build never leaves a directory that looks complete, and an existing dataset at the
destination survives a failed rebuild untouched. A build that was killed (no chance to clean up) leaves
its hidden ``.NAME.tmp-PID`` directory behind: the next build of the same output removes those whose
process is gone (:func:`clean_up_killed_builds`).

With ``workers > 1`` samples are loaded and encoded in that many processes while this process writes
them, in key order, into the shards: at most ``max_pending`` samples (``2 × workers`` unless given) are
in flight or encoded and waiting, so memory stays bounded however large the dataset, and the bytes do
not depend on the number of workers. Progress is a tqdm bar on a terminal, otherwise one line on stderr
every ``log_every`` seconds.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


def _encoded(source: Source, split: str, keys: list[str], workers: int, max_pending: int) -> Iterator[dict[str, bytes]]:
    """The encoded samples of ``keys``, in order; with ``workers > 1`` encoded by a process pool.

    At most ``max_pending`` samples are submitted and not yet handed on, so a writer slower than the
    workers holds a bounded number of encoded samples in memory. A worker that dies (killed, out of
    memory) makes the pool raise ``BrokenProcessPool`` instead of waiting forever.
    """
    if workers <= 1 or len(keys) < 2:
        for key in keys:
            yield _encode(source, split, key)
        return
    # fork keeps the source's state without pickling it; results are taken in submission order.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(source,)) as pool:
        pending: deque[tuple[str, Future[dict[str, bytes]]]] = deque()
        try:
            for key in keys:
                pending.append((key, pool.submit(_encode_in_worker, (split, key))))
                if len(pending) >= max_pending:
                    yield _result(source, split, *pending.popleft())
            while pending:
                yield _result(source, split, *pending.popleft())
        finally:
            for _, fut in pending:  # a failed sample or a closed generator: drop the rest of the queue
                fut.cancel()


def _result(source: Source, split: str, key: str, fut: Future[dict[str, bytes]]) -> dict[str, bytes]:
    try:
        return fut.result()
    except BrokenProcessPool as e:
        raise SourceError(
            f"{source.name} {split}/{key}: a worker process died while encoding (killed, or out of memory); "
            "nothing was written: rerun, with fewer --workers if memory is short"
        ) from e


class _Progress:
    """A tqdm bar (``bar``), else one line on stderr every ``log_every`` seconds (None: silent)."""

    def __init__(self, total: int, desc: str, bar: bool, log_every: float | None) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.bar = tqdm(total=total, desc=desc, unit="sample") if bar else None
        self.log_every = None if bar else log_every
        self.start = self.last = time.monotonic()
        self.logged = 0  # the count of the last line printed

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.log_every is not None:
            now = time.monotonic()
            if now - self.last >= self.log_every:
                self.last = now
                self._line(now)

    def _line(self, now: float) -> None:
        self.logged = self.done
        rate = self.done / max(now - self.start, 1e-9)
        pct = 100.0 * self.done / max(self.total, 1)
        print(f"{self.desc}: {self.done}/{self.total} samples ({pct:.1f}%), {rate:.1f} samples/s", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.log_every is not None and 0 < self.logged < self.done:
            self._line(time.monotonic())  # the final count, when an earlier line showed less


def _write_split(
    source: Source,
    split: str,
    tmp_root: Path,
    shard_size: int,
    workers: int,
    progress: bool,
    log_every: float | None = None,
    max_pending: int | None = None,
) -> dict[str, Any]:
    keys = [check_key(k, f"{source.name} {split}") for k in source.keys(split)]
    if len(set(keys)) != len(keys):
        raise SourceError(f"{source.name} {split}: duplicate sample keys")
    (tmp_root / split).mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    bar = _Progress(len(keys), f"{source.name}/{split}", progress, log_every)
    encoded = _encoded(source, split, keys, workers, max_pending or 2 * workers)
    try:
        for start in range(0, len(keys), shard_size):
            rel = f"{split}/shard-{len(shards):06d}.tar"
            buf = io.BytesIO()
            count = 0
            with wds.TarWriter(buf, encoder=False, mtime=TAR_MTIME, user=TAR_USER, group=TAR_USER) as tw:
                for key in keys[start : start + shard_size]:
                    members = next(encoded)
                    tw.write({"__key__": key, **members})
                    count += 1
                    bar.update()
            data = buf.getvalue()
            (tmp_root / rel).write_bytes(data)
            shards.append(
                {"path": rel, "num_samples": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )
    finally:
        encoded.close()  # on an error: stop the workers before the temporary directory is removed
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
    log_every: float | None = None,
    max_pending: int | None = None,
) -> dict[str, Any]:
    """Write every split of ``source`` to ``out`` atomically; returns the manifest.

    ``workers`` processes load and encode samples (1: this process); ``max_pending`` bounds the samples
    in flight (default ``2 × workers``). ``progress``: a tqdm bar (default: when stderr is a terminal);
    without one, ``log_every`` seconds between progress lines on stderr (None: none).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_pending is not None and max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    if log_every is not None and not log_every > 0:
        raise ValueError(f"log_every must be > 0 seconds, got {log_every}")
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
        splits = {
            s: _write_split(source, s, tmp, shard_size, workers, progress, log_every, max_pending)
            for s in source.splits()
        }
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
