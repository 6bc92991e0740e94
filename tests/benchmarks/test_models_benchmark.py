"""benchmarks/models.py: the FLOP ratio counted on the meta device is the one counted by running."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.models import mtinet_vs_single_tasks  # noqa: E402


@pytest.mark.parametrize("backbone", ["hrnet18", "hrnet48"])
def test_meta_device_counts_the_same_flops_as_running(backbone):
    on_cpu = mtinet_vs_single_tasks(backbone, width=0.125)
    assert mtinet_vs_single_tasks(backbone, width=0.125, device="meta") == on_cpu
    # MTI-Net adds its task-interaction decoder to one backbone; four single-task nets repeat it.
    assert 0.25 < on_cpu < 1.0
