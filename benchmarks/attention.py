"""APNB vs the plain non-local block: time and peak memory (ANN, Zhu et al. ICCV 2019, efficiency study).

The setting of ANN's ``efficiency_statics``: one 2048-channel feature map, key and value channels
256, blocks built as in ``fusion.attention`` (APNB = :class:`PyramidPooledAttention` with the
(1, 3, 6, 8) pyramid, S = 110; non-local = :func:`non_local_block`, S = N), eval mode, no_grad,
fp32. Each (block, size) is measured in a fresh process so that one measurement's allocations
cannot hide the next one's peak:

- time: median of ``repeats`` forward passes after a first (warm-up) pass;
- peak memory: on CPU the growth of the process's peak resident set (``ru_maxrss``) during the
  first pass over the resident set just before it, i.e. the activations the block allocates
  (weights and input excluded); on CUDA ``max_memory_allocated`` over ``memory_allocated``;
- ``apnb_attention_fraction``: the median time of APNB's attention part alone (``attend``:
  pooling, the two batched matmuls, softmax; projections precomputed) over APNB's total.

Ratios: ``apnb_speedup@HxW`` (non-local time / APNB time), ``apnb_memory_reduction@HxW`` (non-local
peak / APNB peak), ``apnb_attention_fraction@HxW``, and ``sdpa_speedup@HxW`` (explicit non-local
time / non-local through ``scaled_dot_product_attention``). They are measured on CPU; when CUDA is
present the same names with the suffix ``:cuda`` are measured there too. The paper reports, at
2048×128×256 on a GPU, APNB ~6x faster and ~28x smaller than the non-local block.

    python benchmarks/attention.py [--quick] [--json]
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, parse_args  # noqa: E402

CHANNELS = 2048
KEY_VALUE_CHANNELS = 256
FULL_SIZES = ((96, 96), (128, 128), (128, 256))
BLOCKS = ("nonlocal", "nonlocal_sdpa", "apnb")
# The explicit non-local block holds the N×N logits and their softmax at once.
NONLOCAL_LIVE_MATRICES = 2


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("benchmarks/attention.py: /proc/meminfo has no MemAvailable line")


def _build(block: str):
    from fusion.attention import PyramidPooledAttention, non_local_block

    if block == "apnb":
        return PyramidPooledAttention(CHANNELS, CHANNELS, KEY_VALUE_CHANNELS, KEY_VALUE_CHANNELS)
    return non_local_block(CHANNELS, CHANNELS, KEY_VALUE_CHANNELS, KEY_VALUE_CHANNELS,
                           use_sdpa=block == "nonlocal_sdpa")


def _times_ms(fn, repeats: int, sync) -> list[float]:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(block: str, height: int, width: int, device: str, repeats: int) -> dict[str, Any]:
    """One block at one size, in the calling (fresh) process."""
    import torch

    from fusion.attention import attend

    model = _build(block).eval().to(device)
    x = torch.randn(1, CHANNELS, height, width, device=device)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            model(x)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            before = _rss_bytes()
            model(x)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        times = _times_ms(lambda: model(x), repeats, sync)
        n = height * width
        s = model.attention.sampler.num_samples(height, width)
        result = {
            "block": block, "device": device, "input": [1, CHANNELS, height, width], "size": f"{height}x{width}",
            "samples": s, "attention_matrix_bytes": n * s * 4, "peak_bytes": int(peak),
            "peak_mb": round(peak / 2**20, 1), "time_ms": round(statistics.median(times), 2),
            "times_ms": [round(t, 2) for t in times],
        }
        if block == "apnb":
            att = model.attention
            q = att.query_project(x)
            v = att.value_project(x)
            attend_times = _times_ms(lambda: attend(q, q, v, att.sampler), repeats, sync)
            result["attention_time_ms"] = round(statistics.median(attend_times), 2)
    return result


def _in_fresh_process(args: tuple) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(measure, args)


def _skip_reason(block: str, height: int, width: int, device: str) -> str | None:
    if block != "nonlocal":
        return None
    need = NONLOCAL_LIVE_MATRICES * (height * width) ** 2 * 4
    if device.startswith("cuda"):
        import torch

        free = torch.cuda.mem_get_info()[0]
    else:
        free = _available_bytes()
    if need > 0.6 * free:
        return f"needs ~{need / 2**30:.1f} GiB for the N×N matrices, {free / 2**30:.1f} GiB available"
    return None


def run(sizes, device: str, repeats: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    results, ratios = [], {}
    suffix = "" if device == "cpu" else ":cuda"
    for height, width in sizes:
        by_block = {}
        for block in BLOCKS:
            reason = _skip_reason(block, height, width, device)
            if reason is not None:
                results.append({"block": block, "device": device, "size": f"{height}x{width}", "skipped": reason})
                continue
            by_block[block] = _in_fresh_process((block, height, width, device, repeats))
            results.append(by_block[block])
        tag = f"{height}x{width}"
        apnb, nl, sdpa = by_block["apnb"], by_block.get("nonlocal"), by_block.get("nonlocal_sdpa")
        ratios[f"apnb_attention_fraction@{tag}{suffix}"] = round(apnb["attention_time_ms"] / apnb["time_ms"], 4)
        if nl is not None:
            ratios[f"apnb_speedup@{tag}{suffix}"] = round(nl["time_ms"] / apnb["time_ms"], 2)
            ratios[f"apnb_memory_reduction@{tag}{suffix}"] = round(nl["peak_bytes"] / max(apnb["peak_bytes"], 1), 2)
            if sdpa is not None:
                ratios[f"sdpa_speedup@{tag}{suffix}"] = round(nl["time_ms"] / sdpa["time_ms"], 2)
    return results, ratios


def main() -> None:
    args = parse_args("APNB vs non-local block: time and peak memory (ANN efficiency study)")
    import torch

    sizes = FULL_SIZES[:1] if args.quick else FULL_SIZES
    results, ratios = run(sizes, "cpu", repeats=1 if args.quick else 3)
    if torch.cuda.is_available():
        cuda_results, cuda_ratios = run(FULL_SIZES, "cuda", repeats=5 if args.quick else 20)
        results += cuda_results
        ratios.update(cuda_ratios)
    emit("attention", results, ratios, args.json)


if __name__ == "__main__":
    main()
