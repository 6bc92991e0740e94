"""APNB vs the plain non-local block: time and peak memory (ANN, Zhu et al. ICCV 2019, efficiency study).

The setting of ANN's ``efficiency_statics`` (github.com/MendelXu/ANN): one 2048-channel feature
map, key and value channels 256, eval mode, no_grad, fp32. Blocks as built in ``fusion.attention``
(APNB = :class:`PyramidPooledAttention` with the (1, 3, 6, 8) pyramid, S = 110; non-local =
:func:`non_local_block`, S = N), measured at two scopes:

- ``attention``: the block's attention module, ``block.attention(x, x)`` = W_o(softmax(QKᵀ/√d)V)
  with its key/query/value projections. This is what the paper's efficiency study times: its
  ``efficiency_statics/block/{apnb,base_oc_block}.py`` return ``W(context)`` without the concat
  and fusion conv. The headline ratios, comparable with the paper's ~6x and ~28x, are this scope's.
- ``block``: the whole block as the ANN network runs it, fusion conv (cat(context, x) -> 1×1
  conv over 2·2048 channels) included. Ratios with the suffix ``_with_fusion``.

Each (block, scope, size) is measured in a fresh process so that one measurement's allocations
cannot hide the next one's peak:

- time: median of ``repeats`` forward passes after a first (warm-up) pass;
- peak memory, as the paper counts it (``max_memory_allocated`` with the block minus without it,
  i.e. the block's weights plus its activations, the input excluded): the weights' bytes plus the
  peak of tensor memory allocated during one forward pass above what was allocated before it, on
  a second pass (the first creates the libraries' handles and workspaces). On CUDA that is
  ``max_memory_allocated`` over ``memory_allocated``; on CPU the same quantity comes
  from the CPU allocator's own running total, which PyTorch's profiler reports with every
  allocation and free (:func:`cpu_peak_allocated_bytes`). Like the CUDA figure it counts tensors,
  not the resident set: buffers a library allocates by itself (MKL's GEMM packing buffers) and
  pages the C allocator keeps are not in it. On CPU the growth of the process's peak resident set
  (``ru_maxrss``) during the first pass is reported beside it (``peak_rss_bytes``, ratios with the
  suffix ``_rss``): what the operating system saw, allocator and library caches included;
- ``apnb_attention_fraction``: the median time of APNB's attention part alone (``attend``:
  pooling, the two batched matmuls, softmax; projections precomputed) over the rest of the attention
  scope: the key/value projections and W_o, what the issue calls the projections' cost.

Ratios: ``apnb_speedup@HxW`` (non-local time / APNB time), ``apnb_memory_reduction@HxW`` (non-local
peak / APNB peak; on CPU also ``apnb_memory_reduction_rss@HxW`` from the resident sets), all also
``..._with_fusion@HxW``; ``apnb_attention_fraction@HxW``; and
``sdpa_speedup@HxW`` (explicit non-local time / non-local through ``scaled_dot_product_attention``,
attention scope). They are measured on CPU; when CUDA is present the same names with the suffix
``:cuda`` are measured there too. The paper reports, at 2048×128×256 on a GPU, APNB ~6x faster
and ~28x smaller than the non-local block.

    python benchmarks/attention.py [--quick] [--json] [--only cpu|cuda]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, parse_args  # noqa: E402

CHANNELS = 2048
KEY_VALUE_CHANNELS = 256
FULL_SIZES = ((96, 96), (128, 128), (128, 256))
BLOCKS = ("nonlocal", "nonlocal_sdpa", "apnb")
SCOPES = ("attention", "block")
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


def cpu_peak_allocated_bytes(fn) -> int:
    """Peak bytes of CPU tensor memory allocated while ``fn()`` runs, above what was allocated when it
    started: the CPU counterpart of ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()``.

    With memory profiling on, PyTorch's CPU allocator reports every allocation and free to the
    profiler together with its running total of the bytes it has handed out since profiling began
    (tensors that already existed are not in that total); the peak is the largest total in the trace.
    Every allocation counts, temporaries inside an operator included; memory that libraries take
    without going through PyTorch's allocator does not.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    if not memory:
        return 0
    for key in ("Total Allocated", "Bytes"):
        if key not in memory[0]:
            raise RuntimeError(
                f"benchmarks/attention.py: torch {torch.__version__}'s profiler trace has no {key!r} field "
                f"in its [memory] events (fields: {sorted(memory[0])})"
            )
    start = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, max(e["Total Allocated"] for e in memory) - start)


def _build(block: str):
    from fusion.attention import PyramidPooledAttention, non_local_block

    if block == "apnb":
        return PyramidPooledAttention(CHANNELS, CHANNELS, KEY_VALUE_CHANNELS, KEY_VALUE_CHANNELS)
    return non_local_block(
        CHANNELS, CHANNELS, KEY_VALUE_CHANNELS, KEY_VALUE_CHANNELS, use_sdpa=block == "nonlocal_sdpa"
    )


