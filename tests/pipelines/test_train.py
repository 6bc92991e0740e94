"""End-to-end Ray Train runs: tracking, resume, recovery from a dead worker, evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from datasets.manifest import manifest_digest
from pipelines.train.driver import run_training
from tests.pipelines.faults import ExitOnce, NanHead

pytestmark = pytest.mark.integration


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _worker_logs() -> str:
    """Everything the session's Ray workers wrote (the session cluster does not log to the driver)."""
    import ray

    # The pytest session's Ray (others may run on the machine): its raylet socket is <session>/sockets/raylet.
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    logs = Path(node["RayletSocketName"]).parent.parent / "logs"
    return "".join(f.read_text(errors="replace") for f in sorted(logs.glob("worker-*")))


def test_two_worker_run_is_tracked_completely(ray_cluster, tiny_config, smoke_shards, monkeypatch, capfd):
    import json
    import math
    import re

    from pipelines.analysis.evaluate import run_evaluate

    monkeypatch.setenv("FUSIONPIPE_PROGRESS_EVERY_S", "0.001")  # a progress line after every step
    cfg = tiny_config("tracking.system_metrics_interval_s=0.5")
    summary = run_training(cfg, run_name="full")
    # The driver says what it does before the first epoch; rank 0 shows steps inside the epoch, and
    # its epoch line the run's ETA.
    err = capfd.readouterr().err
    assert "fusionpipe: run full: starting Ray" in err and "starting 2 Ray Train workers (2 epochs)" in err
    logs = _worker_logs()
    step = r"epoch 1/2  step \d+/\d+ \(\d+%\)  loss \d+\.\d{4}  \d+\.\d samples/s  (ETA|\d+:\d\d elapsed)"
    assert re.search(step, logs), logs[-3000:]
    assert re.search(r"epoch 1/2  loss \d+\.\d{4} .* s  run ETA \d+:\d\d", logs), logs[-3000:]
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "full"
    # The run is configs/smoke.yaml: every param but the paths the fixture points at its own store, and
    # the system-metric interval this test shortens.
    from pipelines.config import flatten, load_config
    from pipelines.track.tracker import _param_value
    from tests import REPO_ROOT

    smoke = flatten(load_config(REPO_ROOT / "configs" / "smoke.yaml").model_dump(mode="json"))
    moved = {
        "data.shards",
        "tracking.uri",
        "tracking.experiment",
        "checkpoint.storage_path",
        "tracking.system_metrics_interval_s",
    }
    assert {k: _param_value(v) for k, v in smoke.items() if k not in moved} == {
        k: v for k, v in run.data.params.items() if k in smoke and k not in moved
    }
    assert run.data.params["model.name"] == "mtinet" and run.data.params["train.workers"] == "2"
    assert run.data.tags["data.manifest_digest"] == manifest_digest(smoke_shards)
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["git.commit"] == head and run.data.tags["git.dirty"] in ("true", "false")
    # The tags MLflow's UI reads for the source and the user, as mlflow.start_run sets them.
    assert run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["mlflow.source.name"] == "fusionpipe train"
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.info.user_id == run.data.tags["mlflow.user"] != "unknown"
    # rank 0 sampled its machine while training: MLflow system metrics, at steps 0, 1, ...
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    assert 0 <= run.data.metrics["system/cpu_utilization_percentage"] <= 100
    assert _steps(client, run.info.run_id, "system/system_memory_usage_megabytes")[0] == 0
    (dataset_input,) = run.inputs.dataset_inputs  # the shards, as an MLflow dataset input of the run
    assert dataset_input.dataset.digest == manifest_digest(smoke_shards)[:32]
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "train")}
    for key in (
        "train/loss/total",
        "train/loss/semseg",
        "val/semseg/miou",
        "val/depth/rmse",
        "val/normals/mean",
        "val/edge/odsF",
        "lr",
        "train/samples_per_s",
    ):
        assert _steps(client, run.info.run_id, key) == [0, 1], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "previews", "config.yaml"} <= artifacts
    best = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/best")}
    assert {"checkpoints/best/model.pt", "checkpoints/best/meta.json"} <= best
    last = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/last")}
    assert {"checkpoints/last/model.pt", "checkpoints/last/meta.json"} <= last
    # checkpoint.keep=1: the best checkpoint and the last one stay in storage, nothing else.
    run_dir = Path(cfg.resolved_paths().checkpoint.storage_path) / "full"
    kept = {p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()}
    assert kept == {Path(summary["best_checkpoint"]).name, Path(summary["last_checkpoint"]).name}
    assert len(client.list_artifacts(run.info.run_id, "previews")) == 2
    assert len(client.search_logged_models(experiment_ids=[run.info.experiment_id])) == 1
    assert Path(summary["best_checkpoint"]).is_dir() and str(cfg.checkpoint.storage_path) in summary["best_checkpoint"]
    assert 0.0 <= summary["final_metrics"]["val/semseg/miou"] <= 1.0

    # Evaluating the logged best checkpoint reproduces the metrics training reported for that epoch.
    ev = run_evaluate(cfg, run_id=summary["mlflow_run_id"], log_run=True)
    best_epoch = int(run.data.tags["fusionpipe.best_epoch"])
    hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/semseg/miou")}
    assert ev["epoch"] == best_epoch and ev["num_samples"] == 8 and ev["device"] == "cpu"
    assert ev["metrics"]["semseg/miou"] == pytest.approx(hist[best_epoch], abs=1e-6)
    # Per class, by the manifest's names; the classes' IoUs average to the mIoU.
    classes = json.loads((smoke_shards / "manifest.json").read_text())["classes"]
    assert list(ev["per_class"]) == classes
    present = [r["iou"] for r in ev["per_class"].values() if not math.isnan(r["iou"])]
    assert sum(present) / len(present) == pytest.approx(ev["metrics"]["semseg/miou"])
    # --log-to-run: eval/val/* at the evaluated epoch and the pictures, in the run it evaluated.
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["eval/val/semseg/miou"] == pytest.approx(ev["metrics"]["semseg/miou"])
    assert {f"eval/val/iou/{c}" for c in classes} >= {k for k in logged if k.startswith("eval/val/iou/")} != set()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/val/semseg/miou")] == [best_epoch]
    pictures = {a.path for a in client.list_artifacts(run.info.run_id, "eval/val")}
    assert {"eval/val/confusion.png", "eval/val/per_class.png", "eval/val/eval.json"} == pictures


