"""Shard loader throughput per DataLoader worker at 240x320 with augmentation, in one process.

Four ways to turn the same encoded samples (a synthetic dataset built into a temp dir) into
tensors, each with the same augmentation (hflip 0.5, scale (0.75, 1.25), crop 240x320) and the
same ``to_tensors``, and the loader's integrity checks alone:

* ``loader`` — ``ShardStream(train=True, num_workers=0)`` through ``make_loader`` (batch 8): file
  reads, tar parsing, decoding, sample checks, shuffle buffer, transform, ``to_tensors``, collate.
  With ``num_workers=0`` all of it runs in this process, so its rate is the rate of one
  DataLoader worker (a worker runs exactly this loop; only the batch hand-off to the parent
  process differs, which is the parent's cost and not the worker's).
* ``decode_limit`` — every member of every shard read into memory first, then ``decode_sample``
  + transform + ``to_tensors`` in a tight loop. The limit deliberately *includes* the transform
  and ``to_tensors``: the loader must do that work too, so the fair "loader vs decode limit" is
  the same work minus the loader's own overhead (I/O, tar, streaming, shuffle buffer, checks,
  collate). ``loader_vs_decode_limit`` is then the share of a worker's time spent on that work
  (target >= 0.8).
* ``loose_files`` — the same member bytes written as one folder per sample (``rgb.png``,
  ``depth.png``, ...), read by a map-style ``Dataset`` that opens each file and decodes it with
  ``codec.decode_member``, through a shuffled DataLoader (batch 8, ``num_workers=0``): the layout
  the shards replace (target ``loader_vs_loose_files`` >= 1.0).
* ``loader_unverified`` — ``loader`` with ``ShardStream(verify=False)``: without the shard sha256
  and PNG CRC checks that training and evaluation always run. ``verified_vs_unverified`` is the loader's
  rate with the checks over its rate without them: the throughput left after paying for integrity
  (target >= 0.95, i.e. a cost of at most 5%).
* ``integrity_checks`` — the checks alone, for a second, low-noise estimate of their cost: sha256
  of every shard's bytes and CRC-32 of every PNG member the loader decodes, over bytes in memory.
  ``integrity_cpu_share`` is their CPU time per sample over the loader's.

Measurement: the methods run in rounds (one pass each per round, interleaved, in reverse
order on odd rounds, the first round discarded as warm-up), so a change in machine load hits all
of them alike. Torch and OpenCV
are held to one thread, and the ratios use the process's CPU time (user + system, so the read
syscalls count): it measures the work each method does and not the time spent waiting for a core
that other jobs hold, which makes it far less noisy than wall time on a shared machine. Wall
rates are reported beside. Both formats are read right after they are written, i.e. from the
page cache: this compares formats and code paths, not disks. Augmentation draws differ between
methods (the loader seeds its own), which averages out over a run.

    .venv/bin/python benchmarks/loader.py [--quick] [--json]
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from benchmarks._common import emit, parse_args  # noqa: E402
from datasets.codec import decode_member, decode_sample  # noqa: E402
from datasets.loader import ShardStream, make_loader  # noqa: E402
from datasets.manifest import load_manifest  # noqa: E402
from datasets.shards import iter_shard  # noqa: E402
from datasets.sources.synthetic import SyntheticSource  # noqa: E402
from datasets.transforms import SampleTransform, build_transform, to_tensors  # noqa: E402
from datasets.writer import write_dataset  # noqa: E402

HEIGHT, WIDTH = 240, 320
BATCH_SIZE = 8
TASKS = ["semseg", "depth", "normals", "edge"]
MODALITIES = ["rgb", "depth"]
METHODS = ("loader", "loader_unverified", "decode_limit", "loose_files", "integrity_checks")


def augment_config(height: int, width: int) -> dict[str, Any]:
    """The benchmark's augmentation (an ``AugmentConfig`` dict); the crop keeps the batch size fixed."""
    return {"hflip": 0.5, "scale": (0.75, 1.25), "crop": (height, width)}


def build_shards(root: Path, num_samples: int, shard_size: int, height: int, width: int) -> Path:
    """Write a synthetic train split of ``num_samples`` at ``height`` x ``width`` to ``root``."""
    write_dataset(
        SyntheticSource(num_train=num_samples, num_val=0, height=height, width=width, seed=0),
        root,
        shard_size=shard_size,
        workers=1,
        progress=False,
    )
    return root


