"""What a model costs: its parameters and the FLOPs of one forward pass at a given input size.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one sample (batch 1) in eval mode,
without gradients: each multiply-add is 2 FLOPs (PyTorch's convention), and only the operations it has
formulas for are counted (convolutions, matrix products, attention), which dominate dense-prediction
networks; element-wise operations, normalisation and resampling are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fusion.config import MODALITY_CHANNELS


def count_parameters(model: nn.Module) -> int:
    """Every parameter of the model, trainable or not (shared parameters once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, modalities: Sequence[str], size: tuple[int, int]) -> int:
    """FLOPs of one forward pass of ``model`` on one sample of ``size`` (H, W) with the given modalities."""
    unknown = [m for m in modalities if m not in MODALITY_CHANNELS]
    if unknown:
        raise ValueError(f"unknown modality {unknown}; known: {sorted(MODALITY_CHANNELS)}")
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"input size must be positive, got {size}")
    inputs = {m: torch.zeros(1, MODALITY_CHANNELS[m], h, w) for m in modalities}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, modalities: Sequence[str], size: tuple[int, int]) -> dict[str, int]:
    """``{"params": ..., "flops": ...}`` of ``model`` at input ``size`` (H, W)."""
    return {"params": count_parameters(model), "flops": count_flops(model, modalities, size)}
