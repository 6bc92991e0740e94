"""Per-class sums under DDP: two gloo ranks, each evaluating half the batches, end with the metric of the
whole set (the per-class state is all-reduced with the other metric sums in steps.evaluate)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fusion.metrics import PerClassMetric
from pipelines.train.steps import evaluate

TASKS = ["semseg", "depth", "normals"]
C = 4


class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, C + 4, 1)

    def forward(self, inputs):
        y = self.conv(inputs["rgb"])
        return {"semseg": y[:, :C], "depth": y[:, C : C + 1].abs(), "normals": y[:, C + 1 :]}


def _batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(4):
        labels = torch.randint(0, C, (2, 6, 5), generator=g)
        labels[0, 0] = 255
        out.append(
            {
                "inputs": {"rgb": torch.randn(2, 3, 6, 5, generator=g)},
                "targets": {
                    "semseg": labels,
                    "depth": torch.rand(2, 1, 6, 5, generator=g),
                    "normals": torch.randn(2, 3, 6, 5, generator=g),
                },
            }
        )
    return out


def _rank(rank: int, world: int, store: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        per_class = PerClassMetric(C, TASKS)
        metrics = evaluate(Heads(), _batches()[rank::world], TASKS, C, torch.device("cpu"), per_class=per_class)
        results[rank] = (per_class.state(), metrics)
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_per_class_sums_of_one_pass(tmp_path):
    whole = PerClassMetric(C, TASKS)
    one = evaluate(Heads(), _batches(), TASKS, C, torch.device("cpu"), per_class=whole)
    # spawn, not fork: a forked copy of this process (which may hold the session's Ray driver) breaks the
    # driver's connection to the Ray cluster.
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
        (state0, metrics0), (state1, metrics1) = results[0], results[1]
    assert torch.equal(state0, state1)  # every rank holds the sum
    # The counts (confusion matrix, valid pixels per class) exactly; the error sums up to the order of
    # their additions.
    n = C * C
    counts = torch.cat([torch.arange(n), n + torch.arange(C), n + 2 * C + torch.arange(C)])
    assert torch.equal(state0[counts], whole.state()[counts])
    assert torch.allclose(state0, whole.state(), rtol=1e-6, atol=0)
    assert metrics0 == pytest.approx(one) and metrics1 == pytest.approx(one)
    assert state0[: C * C].sum() == sum(int((b["targets"]["semseg"] != 255).sum()) for b in _batches())
