"""``fusionpipe config show``: the resolved, validated config, printed without starting Ray; bad input
is exit 2 naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from click.testing import CliRunner

from pipelines.cli.main import cli
from tests import REPO_ROOT

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")


def test_show_prints_the_resolved_config_with_absolute_paths_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONPIPE_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = CliRunner().invoke(cli, ["config", "show", "--config", SMOKE, "--set", "train.epochs=3"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"# {SMOKE} --set train.epochs=3\n# resolved against the project root {tmp_path};")
    shown = yaml.safe_load(out.output)
    assert shown["data"]["shards"] == str(tmp_path / "data" / "shards" / "smoke")
    assert shown["checkpoint"]["storage_path"] == str(
        tmp_path / yaml.safe_load(open(SMOKE))["checkpoint"]["storage_path"]
    )
    assert shown["tracking"]["uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert shown["train"]["epochs"] == 3
    # defaults the YAML leaves out are filled in
    assert shown["optim"]["grad_accum"] == 1


def test_show_json_and_hidden_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONPIPE_PROJECT_ROOT", str(tmp_path))
    args = ["--set", "tracking.uri=http://user:s3cret@mlflow.example:5000", "--json"]
    out = CliRunner().invoke(cli, ["config", "show", "--config", SMOKE, *args])
    assert out.exit_code == 0, out.output
    obj = json.loads(out.stdout)
    assert obj["project_root"] == str(tmp_path)
    assert obj["config"]["tracking"]["uri"] == "http://user:***@mlflow.example:5000"
    assert "s3cret" not in out.output


def test_a_bad_set_exits_2_naming_the_field():
    out = CliRunner().invoke(cli, ["config", "show", "--config", SMOKE, "--set", "train.epochs=2.5", "--json"])
    assert out.exit_code == 2, out.output
    assert json.loads(out.stdout)["error"].startswith(
        f"{SMOKE}: 1 problem(s):\n  - train.epochs: expected a whole number"
    )
    out = CliRunner().invoke(cli, ["config", "show", "--config", SMOKE, "--set", "train.epoch=2"])
    assert out.exit_code == 2
    assert "train.epoch: unknown key" in out.output
    assert "Traceback" not in out.output


def test_a_missing_config_file_exits_2(tmp_path):
    out = CliRunner().invoke(cli, ["config", "show", "--config", str(tmp_path / "nope.yaml")])
    assert out.exit_code == 2
    assert str(tmp_path / "nope.yaml") in out.output


def test_show_starts_no_ray_and_opens_no_tracking_store(tmp_path):
    code = (
        "import json, sys\n"
        "from pipelines.cli.main import cli\n"
        f"cli(['config', 'show', '--config', {SMOKE!r}], standalone_mode=False)\n"
        "print(json.dumps([m for m in ('ray', 'mlflow', 'dvc') if m in sys.modules]), file=sys.stderr)\n"
    )
    env = {**os.environ, "FUSIONPIPE_PROJECT_ROOT": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert yaml.safe_load(proc.stdout)["data"]["shards"] == str(tmp_path / "data" / "shards" / "smoke")
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no ray_results
