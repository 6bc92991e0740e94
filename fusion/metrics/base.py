"""Exactly mergeable metric state: every metric is a flat float64 vector of sums.

A metric never stores means: its state is counts and sums, so the result over a dataset is the
same whether it is accumulated in one pass, in several batches, or on several DDP ranks whose
``state()`` vectors are summed with ``all_reduce`` and loaded back with ``load_state``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Metric(ABC):
    """Base class: subclasses set ``self._state`` (1-D float64) in ``__init__`` and add to it in ``update``."""

    _state: Tensor

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch's sums to the state."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metric values from the accumulated sums."""

    def state(self) -> Tensor:
        return self._state.clone()

    def load_state(self, state: Tensor) -> None:
        state = torch.as_tensor(state)
        if state.shape != self._state.shape:
            raise ValueError(
                f"{type(self).__name__}.load_state: expected a state of shape {tuple(self._state.shape)}, "
                f"got {tuple(state.shape)}"
            )
        self._state = state.detach().to(device="cpu", dtype=torch.float64).clone()

    def merge(self, other: Metric) -> None:
        """Add another metric's sums to this one (e.g. a second shard evaluated elsewhere)."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.load_state(self._state + other.state())

    def reset(self) -> None:
        self._state = torch.zeros_like(self._state)

    def _add(self, values: Tensor) -> None:
        self._state += values.detach().to(device="cpu", dtype=torch.float64)