def read_members(root: Path, split: str = "train") -> list[tuple[str, dict[str, bytes]]]:
    """``(key, {member file name: bytes})`` of every sample of ``split``, in shard order."""
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"{root}: no split {split!r}; splits: {', '.join(manifest['splits'])}")
    return [item for s in manifest["splits"][split]["shards"] for item in iter_shard(root / s["path"])]


def write_loose(samples: list[tuple[str, dict[str, bytes]]], out: Path) -> Path:
    """One folder per sample key holding its members as files, byte for byte as in the shards."""
    for key, members in samples:
        folder = out / key
        folder.mkdir(parents=True, exist_ok=False)
        for name, data in members.items():
            (folder / name).write_bytes(data)
    return out


class LooseFiles(Dataset):
    """Map-style dataset over ``root/<key>/<member file>``: the plain-files baseline.

    Sample ``i`` of epoch ``e`` is augmented with seed ``e * len(self) + i``, the same seeds the
    ``decode_limit`` loop uses, so both paths give equal tensors for equal bytes.
    """

    def __init__(self, root: Path, transform: SampleTransform, tasks: list[str], modalities: list[str]) -> None:
        self.folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
        if not self.folders:
            raise ValueError(f"{root}: no sample folders")
        # Listed once, as a file-based dataset indexes its files at start-up.
        self.members = [sorted(p.name for p in folder.iterdir()) for folder in self.folders]
        self.transform, self.tasks, self.modalities = transform, tasks, modalities
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int) -> dict[str, Any]:
        folder = self.folders[i]
        sample: dict[str, Any] = {}
        for name in self.members[i]:
            with open(folder / name, "rb") as f:
                sample[name.split(".", 1)[0]] = decode_member(name, f.read(), str(folder))
        sample = self.transform(sample, self.epoch * len(self) + i)
        inputs, targets = to_tensors(sample, self.tasks, self.modalities)
        return {"inputs": inputs, "targets": targets, "id": str(sample.get("meta", {}).get("id", ""))}


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant figures: a per-sample time of microseconds keeps its precision."""
    return float(f"{x:.{digits}g}")


def _batch_samples(loader: DataLoader) -> int:
    return sum(batch["inputs"][next(iter(batch["inputs"]))].shape[0] for batch in loader)


def loader_pass(root: Path, transform: SampleTransform, batch_size: int, epoch: int, verify: bool = True) -> int:
    """One epoch of the shard loader in this process; returns the number of samples batched.
    ``verify=False`` leaves out the shard sha256 and PNG CRC checks."""
    stream = ShardStream(
        root,
        "train",
        tasks=TASKS,
        modalities=MODALITIES,
        batch_size=batch_size,
        train=True,
        num_workers=0,
        transform=transform,
        verify=verify,
    )
    stream.set_epoch(epoch)
    return _batch_samples(make_loader(stream))


def decode_pass(samples: list[tuple[str, dict[str, bytes]]], transform: SampleTransform, epoch: int) -> int:
    """Decode + transform + ``to_tensors`` of in-memory members; returns the number of samples."""
    for i, (key, members) in enumerate(samples):
        sample = transform(decode_sample(members, key), epoch * len(samples) + i)
        to_tensors(sample, TASKS, MODALITIES)
    return len(samples)


def integrity_pass(shard_bytes: list[bytes], samples: list[tuple[str, dict[str, bytes]]]) -> int:
    """What verification adds to the loader: sha256 of every shard, CRC-32 of every PNG member it
    decodes (the bytes a PNG's chunk CRCs cover, within its few chunk headers); returns the samples."""
    needed = {f"{m}.png" for m in {*TASKS, *MODALITIES}}
    for data in shard_bytes:
        hashlib.sha256(data).hexdigest()
    for _, members in samples:
        for name, data in members.items():
            if name in needed:
                zlib.crc32(data)
    return len(samples)


def loose_pass(dataset: LooseFiles, batch_size: int, epoch: int) -> int:
    """One shuffled epoch over the loose files; returns the number of samples batched."""
    dataset.epoch = epoch
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(epoch)
    )
    return _batch_samples(loader)


