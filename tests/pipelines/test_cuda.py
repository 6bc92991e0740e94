"""The CUDA paths of training and evaluation, on a machine with a GPU (CI has none: skipped there).

One Ray Train worker on the GPU with bf16 autocast: NCCL as the process group, metrics reduced as CUDA
tensors, a checkpoint resumed onto the GPU (optimizer state included), and ``evaluate`` on CUDA against
the same checkpoint on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_one_gpu_run_with_amp_resumes_on_the_gpu_and_evaluates_as_on_the_cpu(ray_cluster, tiny_config):
    from mlflow.tracking import MlflowClient

    from pipelines.analysis.evaluate import run_evaluate
    from pipelines.train.driver import run_training

    common = (
        "train.workers=1",
        "train.use_gpu=true",
        "train.amp=true",
        "train.preview_every=1",
        "tracking.log_model=false",
    )
    first = run_training(tiny_config(*common, "train.epochs=1"), run_name="gpu")
    cfg = tiny_config(*common, "train.epochs=3")
    second = run_training(cfg, run_name="gpu")
    assert second["resumed"] and second["mlflow_run_id"] == first["mlflow_run_id"] and second["epochs"] == 3
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    run_id = second["mlflow_run_id"]
    for key in ("train/loss/total", "val/semseg/miou", "val/depth/rmse", "train/samples_per_s"):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in hist] == [0, 1, 2], key
        assert all(math.isfinite(m.value) for m in hist), key
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train/loss/total"), key=lambda m: m.step)]
    assert losses[-1] < losses[0]  # the resumed optimizer kept learning on the GPU

    # The checkpoint evaluated on the GPU gives what training reported for its epoch (same device,
    # same autocast), and on the CPU in fp32 the same up to bf16 rounding.
    best_epoch = int(client.get_run(run_id).data.tags["fusionpipe.best_epoch"])
    reported = {m.step: m.value for m in client.get_metric_history(run_id, "val/semseg/miou")}[best_epoch]
    on_gpu = run_evaluate(cfg, checkpoint=second["best_checkpoint"], device="cuda")
    on_cpu = run_evaluate(cfg, checkpoint=second["best_checkpoint"], device="cpu")
    assert on_gpu["device"] == "cuda" and on_cpu["device"] == "cpu" and on_gpu["epoch"] == best_epoch
    assert on_gpu["metrics"]["semseg/miou"] == pytest.approx(reported, abs=1e-3)
    assert on_gpu["metrics"].keys() == on_cpu["metrics"].keys()
    assert on_gpu["metrics"]["semseg/miou"] == pytest.approx(on_cpu["metrics"]["semseg/miou"], abs=0.02)
    assert on_gpu["metrics"]["depth/rmse"] == pytest.approx(on_cpu["metrics"]["depth/rmse"], rel=0.02)
    assert on_gpu["metrics"]["normals/mean"] == pytest.approx(on_cpu["metrics"]["normals/mean"], rel=0.02)


def test_adam_on_gpu_parameters_is_the_fused_kernel(tiny_config):
    from pipelines.train.steps import make_optimizer

    model = torch.nn.Conv2d(3, 4, 3)
    for name in ("adam", "adamw"):
        opt = make_optimizer(tiny_config(f"optim.name={name}"), model.cuda())
        assert opt.defaults["fused"] is True, name
