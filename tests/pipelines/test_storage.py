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


def test_a_storage_path_with_credentials_names_each_checkpoint_with_its_bucket_once():
    import pyarrow.fs

    from pipelines.track.redact import redact_url_password

    # What Ray Train's checkpoint paths look like for such a storage path: pyarrow's path, bucket first.
    _, path = pyarrow.fs.FileSystem.from_uri("s3://KEY:SECRET@bucket/rr?region=us-east-1")
    assert path == "bucket/rr"
    creds = "s3://KEY:SECRET@bucket/rr"
    assert checkpoint_uri(creds, "bucket/rr/run/checkpoint_1") == "s3://KEY:SECRET@bucket/rr/run/checkpoint_1"
    assert (
        checkpoint_uri(creds + "?region=us-east-1", path + "/run/c")
        == "s3://KEY:SECRET@bucket/rr/run/c?region=us-east-1"
    )
    assert checkpoint_uri("s3://KEY:p@ss@bucket/rr", "bucket/rr/c") == "s3://KEY:p@ss@bucket/rr/c"  # "@" in a secret
    assert checkpoint_uri("s3://KEY:SE/CRET@bucket/rr", "bucket/rr/c") == "s3://KEY:SE/CRET@bucket/rr/c"  # and "/"
    assert checkpoint_uri("s3://bucket/rr", "bucket/rr/c") == "s3://bucket/rr/c"
    assert checkpoint_uri("gs://bucket/rr", "bucket/rr/c") == "gs://bucket/rr/c"
    assert checkpoint_uri("/local/rr", "/local/rr/c") == "/local/rr/c"
    assert join(creds, "run", "x.json") == "s3://KEY:SECRET@bucket/rr/run/x.json"
    # Where it is written, it is redacted.
    assert redact_url_password(checkpoint_uri(creds, "bucket/rr/c")) == "s3://KEY:***@bucket/rr/c"


def test_a_redacted_checkpoint_uri_gets_the_storage_paths_credentials_back():
    from pipelines.track.redact import redact_url_password, restore_secrets

    storage = "s3://KEY:SE%2FCRET@bucket/rr?endpoint_override=minio:9000&secret_key=XYZ"
    full = checkpoint_uri(storage, "bucket/rr/run/c")
    shown = redact_url_password(full)
    assert shown == "s3://KEY:***@bucket/rr/run/c?endpoint_override=minio:9000&secret_key=***"
    assert restore_secrets(shown, storage) == full
    assert restore_secrets(shown, "s3://KEY:SE%2FCRET@other/rr") == shown  # another bucket: left alone
    assert restore_secrets(shown, "s3://OTHERKEY:X@bucket/rr") == shown  # another access key
    assert restore_secrets("s3://bucket/rr/c", storage) == "s3://bucket/rr/c"  # nothing hidden


def test_credentials_in_the_storage_path_reach_no_param_tag_summary_or_artifact(tmp_path):
    import yaml

    from pipelines.config import flatten
    from pipelines.track.run_record import finish_run, write_outputs
    from pipelines.track.tracker import Tracker, redacted_config

    storage = "s3://AKIAKEY:SECRET/KEY@bucket/ray_results?region=us-east-1&X-Amz-Security-Token=TOKENVALUE"
    shown = "s3://AKIAKEY:***@bucket/ray_results"
    cfg = load_config(
        None,
        [f"checkpoint.storage_path={storage}", "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path}/m.db"],
    )
    best = _memory_checkpoint(tmp_path, "/bucket/ray_results/r/checkpoint_000000", 0, 0.5)
    last = _memory_checkpoint(tmp_path, "/bucket/ray_results/r/checkpoint_000001", 1, 0.25)
    result = SimpleNamespace(
        checkpoint=last,
        metrics={"val/semseg/miou": 0.25, "epoch": 1},
        best_checkpoints=[(best, {"val/semseg/miou": 0.5, "epoch": 0}), (last, {"val/semseg/miou": 0.25, "epoch": 1})],
    )
    tracker = Tracker.create_run(cfg.tracking.uri, "e", "r", {"fusionpipe.storage": storage})
    tracker.log_params(flatten(cfg.model_dump(mode="json")))
    summary = finish_run(cfg, tracker, result, "r", False)
    query = "?region=us-east-1&X-Amz-Security-Token=***"
    assert summary["best_checkpoint"] == f"{shown}/r/checkpoint_000000{query}"
    assert summary["last_checkpoint"] == f"{shown}/r/checkpoint_000001{query}"
    write_outputs(summary, str(tmp_path / "summary.json"), None)
    run = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(tracker.run_id)
    assert run.data.tags["fusionpipe.best_checkpoint"] == summary["best_checkpoint"]
    assert run.data.tags["fusionpipe.storage"] == shown + query
    assert run.data.params["checkpoint.storage_path"] == shown + query
    config_artifact = yaml.safe_dump(redacted_config(cfg))  # what open_run logs as config.yaml
    assert yaml.safe_load(config_artifact)["checkpoint"]["storage_path"] == shown + query
    written = [json.dumps([run.data.tags, run.data.params, summary]), (tmp_path / "summary.json").read_text()]
    for text in [*written, config_artifact]:
        assert "SECRET" not in text and "TOKENVALUE" not in text and "bucket/bucket" not in text


def test_evaluate_opens_a_redacted_uri_with_the_configs_credentials_and_reports_it_redacted(
    tmp_path, smoke_shards, monkeypatch
):
    from pipelines.analysis import evaluate as ev
    from pipelines.checkpoints import CheckpointError

    opened = []

    def missing(uri, dest):
        opened.append(uri)
        raise CheckpointError(f"{uri}: no such checkpoint directory")

    monkeypatch.setattr(ev, "copy_to_local", missing)
    cfg = load_config(
        None,
        [
            f"data.shards={smoke_shards}",
            f"tracking.uri=sqlite:///{tmp_path}/m.db",
            "checkpoint.storage_path=s3://KEY:SECRET@bucket/rr",
        ],
    )
    with pytest.raises(CheckpointError) as e:
        ev.run_evaluate(cfg, checkpoint="s3://KEY:***@bucket/rr/r/checkpoint_000003")
    assert opened == ["s3://KEY:SECRET@bucket/rr/r/checkpoint_000003"]
    assert str(e.value) == "s3://KEY:***@bucket/rr/r/checkpoint_000003: no such checkpoint directory"


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
