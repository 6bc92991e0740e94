"""benchmarks/train.py: the GPU throughput run uses the paper set-up, and is skipped without CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.train import _gpu_config, gpu_throughput  # noqa: E402


def test_gpu_config_is_the_nyud_mtinet_hrnet18_paper_setup(tmp_path):
    cfg = _gpu_config(tmp_path / "shards", tmp_path, workers=2, cpus_per_worker=8, epochs=3)
    assert (cfg.model.name, cfg.model.backbone, cfg.model.width, cfg.model.pretrained) == (
        "mtinet",
        "hrnet18",
        1.0,
        None,
    )
    assert cfg.train.use_gpu and cfg.train.amp
    assert cfg.failure.max_failures == 0  # a failing GPU run reports at once, not after two retries
    assert (cfg.train.workers, cfg.train.batch_size, cfg.train.cpus_per_worker, cfg.train.epochs) == (2, 8, 8, 3)
    # the official flip + zoom in {1.0, 1.2, 1.5}, then a fixed resize to 480x640: every batch at that size
    assert (cfg.data.augment.zoom, cfg.data.augment.resize) == ((1.0, 1.2, 1.5), (480, 640))
    assert cfg.data.loader_workers == 7  # one core of the worker's share left to the training loop
    assert str(cfg.data.shards) == str(tmp_path / "shards") and cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert _gpu_config(tmp_path, tmp_path, 1, 1, 2).data.loader_workers == 1


def test_gpu_throughput_measures_nothing_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_throughput(tmp_path, quick=True) == ([], {})
    assert not any(tmp_path.iterdir())  # no shards written either


def test_a_failing_gpu_run_is_reported_and_ray_shut_down(tmp_path, monkeypatch):
    import ray

    import benchmarks.train as bench
    import datasets.writer
    import pipelines.train.driver

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(datasets.writer, "write_dataset", lambda *a, **k: None)
    monkeypatch.setattr(pipelines.train.driver, "start_local_ray", lambda **k: None)
    shutdowns = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))

    def fail(cfg, run_name):
        raise RuntimeError(f"{run_name} failed")

    monkeypatch.setattr(bench, "ray_loop", fail)
    results, ratios = gpu_throughput(tmp_path, quick=True)
    assert results == [
        {
            "setup": "Ray Train, 1 GPU worker, MTI-Net HRNet-18 480×640, bf16 autocast",
            "error": "RuntimeError: bench-gpu-1w failed",
        }
    ]
    assert ratios == {} and shutdowns == [1]  # stops at the first failure, Ray shut down


def test_mlflow_logging_cost_covers_metrics_and_the_preview_png(tmp_path):
    from mlflow.tracking import MlflowClient

    from benchmarks.train import mlflow_log_seconds

    log_s, preview_s = mlflow_log_seconds(tmp_path, num_metrics=40, repeats=4, hw=(32, 40))
    assert 0 < log_s < 60 and 0 < preview_s < 60
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow-bench.db")
    (run,) = client.search_runs([client.get_experiment_by_name("bench-logging").experiment_id])
    assert len(run.data.metrics) == 40 and len(client.get_metric_history(run.info.run_id, "val/m3")) == 4
    assert [a.path for a in client.list_artifacts(run.info.run_id, "previews")] == [
        "previews/epoch_0000.png",
        "previews/epoch_0001.png",
    ]


def test_only_picks_one_device_and_refuses_cuda_without_it(monkeypatch, capsys):
    import pytest

    from benchmarks._common import parse_args

    assert parse_args("x", devices=True, argv=["--json"]).only is None
    assert parse_args("x", devices=True, argv=["--only", "cpu"]).only == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        parse_args("x", devices=True, argv=["--only", "cuda"])
    assert e.value.code == 2 and "--only cuda: CUDA is not available" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_args("x", devices=True, argv=["--only", "cuda"]).only == "cuda"
    with pytest.raises(SystemExit):  # scripts that measure on one device only do not take it
        parse_args("x", argv=["--only", "cpu"])
