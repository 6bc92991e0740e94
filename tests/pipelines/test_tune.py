"""A real (tiny) Ray Tune sweep: ASHA stops trials early, nested MLflow runs, resume of a failed trial."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.tune.driver import run_tune
from tests import REPO_ROOT
from tests.pipelines.faults import ExitOnce

pytestmark = pytest.mark.integration


def test_sweep_stops_early_nests_runs_and_resumes_a_failed_trial(ray_cluster, smoke_shards, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        f"data.shards={smoke_shards}",
        "train.batch_size=2",
        "train.preview_every=0",
        f"tracking.uri={uri}",
        "tracking.experiment=sweeps",
        f"checkpoint.storage_path={tmp_path}/ray",
        "tracking.register_as=sweep-best",
    ]
    sweep = REPO_ROOT / "configs" / "sweeps" / "smoke.yaml"
    # The first trial dies at the start of its second epoch (once): the sweep goes on without it.
    first = run_tune(
        REPO_ROOT / "configs" / "smoke.yaml",
        sweep,
        overrides,
        name="tiny",
        verbose=0,
        epoch_hooks=[ExitOnce(epoch=1, rank=0, marker=f"{tmp_path}/failed-once")],
    )

    assert first["num_trials"] == 4 and not first["resumed"]
    assert len(first["errored"]) == 1 and (tmp_path / "failed-once").is_file()
    failed_id = first["errored"][0]
    rows = {r["trial_id"]: r for r in first["trials"]}
    # (Its epoch-0 report may die with the worker before it reaches Tune.)
    assert rows[failed_id]["status"] == "ERROR" and rows[failed_id]["epochs"] <= 1
    stopped = [r for r in first["trials"] if r["early_stopped"]]
    assert stopped, "ASHA stopped no trial"
    assert all(1 <= r["epochs"] < 3 for r in stopped)

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(first["parent_run_id"])
    assert parent.data.tags["fusionpipe.kind"] == "sweep" and parent.info.status == "FAILED"
    assert parent.data.params["sweep.scheduler.name"] == "asha"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    by_trial = {c.data.tags["fusionpipe.trial_id"]: c for c in children}
    assert set(by_trial) == set(rows)
    for trial_id, run in by_trial.items():
        row = rows[trial_id]
        assert float(run.data.params["optim.lr"]) == pytest.approx(row["params"]["optim.lr"])
        assert run.data.params["train.epochs"] == "3" and run.data.params["train.workers"] == "1"
        assert row["mlflow_run_id"] == run.info.run_id
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/semseg/miou"))
        assert steps == list(range(len(steps))) and len(steps) >= row["epochs"]
        if trial_id == failed_id:
            assert run.info.status == "FAILED"
            continue
        assert run.info.status == "FINISHED"
        best = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/best")}
        assert "checkpoints/best/model.pt" in best
    for r in stopped:
        assert by_trial[r["trial_id"]].data.tags["fusionpipe.tune.early_stopped"] == "true"

    # Re-running the same sweep resumes: only the failed trial runs again, into the same MLflow run,
    # continuing from its checkpoint (epochs 1 and 2), while finished trials are left alone.
    ended = {c.info.run_id: c.info.end_time for c in children if c.data.tags["fusionpipe.trial_id"] != failed_id}
    second = run_tune(REPO_ROOT / "configs" / "smoke.yaml", sweep, overrides, name="tiny", verbose=0)
    assert second["resumed"] and second["errored"] == [] and second["parent_run_id"] == first["parent_run_id"]
    assert {r["trial_id"] for r in second["trials"]} == set(rows)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    for c in children:
        if c.info.run_id in ended:
            assert c.info.end_time == ended[c.info.run_id], "a finished trial ran again"
    retried = client.get_run(rows[failed_id]["mlflow_run_id"])
    assert retried.info.status == "FINISHED" and retried.data.tags["fusionpipe.resumed"] == "true"
    assert sorted(m.step for m in client.get_metric_history(retried.info.run_id, "train/loss/total")) == [0, 1, 2]

    # The best trial is the best over all trials' reported epochs, and its config trains unchanged.
    best = second["best"]
    values = [r["best_metric"] for r in second["trials"] if r["best_metric"] is not None]
    assert best["metric"]["val/semseg/miou"] == max(values)
    parent = client.get_run(second["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val/semseg/miou"] == pytest.approx(max(values))
    assert parent.data.tags["fusionpipe.best_run_id"] == best["mlflow_run_id"]
    assert {"sweep.yaml", "base_config.yaml", "best_config.yaml", "trials.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    cfg = load_config(second["best_config_path"])
    assert cfg.optim.lr == pytest.approx(best["params"]["optim.lr"])
    assert cfg.loss.weights["depth"] == best["params"]["loss.weights.depth"]
    assert cfg.data.shards == str(smoke_shards) and cfg.train.epochs == 3 and cfg.tracking.run_name is None
    # Each sweep's end registered its best trial (trials register nothing); the alias names the latest.
    assert cfg.tracking.register_as == "sweep-best"
    assert best["registered_model"] == "models:/sweep-best@best"
    assert len(client.search_model_versions("name='sweep-best'")) == 2
    version = client.get_model_version_by_alias("sweep-best", "best")
    assert str(version.version) == "2" and version.run_id == best["mlflow_run_id"]
    assert client.get_run(best["mlflow_run_id"]).data.tags["fusionpipe.registered_model"] == "models:/sweep-best/2"
