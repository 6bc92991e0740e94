"""benchmarks/train.py's GPU step profile: the peak table, and a stated skip without CUDA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.train import bf16_peak, main  # noqa: E402


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 SXM5 80GB", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("Some Future GPU", None),
    ],
)
def test_bf16_peak_by_card_name(name, peak):
    assert bf16_peak(name) == peak


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without CUDA")
def test_only_cuda_without_cuda_reports_the_skip_and_its_reason(capsys):
    main(["--only", "cuda", "--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "train" and report["ratios"] == {}
    assert report["results"] == [
        {"setup": "GPU step profile", "skipped": "no CUDA on this machine: the GPU step profile is not measured"}
    ]