def test_ddp_without_deep_supervision_and_a_short_accumulation_group(ray_cluster, tiny_config):
    # Without deep supervision MTI-Net's per-scale prediction heads get no gradient: DDP must be told
    # (find_unused_parameters), or the second step fails waiting for them. Batch size 2 gives each of the
    # two ranks 4 batches, grad_accum 3 groups them as 3 + 1: the last group all-reduces and steps too.
    from pipelines.train.steps import lr_factor

    cfg = tiny_config(
        "loss.deep_supervision=false",
        "train.batch_size=2",
        "optim.grad_accum=3",
        "train.epochs=2",
        "tracking.log_model=false",
        "train.preview_every=0",
        "optim.warmup_epochs=2",
        "tracking.system_metrics=false",
        "tracking.system_metrics_interval_s=0.5",
    )
    summary = run_training(cfg, run_name="no-deep-supervision")
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and summary["epochs"] == 2
    assert not [k for k in run.data.metrics if k.startswith("system/")]  # tracking.system_metrics: false
    losses = [k for k in run.data.metrics if k.startswith("train/loss/")]
    assert sorted(losses) == [
        "train/loss/depth",
        "train/loss/edge",
        "train/loss/normals",
        "train/loss/semseg",
        "train/loss/total",
    ]  # no per-scale (aux) terms
    # Two optimizer steps per epoch (ceil(4 / 3)): after epoch 0 the warm-up is at step 3 of 4, 0.75.
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    assert lr[0] == pytest.approx(cfg.optim.lr * 0.75, rel=1e-9) == cfg.optim.lr * lr_factor(cfg, 2, 4, 2)


