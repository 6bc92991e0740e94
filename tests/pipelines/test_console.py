"""What a training run prints: its epoch line, and the Ray lines it keeps off the console."""

import logging
import os
from pathlib import Path
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
    # A new local instance, never the cluster that a `ray start` on this machine recorded.
    assert seen["address"] == "local" and seen["num_cpus"] == max(os.cpu_count() or 1, 2)


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


@pytest.mark.parametrize("ray_address", [None, "local"])
def test_a_cluster_recorded_by_ray_start_is_named_and_not_joined(monkeypatch, tmp_path, capsys, ray_address):
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    if ray_address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379")  # its head may be long gone
    init_ray(SimpleNamespace(train=SimpleNamespace(workers=3, cpus_per_worker=2)))
    assert seen["address"] == "local" and seen["num_cpus"] == max(os.cpu_count() or 1, 6)
    assert capsys.readouterr().err == (
        "note: starting a local Ray for this command, not joining the Ray cluster at 10.1.2.3:6379 that `ray "
        "start` recorded on this machine (it may have stopped since); to run on that cluster, set RAY_ADDRESS=auto\n"
    )


@pytest.mark.integration
def test_a_stale_ray_start_address_file_does_not_stop_a_local_run():
    """A real start: Ray's temp dir (RAY_TMPDIR, short: Ray's socket paths must fit 107 bytes) holds the
    address file of a `ray start` head that is gone; the command's Ray starts anyway, with its CPUs."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from tests import REPO_ROOT

    temp = tempfile.mkdtemp(prefix="fp", dir="/tmp")
    try:
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
        code = (
            "import ray\n"
            "from types import SimpleNamespace as NS\n"
            "from pipelines.train.driver import init_ray\n"
            "init_ray(NS(train=NS(workers=3, cpus_per_worker=1)))\n"
            "print('CPU', ray.cluster_resources()['CPU'])\n"
            "ray.shutdown()\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0")
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip().splitlines()[-1] == f"CPU {float(max(os.cpu_count() or 1, 3))}"
        assert "not joining the Ray cluster at 127.0.0.1:1" in out.stderr
    finally:
        shutil.rmtree(temp, ignore_errors=True)
