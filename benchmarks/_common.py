"""Shared output for benchmark scripts (docs/benchmarks.md, the benchmark contract)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any


def parse_args(
    description: str, devices: bool = False, argv: list[str] | None = None, cuda_optional: bool = False
) -> argparse.Namespace:
    """``--quick`` and ``--json``; with ``devices``, also ``--only cpu|cuda`` for scripts that measure on
    the CPU and, when CUDA is present, on the GPU as well. ``cuda_optional``: ``--only cuda`` without CUDA
    is no error; the script reports its GPU measurements as skipped, with the reason."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes; finishes in under a minute")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    if devices:
        p.add_argument(
            "--only",
            choices=("cpu", "cuda"),
            default=None,
            help="measure on this device alone (default: the CPU, and CUDA too when present); "
            "--only cuda without CUDA is an error",
        )
    args = p.parse_args(argv)
    if devices and args.only == "cuda" and not cuda_optional:
        import torch

        if not torch.cuda.is_available():
            p.error("--only cuda: CUDA is not available on this machine")
    return args


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def emit(name: str, results: list[dict[str, Any]], ratios: dict[str, float], as_json: bool) -> None:
    report = {"benchmark": name, "machine": machine(), "results": results, "ratios": ratios}
    if as_json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
