"""Ray Train runs resumed from damaged checkpoints: back to the newest intact checkpoint of the run, and
said so; with none intact, one fatal CheckpointError, not a retry loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.checkpoints import META, MODEL, TRAIN_STATE, CheckpointError, read_meta, verify_checkpoint
from pipelines.train.driver import run_training
from pipelines.train.worker import FALLBACK_TAG

pytestmark = pytest.mark.integration

QUIET = ("tracking.log_model=false", "train.preview_every=0", "checkpoint.keep=5")


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _by_epoch(run_dir: Path) -> dict[int, Path]:
    return {read_meta(p)["epoch"]: p for p in run_dir.glob("checkpoint_*") if p.is_dir()}


def test_a_corrupt_latest_checkpoint_resumes_from_the_previous_intact_one(ray_cluster, tiny_config):
    first = run_training(tiny_config("train.epochs=2", *QUIET), run_name="bitrot")
    run_dir = Path(tiny_config().resolved_paths().checkpoint.storage_path) / "bitrot"
    before = _by_epoch(run_dir)
    assert sorted(before) == [0, 1]
    latest = before[1]
    data = bytearray((latest / MODEL).read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit: torch.load would read it without a word
    (latest / MODEL).write_bytes(bytes(data))

    cfg = tiny_config("train.epochs=3", *QUIET)
    second = run_training(cfg, run_name="bitrot")
    assert second["resumed"] and second["mlflow_run_id"] == first["mlflow_run_id"] and second["epochs"] == 3
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    # The run says which checkpoint it resumed from and why.
    note = run.data.tags[FALLBACK_TAG]
    assert f"{latest} is corrupt: {latest / MODEL}: sha256 mismatch" in note
    assert f"Resuming from {before[0]} (epoch 0), the newest intact checkpoint of the run" in note
    # Epoch 1 ran again: its checkpoint is new, and MLflow keeps one value per epoch (the first one's).
    for key in ("val/semseg/miou", "train/loss/total", "lr"):
        assert _steps(client, run.info.run_id, key) == [0, 1, 2], key
    rerun = [p for p in run_dir.glob("checkpoint_*") if p.is_dir() and p not in before.values()]
    assert sorted(read_meta(p)["epoch"] for p in rerun) == [1, 2]
    # The checkpoints the run names are intact (the damaged one is never logged as the best).
    for which in ("best_checkpoint", "last_checkpoint"):
        assert Path(second[which]) != latest
        verify_checkpoint(second[which])
    assert read_meta(second["last_checkpoint"])["epoch"] == 2


@pytest.mark.timeout(900)  # with retries of a fatal error, max_failures -1 would never end
def test_a_run_whose_checkpoints_are_all_corrupt_fails_once_with_a_checkpoint_error(ray_cluster, tiny_config):
    run_training(tiny_config("train.epochs=2", *QUIET), run_name="all-rotten")
    run_dir = Path(tiny_config().resolved_paths().checkpoint.storage_path) / "all-rotten"
    ckpts = _by_epoch(run_dir)
    (ckpts[1] / TRAIN_STATE).write_bytes((ckpts[1] / TRAIN_STATE).read_bytes()[:50])  # truncated
    (ckpts[0] / META).write_text("{not json")

    cfg = tiny_config("train.epochs=3", "failure.max_failures=-1", *QUIET)
    with pytest.raises(
        CheckpointError, match=r"no intact checkpoint to resume from \(2 checkpoint\(s\) of the run"
    ) as e:
        run_training(cfg, run_name="all-rotten")
    message = str(e.value)
    assert f"{ckpts[1] / TRAIN_STATE}: truncated: 50 bytes, meta.json records" in message
    assert f"{ckpts[0] / META}: not valid JSON" in message
    assert "Restore the files, or train under another run name" in message
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"
    assert _steps(client, run.info.run_id, "val/semseg/miou") == [0, 1]  # nothing logged by the failed attempt