def test_a_failure_after_training_marks_the_run_failed(ray_cluster, tiny_config, monkeypatch):
    import pipelines.track.run_record

    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    # Where finish_run looks it up (run_record imports it by name).
    monkeypatch.setattr(pipelines.track.run_record, "log_final_model", broken)
    cfg = tiny_config("train.epochs=1", "train.preview_every=0")
    with pytest.raises(OSError, match="artifact store unreachable"):
        run_training(cfg, run_name="export-fails")
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"  # not left RUNNING
    assert _steps(client, run.info.run_id, "val/semseg/miou") == [0]  # the epoch itself was logged


def test_checkpoint_of_another_model_is_refused(ray_cluster, tiny_config):
    from pipelines.analysis.evaluate import run_evaluate
    from pipelines.checkpoints import CheckpointError

    summary = run_training(tiny_config("train.epochs=1", "tracking.log_model=false"), run_name="other")
    with pytest.raises(CheckpointError, match=r"another model config: name: checkpoint 'mtinet' vs config 'padnet'"):
        run_evaluate(tiny_config("model.name=padnet"), checkpoint=summary["best_checkpoint"])


def test_rerun_with_same_name_resumes_the_same_mlflow_run(ray_cluster, tiny_config):
    # RGB-D through the CEN encoder, with a threshold the BN scales (all 1.0 at the start) cross as they
    # learn: the run logs the fraction of channels each modality exchanges, per stage, every epoch.
    cen = ("data.modalities=[rgb, depth]", "model.options.fusion=cen", "model.options.cen_threshold=1.0")
    first = run_training(tiny_config("train.epochs=1", "tracking.log_model=false", *cen), run_name="resume-me")
    cfg = tiny_config("train.epochs=3", "tracking.log_model=false", *cen)
    second = run_training(cfg, run_name="resume-me")
    assert second["resumed"] and second["mlflow_run_id"] == first["mlflow_run_id"] and second["epochs"] == 3
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    assert _steps(client, first["mlflow_run_id"], "val/semseg/miou") == [0, 1, 2]
    assert _steps(client, first["mlflow_run_id"], "train/loss/total") == [0, 1, 2]
    assert len(client.search_runs([client.get_experiment_by_name("test").experiment_id])) == 1
    # The logged fractions are those of the weights the epoch ended with (its checkpoint).
    from fusion.cen import exchange_diagnostics
    from pipelines.checkpoints import build_checkpoint_model, load_model_state, read_meta

    last = second["last_checkpoint"]
    model = build_checkpoint_model(read_meta(last)["model_config"])
    load_model_state(model, last)
    want = exchange_diagnostics(model.encoder.backbone, ["rgb", "depth"])
    assert len(want) == 10 and 0 < want["cen/exchanged/rgb"] < 1  # some scales fell below 1.0, not all
    for name, value in want.items():
        history = client.get_metric_history(first["mlflow_run_id"], f"model/{name}")
        assert [m.step for m in history] == [0, 1, 2], name
        assert history[-1].value == pytest.approx(value, abs=1e-12), name


def test_dead_worker_is_recovered_with_max_failures(ray_cluster, tiny_config, tmp_path):
    marker = tmp_path / "failed-once"
    cfg = tiny_config("failure.max_failures=1", "tracking.log_model=false")
    summary = run_training(cfg, run_name="flaky", epoch_hooks=[ExitOnce(epoch=1, rank=1, marker=str(marker))])
    assert marker.exists(), "the injected failure did not happen"
    assert summary["epochs"] == 2
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert _steps(client, summary["mlflow_run_id"], "val/semseg/miou") == [0, 1]