def _timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn()
    return n, time.perf_counter() - wall, time.process_time() - cpu


def measure(
    root: Path, loose_root: Path, height: int, width: int, rounds: int, batch_size: int = BATCH_SIZE
) -> list[dict[str, Any]]:
    """Run the three methods interleaved for ``rounds`` rounds (the first one untimed); one result each."""
    if rounds < 2:
        raise ValueError(f"rounds must be >= 2 (the first is warm-up), got {rounds}")
    transform = build_transform(augment_config(height, width), train=True)
    samples = read_members(root)
    dataset = LooseFiles(write_loose(samples, loose_root), transform, TASKS, MODALITIES)
    shard_bytes = [(root / s["path"]).read_bytes() for s in load_manifest(root)["splits"]["train"]["shards"]]
    passes: dict[str, Callable[[int], int]] = {
        "loader": lambda r: loader_pass(root, transform, batch_size, r),
        "loader_unverified": lambda r: loader_pass(root, transform, batch_size, r, verify=False),
        "decode_limit": lambda r: decode_pass(samples, transform, r),
        "loose_files": lambda r: loose_pass(dataset, batch_size, r),
        "integrity_checks": lambda r: integrity_pass(shard_bytes, samples),
    }
    timings: dict[str, list[tuple[int, float, float]]] = {m: [] for m in METHODS}
    for r in range(rounds):
        # Odd rounds run the methods in reverse order, so a method never always follows the same one.
        for method in METHODS if r % 2 == 0 else METHODS[::-1]:
            t = _timed(lambda run=passes[method], r=r: run(r))
            if r > 0:
                timings[method].append(t)
    shard_count = len(load_manifest(root)["splits"]["train"]["shards"])
    results = []
    for method in METHODS:
        n = sum(t[0] for t in timings[method])
        wall = sum(t[1] for t in timings[method])
        cpu = sum(t[2] for t in timings[method])
        results.append(
            {
                "name": method,
                "height": height,
                "width": width,
                "dataset_samples": len(samples),
                "shards": shard_count,
                "batch_size": batch_size if method.startswith("loader") or method == "loose_files" else None,
                "verify": method == "loader" if method.startswith("loader") else None,
                "num_workers": 0,
                "timed_rounds": rounds - 1,
                "samples": n,
                "samples_per_s_cpu": round(n / cpu, 2),
                "cpu_ms_per_sample": _sig(1000 * cpu / n),
                "samples_per_s_wall": round(n / wall, 2),
                "wall_ms_per_sample": _sig(1000 * wall / n),
                "round_samples_per_s_cpu": [round(t[0] / t[2], 2) for t in timings[method]],
            }
        )
    return results


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """The target ratios from CPU-time rates: loader / decode limit, loader / loose files, verified
    loader / unverified loader, and the checks' CPU time per sample over the loader's."""
    rate = {r["name"]: r["samples_per_s_cpu"] for r in results}
    missing = [m for m in METHODS if m not in rate]
    if missing:
        raise ValueError(f"results lack method(s) {', '.join(missing)}; have {', '.join(rate) or 'none'}")
    for m in METHODS:
        if not rate[m] > 0:
            raise ValueError(f"result {m!r}: samples_per_s_cpu must be > 0, got {rate[m]!r}")
    return {
        "loader_vs_decode_limit": round(rate["loader"] / rate["decode_limit"], 4),
        "loader_vs_loose_files": round(rate["loader"] / rate["loose_files"], 4),
        "verified_vs_unverified": round(rate["loader"] / rate["loader_unverified"], 4),
        "integrity_cpu_share": round(rate["loader"] / rate["integrity_checks"], 4),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # One thread each, so CPU time is single-core work and the rate is a per-worker figure.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    num_samples, shard_size, rounds = (64, 16, 5) if args.quick else (512, 64, 6)
    with tempfile.TemporaryDirectory(prefix="fusionpipe-loader-bench-") as tmp:
        root = build_shards(Path(tmp) / "shards", num_samples, shard_size, HEIGHT, WIDTH)
        results = measure(root, Path(tmp) / "loose", HEIGHT, WIDTH, rounds)
    emit("loader", results, ratios(results), args.json)


if __name__ == "__main__":
    main()