def _times_ms(fn, repeats: int, sync) -> list[float]:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(block: str, scope: str, height: int, width: int, device: str, repeats: int) -> dict[str, Any]:
    """One block at one scope and size, in the calling (fresh) process."""
    import torch

    from fusion.attention import attend

    if device.startswith("cuda"):
        # fp32 as specified: no TF32 in cuDNN convolutions (on by default) or in matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = _build(block).eval().to(device)
    module = model.attention if scope == "attention" else model
    x = torch.randn(1, CHANNELS, height, width, device=device)
    forward = (lambda: model.attention(x, x)) if scope == "attention" else (lambda: model(x))
    weights = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        if cuda:
            # A first pass creates the cuBLAS/cuDNN handles and their workspaces, which the caching
            # allocator counts and keeps (``retained_after_first_pass_bytes``): library state, not the
            # block's activations. The CPU figure below is likewise taken on a second pass.
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            forward()
            torch.cuda.synchronize()
            retained = torch.cuda.memory_allocated() - start
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            forward()
            torch.cuda.synchronize()
            activations = torch.cuda.max_memory_allocated() - before
            rss_activations = None
        else:
            before = _rss_bytes()
            forward()
            rss_activations = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            activations = cpu_peak_allocated_bytes(forward)
        times = _times_ms(forward, repeats, sync)
        n = height * width
        s = model.attention.sampler.num_samples(height, width)
        peak = weights + activations
        result = {
            "block": block,
            "scope": scope,
            "device": device,
            "input": [1, CHANNELS, height, width],
            "size": f"{height}x{width}",
            "samples": s,
            "attention_matrix_bytes": n * s * 4,
            "weights_bytes": int(weights),
            "activation_bytes": int(activations),
            "peak_bytes": int(peak),
            "peak_mb": round(peak / 2**20, 1),
            "time_ms": round(statistics.median(times), 2),
            "times_ms": [round(t, 2) for t in times],
        }
        if cuda:
            result["retained_after_first_pass_bytes"] = int(retained)
        if rss_activations is not None:
            result["rss_activation_bytes"] = int(rss_activations)
            result["peak_rss_bytes"] = int(weights + rss_activations)
            result["peak_rss_mb"] = round((weights + rss_activations) / 2**20, 1)
        if block == "apnb" and scope == "attention":
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
        tag = f"{height}x{width}"
        for scope in SCOPES:
            by_block = {}
            for block in BLOCKS:
                if block == "nonlocal_sdpa" and scope == "block":
                    continue  # SDPA changes only the attention part; the attention scope shows it
                reason = _skip_reason(block, height, width, device)
                if reason is not None:
                    results.append({"block": block, "scope": scope, "device": device, "size": tag, "skipped": reason})
                    continue
                by_block[block] = _in_fresh_process((block, scope, height, width, device, repeats))
                results.append(by_block[block])
            apnb, nl, sdpa = by_block["apnb"], by_block.get("nonlocal"), by_block.get("nonlocal_sdpa")
            fusion = "" if scope == "attention" else "_with_fusion"
            if scope == "attention":
                projections_ms = max(apnb["time_ms"] - apnb["attention_time_ms"], 1e-9)
                ratios[f"apnb_attention_fraction@{tag}{suffix}"] = round(apnb["attention_time_ms"] / projections_ms, 4)
            if nl is not None:
                ratios[f"apnb_speedup{fusion}@{tag}{suffix}"] = round(nl["time_ms"] / apnb["time_ms"], 2)
                ratios[f"apnb_memory_reduction{fusion}@{tag}{suffix}"] = round(
                    nl["peak_bytes"] / max(apnb["peak_bytes"], 1), 2
                )
                if "peak_rss_bytes" in apnb:
                    ratios[f"apnb_memory_reduction_rss{fusion}@{tag}"] = round(
                        nl["peak_rss_bytes"] / max(apnb["peak_rss_bytes"], 1), 2
                    )
                if sdpa is not None:
                    ratios[f"sdpa_speedup@{tag}{suffix}"] = round(nl["time_ms"] / sdpa["time_ms"], 2)
    return results, ratios


def main() -> None:
    args = parse_args("APNB vs non-local block: time and peak memory (ANN efficiency study)", devices=True)
    import torch

    sizes = FULL_SIZES[:1] if args.quick else FULL_SIZES
    results, ratios = [], {}
    if args.only != "cuda":
        results, ratios = run(sizes, "cpu", repeats=1 if args.quick else 3)
    if torch.cuda.is_available() and args.only != "cpu":
        cuda_results, cuda_ratios = run(FULL_SIZES, "cuda", repeats=5 if args.quick else 20)
        results += cuda_results
        ratios.update(cuda_ratios)
    emit("attention", results, ratios, args.json)


if __name__ == "__main__":
    main()
