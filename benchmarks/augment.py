"""Loader-worker throughput at 480×640 when the geometric augmentation runs on the device instead.

``python benchmarks/augment.py [--quick] [--json]``. A synthetic train split at 480×640 (the NYUD paper
size) is written to a temp dir and read by one loader worker's loop (``ShardStream`` through
``make_loader``, ``num_workers=0``, batch 8: everything a DataLoader worker runs, in this process), with
the NYUD MTI-Net set-up's augmentation (``configs/nyud/mtinet_hrnet18.yaml``: hflip 0.5, zoom in
{1.0, 1.2, 1.5}, resize 480×640), two ways:

* ``cpu_augment`` — ``data.augment_on: cpu``: decode, augment (OpenCV warps), ``to_tensors``, collate;
* ``decode_only`` — ``data.augment_on: device``: decode, draw the warp (``WarpSampler``), ``to_tensors``,
  collate; the warp itself is left to the training worker's device.

``ratios["worker_decode_only_vs_cpu_augment@480x640"]`` is the second's samples/s over the first's (target
≥ 4). Rates come from process CPU time (a worker's work, not the shared host's waits), the two methods
alternating in rounds, the first discarded as warm-up. With CUDA present it also times
``datasets.device_augment.warp_batch`` on a batch of 8 at 480×640 on the GPU (CUDA events, after warm-up):
``gpu_augment_ms_per_batch``; without CUDA that result says it was skipped and why.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, parse_args  # noqa: E402

HEIGHT, WIDTH = 480, 640
BATCH = 8
TASKS = ["semseg", "depth", "normals", "edge"]
MODALITIES = ["rgb"]
AUGMENT = {"hflip": 0.5, "zoom": [1.0, 1.2, 1.5], "resize": [HEIGHT, WIDTH]}


def _stream(root: Path, on: str):
    from datasets.loader import ShardStream
    from datasets.transforms import build_transform

    return ShardStream(
        root,
        "train",
        tasks=TASKS,
        modalities=MODALITIES,
        batch_size=BATCH,
        train=True,
        shuffle_buffer=0,
        transform=build_transform(AUGMENT, train=True, on=on),
    )


def _rate(root: Path, on: str) -> tuple[float, float, int]:
    """Samples per CPU second and per wall second of one pass, and the samples it made."""
    from datasets.loader import make_loader

    stream = _stream(root, on)
    n = 0
    c0, w0 = time.process_time(), time.perf_counter()
    for batch in make_loader(stream):
        n += next(iter(batch["inputs"].values())).shape[0]
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return n / cpu, n / wall, n


def _gpu_cost(root: Path, repeats: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"method": "gpu_augment", "skipped": "no CUDA on this machine: the GPU augmentation is not timed"}
    from datasets.device_augment import warp_batch
    from datasets.loader import make_loader

    batch = next(iter(make_loader(_stream(root, "device"))))
    dev = torch.device("cuda")
    inputs = {k: v.to(dev) for k, v in batch["inputs"].items()}
    targets = {k: v.to(dev) for k, v in batch["targets"].items()}
    for _ in range(3):
        warp_batch(inputs, targets, batch["warp"], batch["warp_size"])
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        warp_batch(inputs, targets, batch["warp"], batch["warp_size"])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {
        "method": "gpu_augment",
        "device": torch.cuda.get_device_name(0),
        "batch": BATCH,
        "ms_per_batch": statistics.median(times),
        "ms_per_batch_min": min(times),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    import cv2
    import torch

    from datasets.sources.synthetic import SyntheticSource
    from datasets.writer import write_dataset

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    num, rounds = (16, 3) if args.quick else (48, 5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shards"
        write_dataset(
            SyntheticSource(num_train=num, num_val=0, height=HEIGHT, width=WIDTH, seed=0),
            root,
            shard_size=8,
            workers=1,
            progress=False,
        )
        rates: dict[str, list[tuple[float, float, int]]] = {"cpu_augment": [], "decode_only": []}
        for r in range(rounds):
            order = ("cpu", "device") if r % 2 == 0 else ("device", "cpu")
            for on in order:
                rate = _rate(root, on)
                if r > 0:  # the first round warms caches and imports
                    rates["cpu_augment" if on == "cpu" else "decode_only"].append(rate)
        results = [
            {
                "method": name,
                "samples_per_cpu_s": statistics.median(x[0] for x in v),
                "samples_per_wall_s": statistics.median(x[1] for x in v),
                "cpu_ms_per_sample": 1000 / statistics.median(x[0] for x in v),
                "samples_per_pass": v[0][2],
                "passes": len(v),
            }
            for name, v in rates.items()
        ]
        results.append(_gpu_cost(root, 20 if args.quick else 100))
    by = {r["method"]: r for r in results}
    ratios = {
        f"worker_decode_only_vs_cpu_augment@{HEIGHT}x{WIDTH}": by["decode_only"]["samples_per_cpu_s"]
        / by["cpu_augment"]["samples_per_cpu_s"]
    }
    if "ms_per_batch" in by["gpu_augment"]:
        ratios[f"gpu_augment_ms_per_batch@{HEIGHT}x{WIDTH}:cuda"] = by["gpu_augment"]["ms_per_batch"]
    emit("augment", results, ratios, args.json)


if __name__ == "__main__":
    main()
