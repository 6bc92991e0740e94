"""The tags MLflow's UI reads for a run's source and user (``mlflow.source.*``, ``mlflow.user``), which
``MlflowClient.create_run`` leaves to the caller, and the system-metrics switches of the config."""

from __future__ import annotations

import getpass
import json
import subprocess

import pytest

from pipelines.compat import RAY_JOB_CONFIG_ENV
from pipelines.config import ConfigError, load_config
from pipelines.track.tracker import GIT_COMMIT_ENV, Tracker, git_info, source_tags
from tests import REPO_ROOT


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "a.txt").write_text("a")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "a")
    _git(tmp_path, "remote", "add", "origin", "https://alice:ghp_s3cret@github.com/acme/fusionpipe.git")
    return tmp_path


def test_source_tags_name_the_command_commit_branch_remote_and_user(repo, monkeypatch):
    monkeypatch.delenv(RAY_JOB_CONFIG_ENV, raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    tags = source_tags("fusionpipe train", git_info(repo), repo)
    assert tags == {
        "mlflow.source.name": "fusionpipe train",
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": head,
        "mlflow.source.git.branch": "main",
        "mlflow.source.git.repoURL": "https://alice:***@github.com/acme/fusionpipe.git",
        "mlflow.user": getpass.getuser(),
    }


def test_a_copy_without_git_takes_the_submitted_commit_and_a_job_is_a_job(tmp_path, monkeypatch):
    monkeypatch.setenv(GIT_COMMIT_ENV, "c" * 40)
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}}))
    tags = source_tags("fusionpipe tune", git_info(tmp_path), tmp_path)
    assert tags["mlflow.source.git.commit"] == "c" * 40
    assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.source.name"] == "fusionpipe tune"
    assert "mlflow.source.git.branch" not in tags and "mlflow.source.git.repoURL" not in tags


def test_mlflow_takes_the_user_tag_as_the_runs_user(repo, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker.create_run(uri, "exp", "r", source_tags("fusionpipe train", git_info(repo), repo))
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.info.user_id == getpass.getuser()
    assert run.data.tags["mlflow.source.git.repoURL"] == "https://alice:***@github.com/acme/fusionpipe.git"


def test_system_metrics_switch_and_interval_are_checked():
    smoke = REPO_ROOT / "configs" / "smoke.yaml"
    cfg = load_config(smoke)
    assert cfg.tracking.system_metrics is True and cfg.tracking.system_metrics_interval_s == 10.0
    off = load_config(smoke, ["tracking.system_metrics=false", "tracking.system_metrics_interval_s=2.5"])
    assert off.tracking.system_metrics is False and off.tracking.system_metrics_interval_s == 2.5
    with pytest.raises(ConfigError, match=r"tracking.system_metrics_interval_s: Input should be greater than 0"):
        load_config(smoke, ["tracking.system_metrics_interval_s=0"])
    with pytest.raises(ConfigError, match=r"tracking.system_metrics: expected true or false"):
        load_config(smoke, ["tracking.system_metrics=1"])
