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

Shards are read with :mod:`datasets.shards` over :mod:`datasets.tario` (a strict tar reader ~5x
cheaper per member than ``tarfile``, which webdataset's iterator wraps) and decoded here
(:mod:`datasets.codec`): webdataset's decoders turn 16-bit depth into 8-bit and would unpickle
``.pyd`` members. Errors name the shard, key and member.

Integrity (docs/data-format.md, "Integrity"): each shard's size is checked against the manifest
before it is read; its sha256 (hashed from the bytes read anyway), sample count and keys at its end,
before its last sample is handed out; and each PNG member's chunk CRCs before it is decoded, so a
changed byte of an image never reaches a batch. What only the end-of-shard check can see (a changed
``meta.json``, tar padding, a count that disagrees with the manifest) is found after the shard's
other samples were handed out. With ``errors="raise"`` (the default) any failure raises
:class:`ShardReadError`. With ``errors="skip"`` a bad sample is dropped; a shard that fails is
dropped from there on: its samples still in the shuffle buffer are discarded, and those already
handed out stay used (the log line says how many; :attr:`ShardStream.used_from_bad_shards`). Every
skip is logged and counted (:attr:`ShardStream.skipped`, :attr:`ShardStream.bad_shards`, per
process), and each loader process logs its counts at the end of an epoch that had any.
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
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datasets.codec import ShardFormatError, decode_sample
from datasets.manifest import ManifestError, load_manifest
from datasets.shards import ShardReadError, iter_shard
from datasets.transforms import SampleError, to_tensors

__all__ = ["ShardReadError", "ShardStream", "batches_per_epoch", "check_sample", "iter_shard", "make_loader"]

log = logging.getLogger(__name__)

Transform = Callable[[dict[str, Any], int], dict[str, Any]]
Shard = tuple[Path, dict[str, Any]]  # the shard's path and its manifest entry
Item = tuple[str, dict[str, bytes], int]  # (where, encoded members, id of the shard read it came from)


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
        verify: bool = True,
    ) -> None:
        """``verify=False`` skips the shard sha256 and the PNG CRC checks (and nothing else): it exists
        to measure what they cost (benchmarks/loader.py); training and evaluation always verify."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        if split not in self.manifest["splits"]:
            raise ManifestError(f"{self.root}: no split {split!r}; splits: {', '.join(self.manifest['splits'])}")
        self.required = sorted(set(tasks) | set(modalities))
        lacking = [m for m in self.required if m not in self.manifest["members"]]
        if lacking:
            raise ManifestError(
                f"{self.root}: dataset lacks {', '.join(lacking)} (needed by tasks/modalities); "
                f"it has members {', '.join(self.manifest['members'])}"
            )
        info = self.manifest["splits"][split]
        self.shards: list[Shard] = [(self.root / s["path"], s) for s in info["shards"]]
        self.num_samples = info["num_samples"]
        self.split, self.tasks, self.modalities = split, list(tasks), list(modalities)
        self.batch_size, self.train, self.rank, self.world_size = batch_size, train, rank, world_size
        self.num_workers, self.seed, self.shuffle_buffer = max(0, num_workers), seed, shuffle_buffer
        self.transform, self.errors, self.mean, self.std, self.verify = transform, errors, mean, std, verify
        self.num_classes = len(self.manifest["classes"])
        self.ignore_index = self.manifest["ignore_index"]
        self.epoch = 0
        self.skipped = 0  # skips (bad samples and bad shards) in this process
        self.bad_shards = 0  # shards that failed a check, in this process
        self.used_from_bad_shards = 0  # samples of those shards handed out before the check failed
        self._read_id = 0  # numbers every shard read; items carry the number of the read they came from
        self._reading: int | None = None  # the shard read in progress
        self._reading_used = 0  # its samples handed out so far
        self._reader: Iterator[tuple[str, dict[str, bytes]]] | None = None
        self._buffer: list[Item] = []
        if train:
            self.batches_per_rank = self.num_samples // (world_size * batch_size)
            if self.batches_per_rank == 0:
                raise ValueError(
                    f"{self.root}/{split}: {self.num_samples} samples are fewer than world_size × batch_size = "
                    f"{world_size * batch_size}; no full batch per rank"
                )

    def __getstate__(self) -> dict[str, Any]:
        """A copy for a spawned DataLoader worker: without a shard read in progress (a generator)."""
        state = dict(self.__dict__)
        state.update(_reader=None, _reading=None, _reading_used=0, _buffer=[])
        return state

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (DataLoader derives its batch count from it)."""
        if self.train:
            return self.batches_per_rank * self.batch_size
        return sum(e["num_samples"] for _, e in self._eval_shards(range(max(1, self.num_workers))))

    def _eval_shards(self, workers: range) -> list[Shard]:
        mine = {self.rank * max(1, self.num_workers) + w for w in workers}
        return [s for i, s in enumerate(self.shards) if i % self.slots in mine]

    def _train_shards(self, slot: int, epoch: int) -> list[Shard]:
        order = np.random.default_rng([self.seed, epoch, 7919]).permutation(len(self.shards))
        n = len(order)
        return [self.shards[order[j % n]] for j in range(slot, max(n, self.slots), self.slots)]

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _raw(self, shards: list[Shard]) -> Iterator[Item]:
        """``(where, encoded members, read id)`` of each sample; a shard that fails is raised or skipped."""
        for path, entry in shards:
            self._read_id += 1
            self._reading, self._reading_used = self._read_id, 0
            self._reader = iter_shard(path, entry, self.verify)
            try:
                for key, members in self._reader:
                    yield f"{path} key {key!r}", members, self._read_id
            except ShardReadError as e:
                self._shard_failed(e)
            self._reader = self._reading = None

    def _finish_shard(self) -> None:
        """A pass that has its samples stopped inside a shard: read the rest of that shard (without
        decoding it), so the shard's end-of-shard checks cover the samples already taken from it."""
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                for _ in reader:
                    pass
            except ShardReadError as e:
                self._shard_failed(e)
        self._reading = None

    def _shard_failed(self, e: ShardReadError) -> None:
        if self.errors == "raise":
            raise e
        before = len(self._buffer)
        self._buffer[:] = [item for item in self._buffer if item[2] != self._reading]
        self.bad_shards += 1
        self.used_from_bad_shards += self._reading_used
        self._skip(
            f"{e} [shard skipped: {self._reading_used} of its samples were already used, "
            f"{before - len(self._buffer)} in the shuffle buffer dropped]"
        )

    def _decode(self, where: str, members: dict[str, bytes]) -> dict[str, Any] | None:
        """The decoded, checked sample, or ``None`` when it is bad and ``errors="skip"``."""
        try:
            sample = decode_sample(members, where, only=self.required, verify=self.verify)
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
        meta = sample.get("meta", {})
        out = {"inputs": inputs, "targets": targets, "id": str(meta.get("id", ""))}
        if "warp" in meta:  # a WarpSampler's draw, for the device to apply (datasets/device_augment.py)
            out["warp"] = torch.from_numpy(np.asarray(meta["warp"], dtype=np.float64))
            out["warp_size"] = torch.tensor(meta["warp_size"], dtype=torch.long)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, nworkers = self._worker()
        if nworkers != max(1, self.num_workers):
            raise RuntimeError(f"ShardStream built for {self.num_workers} workers runs in {nworkers}")
        slot = self.rank * nworkers + worker
        before = (self.skipped, self.bad_shards, self.used_from_bad_shards)
        if not self.train:
            self._buffer = []
            for item in self._raw(self._eval_shards(range(worker, worker + 1))):
                out = self._prepare(item, 0)  # an evaluation transform (resize only) draws nothing
                if out is not None:
                    yield out
        else:
            batches = self.batches_per_rank // nworkers + (1 if worker < self.batches_per_rank % nworkers else 0)
            yield from self._train_iter(slot, batches * self.batch_size)
        self._log_epoch(worker, before)

    def _log_epoch(self, worker: int, before: tuple[int, int, int]) -> None:
        skipped = self.skipped - before[0]
        bad = self.bad_shards - before[1]
        used = self.used_from_bad_shards - before[2]
        if skipped:
            log.warning(
                "epoch %d of %s, rank %d, loader worker %d (errors=skip): %d skip(s); %d shard(s) failed their "
                "checks, %d of their samples had been used before",
                self.epoch,
                self.split,
                self.rank,
                worker,
                skipped,
                bad,
                used,
            )

    def _train_iter(self, slot: int, quota: int) -> Iterator[dict[str, Any]]:
        """Exactly ``quota`` samples, cycling over this slot's shards as often as needed.

        The shuffle buffer holds *encoded* samples (~8x smaller than decoded ones, and decoded just
        before use, while hot in cache); it is capped at the samples one pass over the slot's
        shards yields, so it fills in the first pass. A pass that meets the quota inside a shard
        still reads that shard to its end, so its checks run (:meth:`_finish_shard`).
        """
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
        self._buffer = buffer = []
        produced, rounds = 0, 0
        while produced < quota:
            shards = self._train_shards(slot, self.epoch * 1000 + rounds)
            cap = min(self.shuffle_buffer, sum(e["num_samples"] for _, e in shards))
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
                        self._finish_shard()
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

    def _prepare(self, item: Item, seed: int) -> dict[str, Any] | None:
        """Decode, transform and tensorise one sample; ``None`` when it is bad and ``errors="skip"``."""
        where, members, read_id = item
        sample = self._decode(where, members)
        if sample is None:
            return None
        try:
            if self.transform is not None:
                sample = self.transform(sample, seed)
            out = self._to_tensors(sample)
        except SampleError as e:  # e.g. bad intrinsics in meta.json: name the shard and key too
            if self.errors == "raise":
                raise ShardReadError(f"{where}: {e}") from e
            self._skip(f"{where}: {e}")
            return None
        if read_id == self._reading:
            self._reading_used += 1
        return out


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
