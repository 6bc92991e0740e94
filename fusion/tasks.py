"""The task dict: every dense-prediction task that models, losses and metrics know, in one place.

A :class:`Task` says how many channels its prediction has, which loss trains it, which metric scores
it, and which of that metric's numbers enters the multi-task performance Δm (and in which
direction). The built-in tasks are those of the MTI-Net and PAD-Net papers: ``semseg``, ``depth``,
``normals``, ``edge`` (NYUD-v2) plus ``parts`` and ``sal`` (PASCAL-Context); they are defined in
:mod:`fusion.builtin_tasks`, which ``import fusion`` registers first. More are added with
:func:`register_task`; from then on configs may name them, the model heads get their channel count,
:class:`fusion.losses.MultiTaskLoss` trains them and :class:`fusion.metrics.MetricSet` scores them.

``TASKS`` is a live, ordered view of the registered names, so ``"x" in TASKS`` and
``", ".join(TASKS)`` always reflect the current registry. To train a new task from shards, its
targets also need a shard member (``datasets.codec.register_member``); a config's ``plugins`` list
imports the module that registers both, on the driver and on every Ray worker (docs/models.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

LossFactory = Callable[..., Callable[[Tensor, Tensor], Tensor]]
# Returns a fusion.metrics.base.Metric; named loosely here because fusion.metrics looks tasks up in this
# module, which therefore imports neither metrics nor losses.
MetricFactory = Callable[..., Any]


@dataclass(frozen=True)
class Task:
    """``channels``: an int, or ``"num_classes"``/``"num_parts"`` to take that field of the model config.

    ``loss(**options)`` returns ``fn(pred, target) -> scalar``; ``metric(**options)`` returns a
    :class:`fusion.metrics.base.Metric`. Both receive every option (``ohem``, ``ohem_thresh``,
    ``ohem_min_kept``, ``edge_pos_weight``; ``num_classes``, ``num_parts``, ``edge_tolerance_px``,
    ``edge_max_dist``, ``miou_classes``, ``edge_protocol``) and take what they need. ``delta_m``: ``(metric name, "higher" | "lower")``.
    """

    name: str
    channels: int | Literal["num_classes", "num_parts"]
    loss: LossFactory
    metric: MetricFactory
    delta_m: tuple[str, Literal["higher", "lower"]] | None = None


TASK_REGISTRY: dict[str, Task] = {}


class _TaskNames(Sequence[str]):
    """The registered task names, in registration order, always current."""

    def __getitem__(self, i: Any) -> Any:
        return list(TASK_REGISTRY)[i]

    def __len__(self) -> int:
        return len(TASK_REGISTRY)

    def __iter__(self) -> Iterator[str]:
        return iter(list(TASK_REGISTRY))

    def __contains__(self, name: object) -> bool:
        return name in TASK_REGISTRY

    def __repr__(self) -> str:
        return f"TASKS{tuple(TASK_REGISTRY)}"


TASKS: Sequence[str] = _TaskNames()


def register_task(task: Task, replace: bool = False) -> Task:
    """Add ``task`` to the task dict; a second task of the same name is an error unless ``replace``."""
    if not task.name or not task.name.isidentifier():
        raise ValueError(f"register_task: task name must be an identifier, got {task.name!r}")
    if task.name in TASK_REGISTRY and not replace:
        raise ValueError(f"register_task: task {task.name!r} is already registered (pass replace=True to redefine it)")
    if isinstance(task.channels, int) and task.channels < 1:
        raise ValueError(f"register_task: task {task.name!r}: channels must be >= 1, got {task.channels}")
    if isinstance(task.channels, str) and task.channels not in ("num_classes", "num_parts"):
        raise ValueError(
            f"register_task: task {task.name!r}: channels must be an int, 'num_classes' or "
            f"'num_parts', got {task.channels!r}"
        )
    if task.delta_m is not None and task.delta_m[1] not in ("higher", "lower"):
        raise ValueError(
            f"register_task: task {task.name!r}: delta_m direction must be 'higher' or 'lower', got {task.delta_m[1]!r}"
        )
    TASK_REGISTRY[task.name] = task
    return task


def get_task(name: str, where: str = "task") -> Task:
    if name not in TASK_REGISTRY:
        raise ValueError(f"{where}: unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASK_REGISTRY[name]


def delta_m_directions() -> dict[str, str]:
    """``{"task/metric": "higher" | "lower"}`` of every registered task that enters Δm."""
    return {f"{t.name}/{t.delta_m[0]}": t.delta_m[1] for t in TASK_REGISTRY.values() if t.delta_m}


class _DeltaMDirections(Mapping[str, str]):
    """:func:`delta_m_directions` as a live mapping (``fusion.metrics.DELTA_M_DIRECTIONS``)."""

    def __getitem__(self, key: str) -> str:
        return delta_m_directions()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(delta_m_directions())

    def __len__(self) -> int:
        return len(delta_m_directions())

    def __repr__(self) -> str:
        return f"DELTA_M_DIRECTIONS({delta_m_directions()})"


DELTA_M_DIRECTIONS: Mapping[str, str] = _DeltaMDirections()