def test_nan_loss_fails_the_run_once_keeps_good_checkpoints_and_resumes(ray_cluster, tiny_config):
    from pipelines.checkpoints import CheckpointError
    from pipelines.train.steps import NonFiniteLossError

    # Epoch 0 trains and checkpoints; at epoch 1 the depth head turns to NaN on every rank.
    cfg = tiny_config("failure.max_failures=1", "tracking.log_model=false", "train.preview_every=0")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 0: task\(s\) depth"):
        run_training(cfg, run_name="diverged", epoch_hooks=[NanHead(epoch=1, task="depth")])
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"
    assert _steps(client, run.info.run_id, "val/semseg/miou") == [0]  # only the good epoch is logged
    run_dir = Path(cfg.resolved_paths().checkpoint.storage_path) / "diverged"
    assert [p for p in run_dir.glob("checkpoint_*") if p.is_dir()], "the good epoch's checkpoint was not kept"

    # Resuming with another optimizer is refused as a checkpoint error, not retried, and the recorded
    # NaN of the first attempt does not leak into this one.
    with pytest.raises(CheckpointError, match=r"trained with optim.name 'adam', the config says 'sgd'"):
        run_training(
            tiny_config(
                "failure.max_failures=1", "tracking.log_model=false", "train.preview_every=0", "optim.name=sgd"
            ),
            run_name="diverged",
        )
    # The same config resumes from the kept checkpoint and finishes the same MLflow run.
    summary = run_training(cfg, run_name="diverged")
    assert summary["resumed"] and summary["mlflow_run_id"] == run.info.run_id and summary["epochs"] == 2
    assert _steps(client, run.info.run_id, "val/semseg/miou") == [0, 1]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_run_that_died_resumes_where_it_stopped(ray_cluster, tiny_config, tmp_path):
    # No retries: rank 0 dies in epoch 1 and the run fails, as after a crash or a lost node.
    cfg = tiny_config("failure.max_failures=0", "tracking.log_model=false", "train.preview_every=0")
    from ray.train import TrainingFailedError

    with pytest.raises(TrainingFailedError):
        run_training(cfg, run_name="crashed", epoch_hooks=[ExitOnce(epoch=1, rank=0, marker=str(tmp_path / "died"))])
    assert (tmp_path / "died").exists(), "the injected failure did not happen"
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED" and _steps(client, run.info.run_id, "val/semseg/miou") == [0]

    summary = run_training(cfg, run_name="crashed")  # the same name: continue from the epoch-0 checkpoint
    assert summary["resumed"] and summary["mlflow_run_id"] == run.info.run_id and summary["epochs"] == 2
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    for key in ("val/semseg/miou", "train/loss/total", "lr"):
        assert _steps(client, run.info.run_id, key) == [0, 1], key  # no step logged twice
    # The lr logged per epoch, the resumed one too, is the schedule at the end of that epoch (2 steps per
    # epoch: 8 samples per rank, batch 4).
    from pipelines.train.steps import lr_at

    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    assert lr == {0: pytest.approx(lr_at(2, cfg, 2), rel=1e-12), 1: pytest.approx(lr_at(4, cfg, 2), rel=1e-12)}


def test_train_json_prints_one_object_with_the_run_summary(ray_cluster, tiny_config, tmp_path, monkeypatch):
    import json

    import yaml
    from click.testing import CliRunner

    import pipelines.cli.run
    from pipelines.cli.run import train

    monkeypatch.setattr(pipelines.cli.run, "shutdown_ray", lambda was_up=False: None)  # keep the session's cluster
    cfg = tiny_config("train.epochs=1", "tracking.log_model=false", "train.preview_every=0")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(train, ["--config", str(path), "--run-name", "cli-json", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert out["run_name"] == "cli-json" and out["epochs"] == 1 and not out["resumed"]
    assert Path(out["best_checkpoint"]).is_dir() and out["best_checkpoint"] == out["last_checkpoint"]
    assert set(out["best_metric"]) == {"val/semseg/miou"} and "val/depth/rmse" in out["final_metrics"]
    run = MlflowClient(tracking_uri=out["tracking_uri"]).get_run(out["mlflow_run_id"])
    assert run.info.run_name == "cli-json" and run.info.status == "FINISHED"
