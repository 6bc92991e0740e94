"""How a training worker's tracking-store failure reaches the user: as a store error (exit 3) without
the URI's password, however Ray wraps it (no Ray started here)."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException

from pipelines.cli.output import tracking_store_errors
from pipelines.track.tracker import TrackingStoreError, store_error

SECRET_URI = "http://alice:s3cr3t@mlflow.example:5000"


def test_a_worker_store_error_is_raised_again_without_the_password(monkeypatch, tmp_path):
    import pipelines.train.worker as worker

    def dies(config):
        raise MlflowException(f"API request to {SECRET_URI}/api/2.0/mlflow/runs/log-batch failed")

    monkeypatch.setattr(worker, "_train_loop", dies)
    with pytest.raises(TrackingStoreError) as e:
        worker.train_loop_per_worker({"storage_path": str(tmp_path), "run_name": "r"})
    assert "s3cr3t" not in str(e.value) and "http://alice:***@mlflow.example:5000" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # the original text is not chained
    monkeypatch.setattr(worker, "_train_loop", lambda config: (_ for _ in ()).throw(ValueError("not the store")))
    with pytest.raises(ValueError, match="not the store"):
        worker.train_loop_per_worker({"storage_path": str(tmp_path), "run_name": "r"})


def test_store_errors_are_found_inside_ray_train_failures():
    from ray.train.v2.api.exceptions import WorkerGroupError

    worker = TrackingStoreError("API request to http://alice:***@h failed")
    group = WorkerGroupError("rank 0 failed", {0: ValueError("other"), 1: worker})
    assert store_error(group) is worker
    assert store_error(WorkerGroupError("rank 0 failed", {0: ValueError("other")})) is None
    assert store_error(RuntimeError("x")) is None

    @click.command()
    @click.option("--json", "as_json", is_flag=True)
    @tracking_store_errors
    def cmd(as_json):
        raise group

    out = CliRunner().invoke(cmd, ["--json"])
    assert out.exit_code == 3
    assert json.loads(out.stdout)["error"] == "MLflow tracking store: API request to http://alice:***@h failed"
