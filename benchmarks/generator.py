"""Synthetic generator throughput at 240x320 in one process (docs/synthetic.md, "Speed").

Renders samples with ``datasets.sources.synthetic.render`` and times render only and render +
``codec.encode_sample`` (the PNG/JSON encoding the shard writer does). The target ratio is
``generator_samples_per_s_per_core`` = samples/s with encoding, one process: at least 20.
OpenCV is held to one thread, and the ratio is taken from the process's CPU time, so it is a
per-core figure even when other jobs share the machine; wall-clock rates are reported beside it.

    .venv/bin/python benchmarks/generator.py [--quick] [--json]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from benchmarks._common import emit, parse_args  # noqa: E402
from datasets import codec  # noqa: E402
from datasets.sources.synthetic import render  # noqa: E402

HEIGHT, WIDTH = 240, 320


def _rate(n: int, fn) -> dict[str, float]:
    """Rates over indices 0..n-1 after one warm-up call (ray grid cache, allocator)."""
    fn(n)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "samples_per_s_cpu": round(n / cpu, 2),
        "cpu_ms_per_sample": round(1000 * cpu / n, 2),
        "samples_per_s_wall": round(n / wall, 2),
        "wall_ms_per_sample": round(1000 * wall / n, 2),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    cv2.setNumThreads(1)
    n = 60 if args.quick else 400
    render_only = _rate(n, lambda i: render(0, "train", i, HEIGHT, WIDTH))
    sizes: list[int] = []

    def render_encode(i: int) -> None:
        members = codec.encode_sample(render(0, "train", i, HEIGHT, WIDTH))
        sizes.append(sum(len(b) for b in members.values()))

    full = _rate(n, render_encode)
    results = [
        {"name": "render", "height": HEIGHT, "width": WIDTH, "samples": n, **render_only},
        {
            "name": "render+encode",
            "height": HEIGHT,
            "width": WIDTH,
            "samples": n,
            **full,
            "encoded_kib_per_sample": round(sum(sizes) / len(sizes) / 1024, 1),
        },
    ]
    emit("generator", results, {"generator_samples_per_s_per_core": full["samples_per_s_cpu"]}, args.json)


if __name__ == "__main__":
    main()
