"""fusion.cost: parameters and FLOPs of a model at an input size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.cost import count_flops, count_parameters, model_cost


class TwoModal(nn.Module):
    """rgb and depth through one 3x3 convolution each (no bias), summed, then a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.rgb = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.depth = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"semseg": self.head(self.rgb(x["rgb"]) + self.depth(x["depth"])), "aux": {}}


def test_flops_are_two_per_multiply_add_at_the_given_size():
    model = TwoModal().train()
    h, w = 8, 10
    macs = (4 * 3 * 9 + 4 * 1 * 9 + 2 * 4) * h * w
    assert count_flops(model, ["rgb", "depth"], (h, w)) == 2 * macs
    assert model.training  # the mode is restored
    assert count_parameters(model) == 4 * 3 * 9 + 4 * 9 + 2 * 4 + 2
    assert model_cost(model, ["rgb", "depth"], (2 * h, w)) == {"params": 154, "flops": 4 * macs}


def test_bad_modality_or_size_is_refused():
    with pytest.raises(ValueError, match=r"unknown modality \['hha'\]"):
        count_flops(TwoModal(), ["rgb", "hha"], (8, 8))
    with pytest.raises(ValueError, match=r"input size must be positive, got \(0, 8\)"):
        count_flops(TwoModal(), ["rgb", "depth"], (0, 8))


def test_a_registered_model_is_counted():
    from fusion import build_model

    model = build_model(
        {"name": "single_task", "tasks": ["semseg"], "modalities": ["rgb"], "num_classes": 5, "width": 0.125}
    )
    cost = model_cost(model, ["rgb"], (64, 80))
    assert cost["params"] == sum(p.numel() for p in model.parameters()) and cost["flops"] > 0
    assert count_flops(model, ["rgb"], (128, 160)) == pytest.approx(4 * cost["flops"], rel=0.05)
