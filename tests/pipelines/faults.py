"""Faults the Ray tests inject into training runs, as epoch hooks (``pipelines.train.worker.EpochHook``):
``run_training(cfg, epoch_hooks=[ExitOnce(...)])`` or ``run_tune(..., epoch_hooks=[...])``.

The hooks are pickled by reference and run in Ray workers, which import this module again: the
repository root is on their path, as for the config plugin ``tests.pipelines.elevation_plugin``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
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


def _wait_for_file(path: str | None, timeout_s: float) -> None:
    """Return once ``path`` exists (``None``: never; the process is to be killed while it waits); raise
    after ``timeout_s`` seconds, so a test that died leaves no worker waiting for good."""
    deadline = time.monotonic() + timeout_s
    while path is None or not Path(path).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path or 'a kill'} did not come within {timeout_s} s")
        time.sleep(0.05)


def _at_training_batch(model: torch.nn.Module, batch: int, action: Callable[[], None]) -> None:
    """Run ``action`` just before the forward pass of training batch ``batch`` (0-based) of the epoch
    that is starting: the epoch's earlier batches have trained, its later ones have not."""
    seen = 0

    def pre_hook(module: torch.nn.Module, args: object) -> None:
        nonlocal seen
        if not module.training:
            return
        if seen == batch:
            handle.remove()
            action()
        seen += 1

    handle = model.register_forward_pre_hook(pre_hook)


@dataclass(frozen=True)
class SigkillOnce:
    """In ``epoch``, just before training batch ``batch``, rank ``rank`` sends itself SIGKILL (the kernel
    ends it: nothing of the process runs after), once: it writes ``marker`` first, and does nothing while
    ``marker`` exists. With ``after``, it first waits (at most ``timeout_s`` seconds) until that file
    exists: the test's signal that Ray Train has recorded the checkpoint reported before, which a worker
    killed right after its report can otherwise take with it."""

    epoch: int
    rank: int
    batch: int
    marker: str
    after: str | None = None
    timeout_s: float = 300.0

    def __call__(self, epoch: int, rank: int, model: torch.nn.Module) -> None:
        if epoch == self.epoch and rank == self.rank and not Path(self.marker).exists():

            def kill() -> None:
                _wait_for_file(self.after, self.timeout_s)
                Path(self.marker).write_text(f"SIGKILL at epoch {epoch} batch {self.batch} rank {rank}\n")
                os.kill(os.getpid(), signal.SIGKILL)

            _at_training_batch(model, self.batch, kill)


@dataclass(frozen=True)
class HoldOnce:
    """In ``epoch``, just before training batch ``batch``, rank ``rank`` writes ``reached`` and waits until
    ``release`` exists (the test's signal; no ``release``: until the process is killed), at most
    ``timeout_s`` seconds, then raises. Once: nothing happens while ``reached`` exists."""

    epoch: int
    rank: int
    batch: int
    reached: str
    release: str | None = None
    timeout_s: float = 300.0

    def __call__(self, epoch: int, rank: int, model: torch.nn.Module) -> None:
        if epoch == self.epoch and rank == self.rank and not Path(self.reached).exists():

            def hold() -> None:
                Path(self.reached).write_text(f"held at epoch {epoch} batch {self.batch} rank {rank}\n")
                _wait_for_file(self.release, self.timeout_s)

            _at_training_batch(model, self.batch, hold)
