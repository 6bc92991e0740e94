"""The task dict (fusion.tasks): a task registered once is known to configs, heads, losses and metrics."""

import pytest
import torch

import fusion
from fusion.losses import MultiTaskLoss
from fusion.metrics import DELTA_M_DIRECTIONS, MetricSet, delta_m
from fusion.tasks import TASK_REGISTRY, TASKS, Task, register_task


def _height_loss(**_):
    from fusion.losses import depth_l1

    return depth_l1


def _height_metric(**_):
    from fusion.metrics import DepthMetric

    return DepthMetric()


@pytest.fixture
def height_task():
    task = register_task(Task("height", 1, _height_loss, _height_metric, ("rmse", "lower")))
    yield task
    del TASK_REGISTRY["height"]


def test_built_in_tasks_are_the_papers():
    assert list(TASKS)[:4] == ["semseg", "depth", "normals", "edge"] and {"parts", "sal"} <= set(TASKS)
    assert DELTA_M_DIRECTIONS["depth/rmse"] == "lower" and DELTA_M_DIRECTIONS["semseg/miou"] == "higher"


def test_a_registered_task_is_trained_and_scored_everywhere(height_task):
    assert "height" in TASKS and DELTA_M_DIRECTIONS["height/rmse"] == "lower"  # live views
    model = fusion.build_model(
        {"name": "mtl_baseline", "tasks": ["semseg", "height"], "width": 0.125, "num_classes": 3}
    )
    out = model({"rgb": torch.rand(2, 3, 32, 32)})
    assert out["height"].shape == (2, 1, 32, 32)
    targets = {"semseg": torch.randint(0, 3, (2, 32, 32)), "height": torch.rand(2, 1, 32, 32) + 0.5}
    total, parts = MultiTaskLoss(["semseg", "height"], {"height": 2.0})(out, targets, model)
    assert parts["height"].item() == pytest.approx((out["height"] - targets["height"]).abs().mean().item(), rel=1e-5)
    total.backward()
    metrics = MetricSet(["semseg", "height"], num_classes=3)
    metrics.update({"semseg": out["semseg"], "height": targets["height"] * 2}, targets)
    result = metrics.compute()
    assert result["height/rmse"] == pytest.approx(targets["height"].square().mean().sqrt().item(), rel=1e-6)
    assert delta_m({"height/rmse": 0.5}, {"height/rmse": 1.0}) == pytest.approx(50.0)  # lower is better


def test_bad_registrations_are_refused(height_task):
    with pytest.raises(ValueError, match="'height' is already registered"):
        register_task(Task("height", 1, _height_loss, _height_metric))
    with pytest.raises(ValueError, match="channels must be >= 1"):
        register_task(Task("albedo", 0, _height_loss, _height_metric))
    with pytest.raises(ValueError, match="channels must be an int, 'num_classes' or 'num_parts'"):
        register_task(Task("albedo", "rgb", _height_loss, _height_metric))
    with pytest.raises(ValueError, match="must be an identifier"):
        register_task(Task("al bedo", 1, _height_loss, _height_metric))
    with pytest.raises(ValueError, match="direction must be 'higher' or 'lower'"):
        register_task(Task("albedo", 1, _height_loss, _height_metric, ("rmse", "down")))
    assert "albedo" not in TASKS
    register_task(Task("height", 2, _height_loss, _height_metric), replace=True)
    model = fusion.build_model({"name": "single_task", "tasks": ["height"], "width": 0.125})
    assert model.eval()({"rgb": torch.rand(1, 3, 32, 32)})["height"].shape[1] == 2  # the redefined channel count
