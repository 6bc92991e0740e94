"""Stream a split's shards into PyTorch batches, one loader per (Ray Train) rank.

Splitting (``rank``, ``world_size`` and DataLoader workers give ``world_size × num_workers``
*slots*):

* **train**: shards are permuted per epoch (same permutation on every rank) and dealt to slots
  round-robin, each slot getting at least one. Every rank yields exactly
  ``num_samples // (world_size × batch_size)`` full batches per epoch — a slot whose shards run
  out is dealt more from a fresh permutation — so DDP never waits on a rank that ran dry. Samples pass a per-slot
  shuffle buffer and the (seeded) augmentation.
* **eval** (``train=False``): shard ``i`` goes to slot ``i mod slots``, read once in order: every
  sample is seen exactly once across all ranks (ranks may differ by whole shards; evaluation gathers
  metric sums after the loop, so that is safe). The transform applies here too (``resize`` only).

Shards are read with :mod:`datasets.tario` (a strict tar reader ~5x cheaper per member than
``tarfile``, which webdataset's iterator wraps) and decoded here (:mod:`datasets.codec`):
webdataset's decoders turn 16-bit depth into 8-bit and would unpickle ``.pyd`` members. Errors name the shard,
key and member. ``errors="skip"`` skips a bad sample (or the rest of a truncated shard), logs each
skip and counts it in :attr:`ShardStream.skipped`; nothing is skipped silently.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datasets.codec import ShardFormatError, decode_sample
from datasets.manifest import load_manifest
from datasets.tario import iter_tar
from datasets.transforms import SampleError, to_tensors

log = logging.getLogger(__name__)

Transform = Callable[[dict[str, Any], int], dict[str, Any]]


class ShardReadError(RuntimeError):
    """A shard or sample that cannot be read; the message names shard, key and member."""


def iter_shard(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {member file name: bytes})`` for each sample of one tar, in file order."""
    key: str | None = None
    done: str | None = None  # the last sample yielded whole
    members: dict[str, bytes] = {}
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            for fname, data in iter_tar(f):
                k, _, member = fname.partition(".")
                if not member:
                    raise ShardReadError(f"{path}: tar member {fname!r} has no extension")
                if k != key:
                    if key is not None:
                        yield key, members
                        done = key
                    key, members = k, {}
                if member in members:
                    raise ShardReadError(f"{path}: key {k!r} has member {member!r} twice")
                members[member] = data
    except ShardReadError:
        raise
    except (OSError, ValueError) as e:  # TarFormatError (a ValueError) for truncated or corrupt tars
        reading = f" (while reading key {key!r})" if key is not None else ""
        raise ShardReadError(f"{path}: corrupt or truncated shard after key {done!r}{reading}: {e}") from e
    if key is not None:
        yield key, members


def check_sample(sample: dict[str, Any], required: list[str], num_classes: int, ignore_index: int, where: str) -> None:
    missing = [m for m in required if m not in sample]
    if missing:
        raise ShardFormatError(f"{where}: missing member(s) {', '.join(m + '.png' for m in missing)}")
    semseg = sample.get("semseg")
    if semseg is not None and "semseg" in required:
        bad = semseg[(semseg >= num_classes) & (semseg != ignore_index)]
        if bad.size:
            raise ShardFormatError(
                f"{where}: member semseg.png has class id {int(bad.max())}, dataset has {num_classes} classes"
            )


