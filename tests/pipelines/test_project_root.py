"""Relative paths in a config are read from the project the user runs in (the current directory, or
$FUSIONPIPE_PROJECT_ROOT), never from where the package's source files happen to be installed."""

from pathlib import Path

import pytest

from jobs.submit import is_uploaded
from pipelines.config import PROJECT_ROOT_ENV, load_config, project_root, resolve_tracking_uri
from pipelines.track.data_versions import dvc_hash
from pipelines.track.tracker import git_info


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A project directory that is not this source tree, as the current directory."""
    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)
    monkeypatch.delenv("FUSIONPIPE_GIT_COMMIT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path.resolve()


def test_relative_config_paths_resolve_against_the_current_directory(elsewhere):
    cfg = load_config(
        None, ["data.shards=data/x", "checkpoint.storage_path=runs", "tracking.uri=null"]
    ).resolved_paths()
    assert project_root() == elsewhere
    assert cfg.data.shards == str(elsewhere / "data" / "x")
    assert cfg.checkpoint.storage_path == str(elsewhere / "runs")
    assert cfg.tracking.uri == f"sqlite:///{elsewhere}/mlflow.db"


def test_the_project_root_setting_wins_over_the_current_directory(elsewhere, tmp_path_factory, monkeypatch):
    other = tmp_path_factory.mktemp("project").resolve()
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(other))
    assert project_root() == other
    assert load_config(None, ["data.shards=d"]).resolved_paths().data.shards == str(other / "d")
    assert resolve_tracking_uri("sqlite:///m.db") == f"sqlite:///{other}/m.db"
    # Absolute paths and server URIs are left as they are.
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert load_config(None, ["data.shards=/abs/d"]).resolved_paths().data.shards == "/abs/d"


def test_git_dvc_and_uploads_read_the_project_not_the_source_tree(elsewhere):
    (elsewhere / "dvc.lock").write_text("stages:\n  data:\n    outs:\n    - path: data/x\n      md5: abc.dir\n")
    assert dvc_hash("data/x") == "abc.dir"  # this project's dvc.lock, not the source tree's
    assert git_info() == {}  # not a git checkout, and no commit handed over by `fusionpipe submit`
    (elsewhere / ".rayignore").write_text("secret/\n")
    for rel in ("secret/a.txt", "configs/a.yaml"):
        (elsewhere / rel).parent.mkdir(parents=True, exist_ok=True)
        (elsewhere / rel).write_text("x: 1\n")
    assert not is_uploaded(elsewhere / "secret" / "a.txt") and is_uploaded(elsewhere / "configs" / "a.yaml")
    assert Path.cwd().resolve() == elsewhere


def test_the_console_script_fixes_the_project_root_when_it_starts(elsewhere):
    """Later calls of project_root() never depend on the current directory still existing."""
    import subprocess
    import sys

    code = (
        "import os, sys, pipelines.cli.main as m\n"
        "m.cli.add_command(__import__('click').command('where')(lambda: print(os.environ['FUSIONPIPE_PROJECT_ROOT'])))\n"
        "sys.argv = ['fusionpipe', 'where']\n"
        "m.main()"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == str(elsewhere), out.stderr
