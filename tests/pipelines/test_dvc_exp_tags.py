"""Inside `dvc exp run` the MLflow run of a training is tagged with the DVC experiment's name."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from datasets.manifest import load_manifest
from pipelines.config import load_config
from pipelines.track.data_versions import dvc_experiment_tags
from pipelines.track.run_record import open_run
from tests import REPO_ROOT


def test_the_tags_come_from_dvcs_environment(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert dvc_experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "cased-tusk")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    assert dvc_experiment_tags() == {"dvc.exp_name": "cased-tusk", "dvc.exp_baseline_rev": "0123abc"}


def test_a_new_and_a_resumed_run_carry_the_experiment_name(monkeypatch, tmp_path, smoke_shards):
    cfg = load_config(
        REPO_ROOT / "configs" / "smoke.yaml",
        [
            f"data.shards={smoke_shards}",
            f"tracking.uri=sqlite:///{tmp_path}/m.db",
            f"checkpoint.storage_path={tmp_path}",
        ],
    ).resolved_paths()
    monkeypatch.setenv("DVC_EXP_NAME", "first-exp")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    tracker, resumed = open_run(cfg, "r", load_manifest(smoke_shards))
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    tags = client.get_run(tracker.run_id).data.tags
    assert not resumed and tags["dvc.exp_name"] == "first-exp" and tags["dvc.exp_baseline_rev"] == "0123abc"
    # The same run name again (a resume) inside another experiment: the tag names the latest.
    monkeypatch.setenv("DVC_EXP_NAME", "second-exp")
    again, resumed = open_run(cfg, "r", load_manifest(smoke_shards))
    assert resumed and again.run_id == tracker.run_id
    assert client.get_run(tracker.run_id).data.tags["dvc.exp_name"] == "second-exp"
