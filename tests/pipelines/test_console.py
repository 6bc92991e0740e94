"""What a training run prints: its epoch line, and the Ray lines it keeps off the console."""

import logging
import os
from types import SimpleNamespace

import pytest

from pipelines.compat import LOCAL_RAY_ENV, quiet_ray_train_reports
from pipelines.train.driver import init_ray
from pipelines.train.worker import epoch_line


def test_epoch_line_shows_loss_checkpoint_metric_headlines_and_speed():
    metrics = {
        "train/loss/total": 10.19118,
        "val/semseg/miou": 0.19495,
        "val/depth/rmse": 0.95633,
        "val/normals/mean": 28.8907,
        "val/edge/odsF": 0.65131,
        "val/semseg/pixel_acc": 0.71,
        "train/samples_per_s": 11.0707,
        "train/epoch_s": 53.47,
        "lr": 0.0014,
    }
    line = epoch_line(metrics, epoch=3, epochs=12, checkpoint_metric="val/semseg/miou")
    assert line == (
        "epoch 4/12  loss 10.1912  val/semseg/miou 0.1950  val/depth/rmse 0.9563  "
        "val/normals/mean 28.8907  val/edge/odsF 0.6513  11.1 samples/s  53 s"
    )


def test_epoch_line_puts_a_non_headline_checkpoint_metric_first_and_skips_absent_tasks():
    metrics = {"train/loss/total": 1.5, "val/depth/rmse": 0.5, "val/depth/abs_rel": 0.25}
    line = epoch_line(metrics, epoch=0, epochs=2, checkpoint_metric="val/depth/abs_rel")
    assert line == "epoch 1/2  loss 1.5000  val/depth/abs_rel 0.2500  val/depth/rmse 0.5000"


def test_ray_train_report_logger_is_raised_to_warning():
    from ray.train.v2._internal.execution import context as ray_train_context

    reporter = ray_train_context.logger
    before = reporter.level
    try:
        reporter.setLevel(logging.INFO)
        assert reporter.isEnabledFor(logging.INFO)
        quiet_ray_train_reports()
        assert reporter.level == logging.WARNING
        assert not reporter.isEnabledFor(logging.INFO)
    finally:
        reporter.setLevel(before)


@pytest.mark.parametrize("user_value, expected", [(None, "0"), ("1", "1")])
def test_local_ray_starts_without_the_preemption_watcher_unless_the_user_asks(monkeypatch, user_value, expected):
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        ray, "init", lambda **kw: seen.update(kw, watcher=os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"))
    )
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    if user_value is not None:
        monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", user_value)
    init_ray(SimpleNamespace(train=SimpleNamespace(workers=2, cpus_per_worker=1)))
    assert LOCAL_RAY_ENV == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert seen["watcher"] == expected  # in the environment the raylet and workers inherit
    assert seen["dashboard_host"] == "127.0.0.1"


def test_joining_a_cluster_leaves_the_environment_alone(monkeypatch):
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:10001")
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    init_ray(SimpleNamespace(train=SimpleNamespace(workers=2, cpus_per_worker=1)))
    assert seen["address"] == "ray://127.0.0.1:10001"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ
