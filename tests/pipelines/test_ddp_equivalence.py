"""Two Ray Train workers (DDP on two CPU ranks) train as one worker with twice the batch.

The smoke MTI-Net with its BatchNorm layers taken out (batch statistics over each rank's half would
differ from those over the whole batch) and two tasks whose losses are plain means over valid pixels
(semseg, depth; every pixel valid): each rank's loss is the mean over its half, DDP averages the two
halves' gradients, which is the whole batch's gradient, and ``train_epoch`` reports the mean of the two
ranks' losses, which is the whole batch's loss. So the curves must agree up to float32 rounding
(summation order, gloo's all-reduce): relative 1e-4 over 4 SGD steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.integration

TASKS = ["semseg", "depth"]
STEPS, GLOBAL_BATCH = 4, 4


def _model() -> nn.Module:
    from fusion import build_model
    from pipelines.config import load_config, model_config
    from tests import REPO_ROOT

    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["data.shards=/nonexistent", "data.tasks=[semseg, depth]"])
    torch.manual_seed(0)
    model = build_model(model_config(cfg, num_classes=5))

    def strip(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, nn.Identity())
            else:
                strip(child)

    strip(model)
    return model


def _batches() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    h, w = 32, 40
    return [
        {
            "inputs": {"rgb": torch.randn(GLOBAL_BATCH, 3, h, w, generator=g)},
            "targets": {
                "semseg": torch.randint(0, 5, (GLOBAL_BATCH, h, w), generator=g),
                "depth": torch.rand(GLOBAL_BATCH, 1, h, w, generator=g) + 0.5,
            },
        }
        for _ in range(STEPS)
    ]


def _share(batch: dict, rank: int, world: int) -> dict:
    return {part: {k: v[rank::world] for k, v in batch[part].items()} for part in ("inputs", "targets")}


def _curve(model: nn.Module, rank: int, world: int) -> list[float]:
    from fusion.losses import MultiTaskLoss
    from pipelines.train.steps import train_epoch

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    crit = MultiTaskLoss(TASKS)
    return [
        train_epoch(model, [_share(b, rank, world)], crit, opt, None, torch.device("cpu"), num_batches=1)[
            "train/loss/total"
        ]
        for b in _batches()
    ]


def ddp_loop(config: dict) -> None:
    """Each Ray Train worker: the model in DDP, its half of every batch; rank 0 writes the curve to
    ``config["out"]`` (one machine: the test reads it there)."""
    import json
    from pathlib import Path

    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    model = ray.train.torch.prepare_model(_model())
    curve = _curve(model, ctx.get_world_rank(), ctx.get_world_size())
    if ctx.get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps(curve))


@pytest.mark.timeout(240)
def test_two_workers_give_the_loss_curve_of_one_with_twice_the_batch(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    one = _curve(_model(), 0, 1)
    out = tmp_path / "curve.json"
    trainer = TorchTrainer(
        ddp_loop,
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="ddp-equivalence", storage_path=str(tmp_path)),
    )
    trainer.fit()
    two = json.loads(out.read_text())
    assert len(one) == len(two) == STEPS
    assert one[0] != one[-1]  # the model learns: a flat curve would match trivially
    assert two == pytest.approx(one, rel=1e-4)
