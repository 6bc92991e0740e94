"""`dvc exp run` of the main job end to end, tiny, in a throwaway git repository holding this tree's files:
each experiment keeps its curves (`dvc plots diff` across experiments), its summary and best checkpoint
(cached outputs of the train stage), and its MLflow run carries the experiment's name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests import REPO_ROOT

pytestmark = pytest.mark.integration

# The smallest main job: 8 training scenes at 32×40, one worker, batches of 2, no logged MLflow model.
TINY = [
    "synthetic.num_train=8",
    "synthetic.num_val=4",
    "synthetic.height=32",
    "synthetic.width=40",
    "synthetic.shard_size=4",
    "train.workers=1",
    "train.batch_size=2",
    "train.preview_every=0",
    "++tracking.log_model=false",  # not in params.yaml: added (and kept by the next experiment)
]


def _copy_of_this_tree(dest: Path) -> None:
    """A new git repository with the files git tracks here, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tree"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_experiments_keep_their_curves_and_name_their_mlflow_runs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_of_this_tree(repo)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("FUSIONPIPE_PROJECT_ROOT", "MLFLOW_TRACKING_URI")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    # Each training starts a Ray of its own, which ends with it: nothing of it stays on the session's Ray.
    env.pop("RAY_ADDRESS", None)

    def dvc(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, f"dvc {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    sets = [a for s in TINY for a in ("-S", s)]
    dvc("exp", "run", *sets, "-S", "train.epochs=1")
    dvc("exp", "run", *sets, "-S", "train.epochs=2")
    names = dvc("exp", "list", "--name-only").split()
    assert len(names) == 2, names

    # The curves of both experiments: history.csv is an output of each experiment, not only the workspace's.
    plots = json.loads(dvc("plots", "diff", *names, "--json"))
    assert not plots.get("errors"), plots["errors"]
    (history,) = plots["data"]["outputs/history.csv"]
    assert sorted(history["revisions"]) == sorted(names)

    # dvc exp show: each experiment with its train.epochs and its evaluation metrics.
    shown = json.loads(dvc("exp", "show", "--json"))
    exps = {e["name"]: e for row in shown for e in (row.get("experiments") or [])}
    assert set(exps) == set(names)
    epochs = {}
    for name, e in exps.items():
        data = e["revs"][0]["data"]
        epochs[name] = data["params"]["params.yaml"]["data"]["train"]["epochs"]
        assert "semseg/miou" in data["metrics"]["metrics/eval.json"]["data"]["metrics"]
    assert sorted(epochs.values()) == [1, 2]

    # The workspace holds the last experiment's outputs: the cached best checkpoint, evaluated.
    assert {p.name for p in (repo / "outputs" / "best").iterdir()} >= {"model.pt", "meta.json"}
    summary = json.loads((repo / "outputs" / "train.json").read_text())
    assert summary["epochs"] == 2

    # Each MLflow run is tagged with the experiment that ran it; the evaluation is logged into it too.
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fusionpipe-main").experiment_id])
    by_exp = {r.data.tags.get("dvc.exp_name"): r for r in runs}
    assert set(by_exp) == set(names)
    for name, run in by_exp.items():
        assert run.data.params["train.epochs"] == str(epochs[name])
        assert run.data.tags["dvc.exp_baseline_rev"]
        assert "eval/val/semseg/miou" in run.data.metrics
