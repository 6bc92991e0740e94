"""benchmarks/augment.py --quick: the JSON's structure, and values that follow from each other."""

import json
import math

import torch

from benchmarks.augment import main


def test_quick_run_reports_both_worker_rates_the_ratio_and_the_gpu_part(capsys):
    main(["--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "augment" and set(report) == {"benchmark", "machine", "results", "ratios"}
    by = {r["method"]: r for r in report["results"]}
    assert set(by) == {"cpu_augment", "decode_only", "gpu_augment"}
    for name in ("cpu_augment", "decode_only"):
        r = by[name]
        assert r["samples_per_pass"] == 16 and r["passes"] == 2
        assert r["samples_per_cpu_s"] > 0 and r["samples_per_wall_s"] > 0
        assert math.isclose(r["cpu_ms_per_sample"], 1000 / r["samples_per_cpu_s"])
    ratio = report["ratios"]["worker_decode_only_vs_cpu_augment@480x640"]
    assert math.isclose(ratio, by["decode_only"]["samples_per_cpu_s"] / by["cpu_augment"]["samples_per_cpu_s"])
    if torch.cuda.is_available():
        assert by["gpu_augment"]["ms_per_batch"] > 0 and by["gpu_augment"]["batch"] == 8
        assert report["ratios"]["gpu_augment_ms_per_batch@480x640:cuda"] == by["gpu_augment"]["ms_per_batch"]
    else:
        assert by["gpu_augment"]["skipped"].startswith("no CUDA on this machine")
        assert set(report["ratios"]) == {"worker_decode_only_vs_cpu_augment@480x640"}