class ShardStream(IterableDataset):
    """Iterable over decoded, transformed samples of one rank; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        tasks: list[str],
        modalities: list[str],
        batch_size: int,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 256,
        transform: Transform | None = None,
        errors: str = "raise",
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    ) -> None:
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        if split not in self.manifest["splits"]:
            raise ValueError(f"{self.root}: no split {split!r}; splits: {', '.join(self.manifest['splits'])}")
        self.required = sorted(set(tasks) | set(modalities))
        lacking = [m for m in self.required if m not in self.manifest["members"]]
        if lacking:
            raise ValueError(
                f"{self.root}: dataset lacks {', '.join(lacking)} (needed by tasks/modalities); "
                f"it has members {', '.join(self.manifest['members'])}"
            )
        info = self.manifest["splits"][split]
        self.shards = [(self.root / s["path"], s["num_samples"]) for s in info["shards"]]
        self.num_samples = info["num_samples"]
        self.split, self.tasks, self.modalities = split, list(tasks), list(modalities)
        self.batch_size, self.train, self.rank, self.world_size = batch_size, train, rank, world_size
        self.num_workers, self.seed, self.shuffle_buffer = max(0, num_workers), seed, shuffle_buffer
        self.transform, self.errors, self.mean, self.std = transform, errors, mean, std
        self.num_classes = len(self.manifest["classes"])
        self.ignore_index = self.manifest["ignore_index"]
        self.epoch = 0
        self.skipped = 0
        if train:
            self.batches_per_rank = self.num_samples // (world_size * batch_size)
            if self.batches_per_rank == 0:
                raise ValueError(
                    f"{self.root}/{split}: {self.num_samples} samples are fewer than world_size × batch_size = "
                    f"{world_size * batch_size}; no full batch per rank"
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (DataLoader derives its batch count from it)."""
        if self.train:
            return self.batches_per_rank * self.batch_size
        return sum(n for _, n in self._eval_shards(range(max(1, self.num_workers))))

    def _eval_shards(self, workers: range) -> list[tuple[Path, int]]:
        mine = {self.rank * max(1, self.num_workers) + w for w in workers}
        return [s for i, s in enumerate(self.shards) if i % self.slots in mine]

    def _train_shards(self, slot: int, epoch: int) -> list[tuple[Path, int]]:
        order = np.random.default_rng([self.seed, epoch, 7919]).permutation(len(self.shards))
        n = len(order)
        return [self.shards[order[j % n]] for j in range(slot, max(n, self.slots), self.slots)]

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _raw(self, shards: list[tuple[Path, int]]) -> Iterator[tuple[str, dict[str, bytes]]]:
        """``(where, encoded members)`` of each sample; a truncated shard is skipped or raised."""
        for path, _ in shards:
            try:
                for key, members in iter_shard(path):
                    yield f"{path} key {key!r}", members
            except ShardReadError as e:
                if self.errors == "raise":
                    raise
                self._skip(str(e))

    def _decode(self, where: str, members: dict[str, bytes]) -> dict[str, Any] | None:
        """The decoded, checked sample, or ``None`` when it is bad and ``errors="skip"``."""
        try:
            sample = decode_sample(members, where, only=self.required)
            check_sample(sample, self.required, self.num_classes, self.ignore_index, where)
        except ShardFormatError as e:
            if self.errors == "raise":
                raise ShardReadError(str(e)) from e
            self._skip(str(e))
            return None
        return sample

    def _skip(self, why: str) -> None:
        self.skipped += 1
        log.warning("skipped (errors=skip, %d so far in this worker): %s", self.skipped, why)

    def _to_tensors(self, sample: dict[str, Any]) -> dict[str, Any]:
        inputs, targets = to_tensors(sample, self.tasks, self.modalities, self.mean, self.std)
        return {"inputs": inputs, "targets": targets, "id": str(sample.get("meta", {}).get("id", ""))}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, nworkers = self._worker()
        if nworkers != max(1, self.num_workers):
            raise RuntimeError(f"ShardStream built for {self.num_workers} workers runs in {nworkers}")
        slot = self.rank * nworkers + worker
        if not self.train:
            for item in self._raw(self._eval_shards(range(worker, worker + 1))):
                out = self._prepare(item, 0)  # an evaluation transform (resize only) draws nothing
                if out is not None:
                    yield out
            return
        batches = self.batches_per_rank // nworkers + (1 if worker < self.batches_per_rank % nworkers else 0)
        yield from self._train_iter(slot, batches * self.batch_size)

    def _train_iter(self, slot: int, quota: int) -> Iterator[dict[str, Any]]:
        """Exactly ``quota`` samples, cycling over this slot's shards as often as needed.

        The shuffle buffer holds *encoded* samples (~8x smaller than decoded ones, and decoded just
        before use, while hot in cache); it is capped at the samples one pass over the slot's
        shards yields, so it fills in the first pass.
        """
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
        buffer: list[tuple[str, dict[str, bytes]]] = []
        produced, rounds = 0, 0
        while produced < quota:
            shards = self._train_shards(slot, self.epoch * 1000 + rounds)
            cap = min(self.shuffle_buffer, sum(n for _, n in shards))
            for item in self._raw(shards):
                if len(buffer) < cap:
                    buffer.append(item)
                    continue
                if buffer:
                    i = rng.randrange(len(buffer))
                    buffer[i], item = item, buffer[i]
                out = self._prepare(item, rng.randrange(2**31))
                if out is not None:
                    yield out
                    produced += 1
                    if produced == quota:
                        return
            rounds += 1
            # Drain the buffer only when the quota will be met before it runs dry (keeps order random).
            while buffer and produced < quota and len(buffer) >= quota - produced:
                out = self._prepare(buffer.pop(rng.randrange(len(buffer))), rng.randrange(2**31))
                if out is not None:
                    yield out
                    produced += 1
            if produced == 0 and rounds >= 2:
                raise ShardReadError(f"{self.root}/{self.split}: slot {slot} read no usable sample from its shards")

    def _prepare(self, item: tuple[str, dict[str, bytes]], seed: int) -> dict[str, Any] | None:
        """Decode, transform and tensorise one sample; ``None`` when it is bad and ``errors="skip"``."""
        where, members = item
        sample = self._decode(where, members)
        if sample is None:
            return None
        try:
            if self.transform is not None:
                sample = self.transform(sample, seed)
            return self._to_tensors(sample)
        except SampleError as e:  # e.g. bad intrinsics in meta.json: name the shard and key too
            if self.errors == "raise":
                raise ShardReadError(f"{where}: {e}") from e
            self._skip(f"{where}: {e}")
            return None


def make_loader(stream: ShardStream, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream`` with its batch size and workers (persistent across epochs off)."""
    return DataLoader(
        stream,
        batch_size=stream.batch_size,
        num_workers=stream.num_workers,
        drop_last=False,
        pin_memory=pin_memory,
        multiprocessing_context="fork" if stream.num_workers > 0 and os.name == "posix" else None,
    )


def batches_per_epoch(stream: ShardStream) -> int:
    return math.ceil(len(stream) / stream.batch_size)
