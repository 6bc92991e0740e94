"""Faults the Ray tests inject into training runs, as epoch hooks (``pipelines.train.worker.EpochHook``):
``run_training(cfg, epoch_hooks=[ExitOnce(...)])`` or ``run_tune(..., epoch_hooks=[...])``.

The hooks are pickled by reference and run in Ray workers, which import this module again: the
repository root is on their path, as for the config plugin ``tests.pipelines.elevation_plugin``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ExitOnce:
    """At the start of ``epoch``, rank ``rank`` exits hard (no exception, no clean-up: a dead worker), once:
    it writes ``marker`` first, and does nothing while ``marker`` exists."""

    epoch: int
    rank: int
    marker: str

    def __call__(self, epoch: int, rank: int, model: torch.nn.Module) -> None:
        if epoch == self.epoch and rank == self.rank and not Path(self.marker).exists():
            Path(self.marker).write_text(f"failed at epoch {epoch} rank {rank}\n")
            os._exit(1)


@dataclass(frozen=True)
class NanHead:
    """At the start of ``epoch``, on every rank, fills the parameters of ``task``'s output head
    (``heads.<task>.``) with NaN: the next loss of that task is not finite."""

    epoch: int
    task: str

    def __call__(self, epoch: int, rank: int, model: torch.nn.Module) -> None:
        if epoch != self.epoch:
            return
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f"heads.{self.task}." in name:
                    param.fill_(float("nan"))
