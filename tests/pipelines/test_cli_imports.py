"""The console script starts fast: importing the CLI loads no torch, Ray, MLflow or DVC (the commands
import the components they call), and every command's module is importable on its own."""

import json
import subprocess
import sys

from tests import REPO_ROOT

HEAVY = ("torch", "ray", "mlflow", "dvc", "albumentations", "fusion", "datasets")


def test_importing_the_cli_loads_no_heavy_library():
    code = f"import json, sys, pipelines.cli.main\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    for command in ("data", "train", "evaluate", "tune", "study", "compare", "config", "submit", "jobs"):
        assert f"  {command} " in out, command
