"""A config plugin (``plugins: [tests.pipelines.elevation_plugin]``) that adds a task end to end:
``elevation``, metres above the floor, trained with an L1 loss like depth and scored like depth.

Importing it registers the task with fusion (channels, loss, metric, Δm direction) and its targets
with the shard format (a 16-bit PNG in millimetres). Ray workers import it again from the config.
"""

from __future__ import annotations

from typing import Any

from datasets.codec import MEMBERS, register_member
from fusion.tasks import TASK_REGISTRY, Task, register_task

NAME = "elevation"


def _loss(**_: Any):
    from fusion.losses import depth_l1

    return depth_l1


def _metric(**_: Any):
    from fusion.metrics.depth import DepthMetric

    return DepthMetric()


def register() -> None:
    register_task(Task(NAME, 1, _loss, _metric, ("rmse", "lower")))
    register_member(NAME, "scalar16", scale=0.001, unit="millimetres")


def unregister() -> None:
    TASK_REGISTRY.pop(NAME, None)
    MEMBERS.pop(NAME, None)


register()
