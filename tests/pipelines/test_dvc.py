"""`dvc repro` of the data stage on a fresh clone rebuilds exactly the shards dvc.lock pins."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not (REPO_ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_fresh_clone_repro_matches_dvc_lock(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    locked = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["data"]["outs"][0]["md5"]
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "data"], cwd=clone, env=env, check=True, capture_output=True, text=True
    )
    rebuilt = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["data"]["outs"][0]["md5"]
    assert rebuilt == locked
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "data"], cwd=clone, env=env, check=True, capture_output=True, text=True
    ).stdout
    assert "up to date" in status
    verify = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "data", "verify", "data/shards/synthetic", "--json"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and '"ok": true' in verify.stdout
