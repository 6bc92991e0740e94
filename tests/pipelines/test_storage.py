"""Checkpoint storage on an object store: the run-state file, the finished run's checkpoints, evaluate.

The object store is an in-memory fsspec filesystem behind pyarrow (what Ray Train writes through),
and ``file://`` URIs, which take the same URI code paths as ``s3://`` without a network.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.storage import checkpoint_uri, copy_to_local, join, read_text, write_text


def test_small_files_on_a_path_and_a_uri(tmp_path):
    for base in (str(tmp_path / "local"), f"file://{tmp_path}/remote"):
        loc = join(base, "run", "fusionpipe-run.json")
        assert read_text(loc) is None
        write_text(loc, '{"a": 1}')
        write_text(loc, '{"a": 2}')  # replaced whole
        assert read_text(loc) == '{"a": 2}'
    assert (tmp_path / "remote" / "run" / "fusionpipe-run.json").read_text() == '{"a": 2}'
    assert not list((tmp_path / "local" / "run").glob(".*"))  # no temp file left behind
    assert join("s3://bucket/ray_results/", "run", "x.json") == "s3://bucket/ray_results/run/x.json"
    # A MinIO store is named with a query: the parts go on the path, the query stays.
    assert (
        join("s3://b/r?endpoint_override=minio:9000", "run", "x.json")
        == "s3://b/r/run/x.json?endpoint_override=minio:9000"
    )


def test_a_checkpoint_on_an_object_store_is_named_with_its_scheme():
    assert checkpoint_uri("s3://bucket/r", "bucket/r/run/checkpoint_1") == "s3://bucket/r/run/checkpoint_1"
    assert checkpoint_uri("gs://bucket/r", "bucket/r/c") == "gs://bucket/r/c"
    assert checkpoint_uri("file:///x/r", "/x/r/c") == "/x/r/c"
    assert checkpoint_uri("/x/r", "/x/r/c") == "/x/r/c"
    assert checkpoint_uri("s3://b/r?endpoint_override=minio:9000", "b/r/c") == "s3://b/r/c?endpoint_override=minio:9000"
    assert checkpoint_uri("hdfs://namenode:8020/r", "/r/c") == "hdfs://namenode:8020/r/c"  # a host, then its path


def test_copy_to_local_names_a_missing_checkpoint(tmp_path):
    from pipelines.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match=r"file://.*/nope: no such checkpoint directory"):
        copy_to_local(f"file://{tmp_path}/nope", tmp_path / "out")


def _memory_checkpoint(tmp_path: Path, key: str, epoch: int, miou: float):
    """A Ray checkpoint at ``key`` inside an in-memory object store, as Ray Train returns one from s3
    (fsspec's memory filesystem roots its keys at /)."""
    import pyarrow.fs
    from fsspec.implementations.memory import MemoryFileSystem
    from ray.train import Checkpoint

    from pipelines.checkpoints import save_checkpoint

    local = save_checkpoint(
        tmp_path / f"local-{epoch}",
        torch.nn.Linear(2, 2),
        {"epoch": epoch, "metrics": {"val/semseg/miou": miou, "epoch": epoch}},
    )
    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(MemoryFileSystem()))
    fs.create_dir(key, recursive=True)
    pyarrow.fs.copy_files(str(local), key, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    return Checkpoint(key, filesystem=fs)


def test_a_run_whose_checkpoints_are_on_an_object_store_finishes_and_logs_them(tmp_path):
    from pipelines.track.run_record import finish_run
    from pipelines.track.tracker import Tracker

    cfg = load_config(
        None,
        [
            "checkpoint.storage_path=s3://bucket/ray_results",
            "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp_path}/m.db",
        ],
    )
    best = _memory_checkpoint(tmp_path, "/bucket/ray_results/r/checkpoint_000000", 0, 0.5)
    last = _memory_checkpoint(tmp_path, "/bucket/ray_results/r/checkpoint_000001", 1, 0.25)
    result = SimpleNamespace(
        checkpoint=last,
        metrics={"val/semseg/miou": 0.25, "epoch": 1},
        best_checkpoints=[(best, {"val/semseg/miou": 0.5, "epoch": 0}), (last, {"val/semseg/miou": 0.25, "epoch": 1})],
    )
    tracker = Tracker.create_run(cfg.tracking.uri, "e", "r", {})
    summary = finish_run(cfg, tracker, result, "r", False)
    assert summary["best_checkpoint"] == "s3://bucket/ray_results/r/checkpoint_000000"
    assert summary["last_checkpoint"] == "s3://bucket/ray_results/r/checkpoint_000001"
    assert summary["epochs"] == 2 and summary["final_metrics"] == {"val/semseg/miou": 0.25}
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fusionpipe.best_checkpoint"] == summary["best_checkpoint"]
    assert run.data.tags["fusionpipe.best_epoch"] == "0"
    logged = json.loads(
        Path(client.download_artifacts(tracker.run_id, "checkpoints/best/meta.json", str(tmp_path / "dl"))).read_text()
    )
    assert logged["epoch"] == 0


def test_the_run_state_file_lives_beside_checkpoints_on_a_uri(tmp_path, smoke_shards):
    from pipelines.track.run_record import open_run

    storage = f"file://{tmp_path}/store"
    cfg = load_config(
        None,
        [
            f"data.shards={smoke_shards}",
            f"tracking.uri=sqlite:///{tmp_path}/m.db",
            f"checkpoint.storage_path={storage}",
        ],
    ).resolved_paths()
    assert cfg.checkpoint.storage_path == storage  # a URI is not made a local path
    manifest = json.loads((smoke_shards / "manifest.json").read_text())
    first, resumed = open_run(cfg, "r", manifest)
    assert not resumed
    state = json.loads((tmp_path / "store" / "r" / "fusionpipe-run.json").read_text())
    assert state["mlflow_run_id"] == first.run_id
    again, resumed = open_run(cfg, "r", manifest)  # a resubmitted job finds the same MLflow run
    assert resumed and again.run_id == first.run_id


def test_evaluate_reads_a_checkpoint_given_as_a_uri(tmp_path, smoke_shards):
    from fusion import build_model
    from pipelines.analysis.evaluate import run_evaluate
    from pipelines.checkpoints import save_checkpoint
    from pipelines.config import model_config
    from tests import REPO_ROOT

    cfg = load_config(
        REPO_ROOT / "configs" / "smoke.yaml", [f"data.shards={smoke_shards}", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    )
    manifest = json.loads((smoke_shards / "manifest.json").read_text())
    mcfg = model_config(cfg.resolved_paths(), len(manifest["classes"]))
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "store" / "ck", build_model(mcfg), {"epoch": 4, "model_config": mcfg, "classes": manifest["classes"]}
    )
    by_uri = run_evaluate(cfg, checkpoint=f"file://{tmp_path}/store/ck")
    by_path = run_evaluate(cfg, checkpoint=str(tmp_path / "store" / "ck"))
    assert by_uri["epoch"] == 4 and by_uri["metrics"] == by_path["metrics"]


def test_when_the_last_checkpoint_is_the_best_it_is_fetched_once(tmp_path, caplog):
    from pipelines.track.run_record import finish_run
    from pipelines.track.tracker import Tracker

    cfg = load_config(
        None,
        [
            "checkpoint.storage_path=s3://bucket/ray_results",
            "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp_path}/m.db",
        ],
    )
    last = _memory_checkpoint(tmp_path, "/bucket/ray_results/r/checkpoint_000000", 0, 0.5)
    # Ray's Result hands out the same Checkpoint object as the last and the best one.
    result = SimpleNamespace(
        checkpoint=last,
        metrics={"val/semseg/miou": 0.5, "epoch": 0},
        best_checkpoints=[(last, {"val/semseg/miou": 0.5, "epoch": 0})],
    )
    downloads = []
    original = type(last).to_directory
    type(last).to_directory = lambda self, *a, **k: downloads.append(self.path) or original(self, *a, **k)
    try:
        with caplog.at_level("WARNING"):
            summary = finish_run(cfg, Tracker.create_run(cfg.tracking.uri, "e", "r", {}), result, "r", False)
    finally:
        type(last).to_directory = original
    assert summary["best_checkpoint"] == summary["last_checkpoint"] == "s3://bucket/ray_results/r/checkpoint_000000"
    assert len(downloads) == 1 and "Could not remove" not in caplog.text


def test_an_error_a_retry_cannot_fix_is_recorded_beside_checkpoints_on_a_uri(tmp_path):
    from pipelines.storage import remove
    from pipelines.train.steps import NonFiniteLossError
    from pipelines.train.worker import fatal_path, train_loop_per_worker

    storage = f"file://{tmp_path}/store"
    fatal = fatal_path(storage, "r")
    assert fatal == f"file://{tmp_path}/store/r/fusionpipe-fatal.json"
    # The first attempt fails on a config that this worker cannot validate and records why.
    config = {"storage_path": storage, "run_name": "r", "cfg": {"model": {"name": 42}}}
    with pytest.raises(Exception, match="does not validate on Ray worker node") as first:
        train_loop_per_worker(config)
    recorded = json.loads((tmp_path / "store" / "r" / "fusionpipe-fatal.json").read_text())
    assert recorded["type"] == "ConfigError" and "does not validate" in recorded["message"]
    # A retried worker raises the recorded error at once, as its own class, without reading its config.
    write_text(fatal, json.dumps({"type": "NonFiniteLossError", "message": "epoch 3: task(s) depth"}))
    with pytest.raises(NonFiniteLossError, match=r"epoch 3: task\(s\) depth"):
        train_loop_per_worker({"storage_path": storage, "run_name": "r"})
    assert type(first.value).__name__ == "ConfigError"
    remove(fatal)  # what a new attempt under the same run name does first
    remove(fatal)  # and again: no error when there is none
    assert read_text(fatal) is None
