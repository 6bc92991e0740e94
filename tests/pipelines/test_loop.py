"""Training-step behaviour without Ray: non-finite losses, schedules, validation before start."""

import math

import pytest
import torch
from torch import nn

from fusion.losses import MultiTaskLoss
from pipelines.config import ConfigError, load_config
from pipelines.train.driver import validate_experiment
from pipelines.train.steps import (
    NonFiniteLossError,
    float32_outputs,
    lr_factor,
    model_diagnostics,
    reduce_device,
    train_epoch,
    with_sync_batchnorm,
)


class _Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, inputs):
        x = inputs["rgb"]
        depth = x[:, :1] * self.w * float("nan")
        return {"semseg": x[:, :2] * self.w, "depth": depth}


def test_nan_loss_names_the_task():
    batch = {
        "inputs": {"rgb": torch.ones(2, 3, 4, 4)},
        "targets": {"semseg": torch.zeros(2, 4, 4, dtype=torch.long), "depth": torch.ones(2, 1, 4, 4)},
    }
    model = _Bad()
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, batch 0: task\(s\) depth"):
        train_epoch(
            model,
            [batch],
            MultiTaskLoss(["semseg", "depth"]),
            torch.optim.SGD(model.parameters(), 0.1),
            None,
            torch.device("cpu"),
            epoch=3,
        )


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, inputs):
        return {"depth": inputs["rgb"][:, :1] * self.w}


def test_epoch_losses_are_means_over_batches_and_samples_are_counted():
    # Per-batch depth L1 losses of 1, 2 and 6 (targets 1, predictions 2/3/7): the epoch reports 3.
    batches = [
        {"inputs": {"rgb": torch.full((n, 3, 4, 4), v)}, "targets": {"depth": torch.ones(n, 1, 4, 4)}}
        for v, n in [(2.0, 2), (3.0, 3), (7.0, 2)]
    ]
    model = _Scale()
    out = train_epoch(
        model, batches, MultiTaskLoss(["depth"]), torch.optim.SGD(model.parameters(), 0.0), None, torch.device("cpu")
    )
    assert out["train/loss/depth"] == pytest.approx(3.0, rel=1e-12)
    assert out["train/loss/total"] == pytest.approx(3.0, rel=1e-12)
    assert out["train/samples_per_s"] == pytest.approx(7 / out["train/epoch_s"])


def test_nccl_reduces_cpu_tensors_through_the_current_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    cpu = torch.zeros(2)
    assert reduce_device(cpu, "nccl") == torch.device("cuda", 3)
    assert reduce_device(cpu, "gloo") == torch.device("cpu")
    assert reduce_device(torch.zeros(2, device="meta"), "gloo") == torch.device("meta")


def test_sync_batchnorm_converts_every_bn_and_keeps_the_state_names():
    from fusion import build_model

    model = build_model(
        {"name": "cen", "tasks": ["semseg"], "modalities": ["rgb", "depth"], "width": 0.125, "num_classes": 3}
    )
    state = model.state_dict()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert with_sync_batchnorm(model, enabled=True, world_size=1) is model
    assert with_sync_batchnorm(model, enabled=False, world_size=4) is model
    synced = with_sync_batchnorm(model, enabled=True, world_size=4)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn > 0
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    # CEN's exchange and L1 term find the converted BNs; checkpoints keep their names and values.
    assert all(isinstance(bn, nn.SyncBatchNorm) for p in synced.encoder.exchange_bns() for bn in p.bns)
    new_state = synced.state_dict()
    assert new_state.keys() == state.keys()
    assert all(torch.equal(new_state[k], state[k]) for k in state)


def test_sync_batchnorm_needs_gpu_workers():
    with pytest.raises(ConfigError, match="sync_batchnorm needs use_gpu"):
        load_config(None, ["train.sync_batchnorm=true"])
    assert load_config(None, ["train.sync_batchnorm=true", "train.use_gpu=true"]).train.sync_batchnorm


def test_losses_see_float32_outputs_whatever_autocast_produced():
    out = {
        "semseg": torch.ones(1, 2, dtype=torch.bfloat16, requires_grad=True),
        "aux": {"scale_0": {"depth": torch.ones(1, dtype=torch.float16)}, "ids": torch.ones(1, dtype=torch.long)},
        "alpha": torch.ones(1, dtype=torch.float64),
        "per_modality": [torch.ones(1, dtype=torch.bfloat16)],
    }
    got = float32_outputs(out)
    assert got["semseg"].dtype == torch.float32 and got["semseg"].requires_grad  # still in the graph
    assert got["aux"]["scale_0"]["depth"].dtype == torch.float32
    assert got["aux"]["ids"].dtype == torch.long and got["alpha"].dtype == torch.float64
    assert got["per_modality"][0].dtype == torch.float32
    fp32 = torch.ones(1)
    assert float32_outputs({"x": fp32})["x"] is fp32  # no copy when nothing changes


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(4, 3, 4, 4, generator=g) * 3
    depth = torch.rand(4, 1, 4, 4, generator=g) + 0.5
    whole = [{"inputs": {"rgb": rgb}, "targets": {"depth": depth}}]
    halves = [{"inputs": {"rgb": rgb[i : i + 2]}, "targets": {"depth": depth[i : i + 2]}} for i in (0, 2)]
    results = []
    for batches, accum in ((whole, 1), (halves, 2)):
        model = _Scale()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = []
        train_epoch(
            model,
            batches,
            MultiTaskLoss(["depth"]),
            opt,
            lambda s, seen=steps: seen.append(s) or 0.1,
            torch.device("cpu"),
            grad_accum=accum,
        )
        results.append((model.w.detach().clone(), steps))
    (w_whole, steps_whole), (w_accum, steps_accum) = results
    assert not torch.equal(w_whole, torch.ones(1))  # the step moved the weight
    torch.testing.assert_close(w_accum, w_whole)
    assert steps_whole == steps_accum == [0]  # one optimizer step (and its lr) per accumulated batch


@pytest.mark.parametrize("length", ["known", "iterator"])
def test_a_last_shorter_accumulation_group_steps_on_its_own_mean(length):
    # Three batches, grad_accum 2: a step on the mean of batches 0-1, then one on batch 2 alone (its
    # gradient was dropped before). SGD without momentum, so each step is w -= lr * grad.
    g = torch.Generator().manual_seed(1)
    batches = [
        {
            "inputs": {"rgb": torch.rand(2, 3, 4, 4, generator=g) * 3},
            "targets": {"depth": torch.rand(2, 1, 4, 4, generator=g) + 0.5},
        }
        for _ in range(3)
    ]
    crit = MultiTaskLoss(["depth"])

    def grad(model, group):
        model.zero_grad()
        torch.stack([crit(model(b["inputs"]), b["targets"])[0] for b in group]).mean().backward()
        return model.w.grad.clone()

    expected = _Scale()
    for group in (batches[:2], batches[2:]):
        step = 0.1 * grad(expected, group)
        with torch.no_grad():
            expected.w -= step
    model = _Scale()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    loader = batches if length == "known" else iter(batches)
    train_epoch(model, loader, crit, opt, lambda s: steps.append(s) or 0.1, torch.device("cpu"), grad_accum=2)
    torch.testing.assert_close(model.w.detach(), expected.w.detach())
    assert steps == [0, 1]  # ceil(3 / 2) steps
    assert model.w.grad is None  # nothing left over for the next epoch


def test_accumulation_under_ddp_needs_the_batch_count():
    class _DDPLike(_Scale):
        def no_sync(self):
            from contextlib import nullcontext

            return nullcontext()

    model = _DDPLike()
    batch = {"inputs": {"rgb": torch.ones(1, 3, 2, 2)}, "targets": {"depth": torch.ones(1, 1, 2, 2)}}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="grad_accum > 1 under DDP needs num_batches"):
        train_epoch(model, iter([batch]), MultiTaskLoss(["depth"]), opt, None, torch.device("cpu"), grad_accum=2)
    with pytest.raises(RuntimeError, match="ended after 1 batches, inside a gradient accumulation group"):
        train_epoch(
            model, iter([batch]), MultiTaskLoss(["depth"]), opt, None, torch.device("cpu"), grad_accum=2, num_batches=2
        )
    with pytest.raises(RuntimeError, match="more than num_batches = 1 batches"):
        train_epoch(
            model, iter([batch, batch]), MultiTaskLoss(["depth"]), opt, None, torch.device("cpu"), num_batches=1
        )


def test_poly_and_cosine_schedules():
    poly = load_config(None, ["optim.schedule=poly", "optim.warmup_epochs=1"])
    assert lr_factor(poly, 0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(poly, 10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(poly, 55, 100, 10) == pytest.approx(0.5**0.9)
    cos = load_config(None, ["optim.schedule=cosine"])
    assert lr_factor(cos, 50, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_lr_at_is_the_base_lr_times_the_schedule_over_the_runs_steps():
    from pipelines.train.steps import lr_at

    cfg = load_config(None, ["optim.lr=0.02", "optim.schedule=poly", "optim.warmup_epochs=1", "train.epochs=10"])
    # 10 steps per epoch: 10 warm-up steps, then poly over the remaining 90 of 100.
    assert lr_at(0, cfg, 10) == pytest.approx(0.002)
    assert lr_at(9, cfg, 10) == pytest.approx(0.02)
    assert lr_at(10, cfg, 10) == pytest.approx(0.02)
    assert lr_at(55, cfg, 10) == pytest.approx(0.02 * 0.5**0.9)
    assert lr_at(100, cfg, 10) == 0.0 and lr_at(120, cfg, 10) == 0.0  # the end of the schedule, and past it
    const = load_config(None, ["optim.lr=0.02", "optim.schedule=constant"])
    assert {lr_at(s, const, 7) for s in range(0, 200, 13)} == {0.02}


def test_invalid_experiment_lists_every_problem_before_ray(smoke_shards, tmp_path):
    from datasets.writer import write_dataset
    from tests.conftest import ToySource

    cfg = load_config(
        None,
        [
            f"data.shards={smoke_shards}",
            "model.name=nosuchnet",
            "data.tasks=[semseg]",
            "checkpoint.metric=val/depth/rmse",
            "train.batch_size=64",
        ],
    )
    with pytest.raises(ConfigError) as e:
        validate_experiment(cfg)
    msg = str(e.value)
    assert "unknown model 'nosuchnet'" in msg and "checkpoint.metric" in msg and "training samples" in msg
    # A bad model option is listed beside the data's problems, not only once they are fixed.
    cfg = load_config(
        None, [f"data.shards={smoke_shards}", "model.name=mtinet", "model.options={nosuch: 1}", "train.batch_size=64"]
    )
    with pytest.raises(ConfigError) as e:
        validate_experiment(cfg)
    assert "training samples" in str(e.value) and "unknown option(s) nosuch" in str(e.value)

    class NoDepth(ToySource):
        members = ["rgb", "semseg"]

        def load(self, split, key):
            s = super().load(split, key)
            return {k: s[k] for k in ("rgb", "semseg", "meta")}

    write_dataset(NoDepth(), tmp_path / "nd", progress=False)
    with pytest.raises(ConfigError, match=r"data.tasks: dataset .* lacks \['depth'\]"):
        validate_experiment(load_config(None, [f"data.shards={tmp_path / 'nd'}", "data.tasks=[semseg, depth]"]))


def test_settings_that_would_train_nothing_without_deep_supervision_are_refused(smoke_shards):
    base = [f"data.shards={smoke_shards}", "loss.deep_supervision=false", "train.batch_size=2"]
    with pytest.raises(
        ConfigError,
        match=r"loss.deep_supervision is false, but model mtinet learns its "
        r"auxiliary_tasks \['edge', 'normals'\] only through their aux losses",
    ):
        validate_experiment(
            load_config(None, [*base, "model.name=mtinet", "model.options={auxiliary_tasks: [normals, edge]}"])
        )
    cen = [
        *base,
        "model.name=cen",
        "data.tasks=[semseg]",
        "data.modalities=[rgb, depth]",
        "checkpoint.metric=val/semseg/miou",
    ]
    with pytest.raises(
        ConfigError,
        match=r"model cen trains its per-modality predictions only through their aux "
        r"losses: with detach_ensemble",
    ):
        validate_experiment(load_config(None, cen))
    validate_experiment(load_config(None, [*cen, "model.options={detach_ensemble: false}"]))  # the ensemble trains
    validate_experiment(load_config(None, [*base, "model.name=mtinet"]))  # aux heads unused: DDP is told


def test_a_local_tracking_store_is_refused_on_a_multi_node_cluster():
    from pipelines.track.tracker import check_store_for_cluster

    check_store_for_cluster("sqlite:///tmp/mlflow.db", num_nodes=1)
    check_store_for_cluster("http://10.0.0.5:5000", num_nodes=3)
    for uri in ("sqlite:///tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"):
        with pytest.raises(ConfigError, match=r"local store but the Ray cluster has 3 nodes.*mlflow server"):
            check_store_for_cluster(uri, num_nodes=3)


def test_the_best_checkpoint_is_never_one_with_a_nan_score():
    from types import SimpleNamespace

    from pipelines.track.run_record import best_checkpoint

    nan, good, worse, last = "nan", "good", "worse", "last"
    result = SimpleNamespace(
        checkpoint=last,
        metrics={"epoch": 3},
        best_checkpoints=[
            (nan, {"val/m": float("nan"), "epoch": 0}),
            (good, {"val/m": 0.5, "epoch": 1}),
            (worse, {"val/m": 0.2, "epoch": 2}),
        ],
    )
    assert best_checkpoint(result, "val/m", "max")[0] == good
    assert best_checkpoint(result, "val/m", "min")[0] == worse
    result.best_checkpoints = [(nan, {"val/m": float("inf"), "epoch": 0})]
    assert best_checkpoint(result, "val/m", "min") == (last, {"epoch": 3})  # no finite score: the last


def test_stored_configs_and_summaries_carry_no_tracking_password(tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    from pipelines.track.run_record import write_outputs
    from pipelines.track.tracker import redacted_config

    cfg = load_config(None, ["tracking.uri=http://alice:s3cret@mlflow.example:5000"])
    dumped = redacted_config(cfg)
    assert dumped["tracking"]["uri"] == "http://alice:***@mlflow.example:5000"
    assert cfg.tracking.uri == "http://alice:s3cret@mlflow.example:5000"  # the config itself keeps it
    # write_outputs reads the history from the real URI it is given, not from the redacted summary.
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "val/semseg/miou", 0.25, step=0)
    summary = {"mlflow_run_id": run.info.run_id, "tracking_uri": "http://alice:***@mlflow.example:5000"}
    write_outputs(summary, str(tmp_path / "train.json"), str(tmp_path / "history.csv"), tracking_uri=uri)
    assert json.loads((tmp_path / "train.json").read_text())["tracking_uri"] == "http://alice:***@mlflow.example:5000"
    assert (tmp_path / "history.csv").read_text().splitlines() == ["epoch,val/semseg/miou", "0,0.25"]


def test_a_resume_runs_at_the_configs_hyperparameters_with_the_checkpoints_moments_and_step():
    from pipelines.train.steps import load_optimizer_state

    def setup(lr, momentum, wd):
        model = _Scale()
        return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)

    def schedule(base):
        return lambda s: base / (1 + s)

    model, opt = setup(1e-3, 0.9, 1e-4)
    batch = {"inputs": {"rgb": torch.full((1, 3, 2, 2), 2.0)}, "targets": {"depth": torch.ones(1, 1, 2, 2)}}
    train_epoch(model, [batch] * 3, MultiTaskLoss(["depth"]), opt, schedule(1e-3), torch.device("cpu"))
    saved = {"optimizer": opt.state_dict()}
    buf = opt.state[model.w]["momentum_buffer"].clone()
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 3)  # the checkpoint's: its last step's

    model2, opt2 = setup(1e-5, 0.5, 0.0)  # the resumed config: a lower lr, other settings
    model2.load_state_dict(model.state_dict())
    load_optimizer_state(opt2, saved, "checkpoint")
    g = opt2.param_groups[0]
    assert g["lr"] == 1e-5 and g["momentum"] == 0.5 and g["weight_decay"] == 0.0
    torch.testing.assert_close(opt2.state[model2.w]["momentum_buffer"], buf)  # the moments are the checkpoint's
    used = []
    opt2.register_step_pre_hook(lambda o, args, kwargs: used.append(o.param_groups[0]["lr"]))
    train_epoch(model2, [batch] * 2, MultiTaskLoss(["depth"]), opt2, schedule(1e-5), torch.device("cpu"), first_step=3)
    assert used == pytest.approx(
        [1e-5 / 4, 1e-5 / 5]
    )  # the schedule goes on at the restored step, from the config's base


def _lambdalr_factor(cfg, step, total_steps, steps_per_epoch):
    """lr_factor as the worker's torch LambdaLR used it before lr_at replaced that scheduler (a copy,
    so that the reference below stays what it was)."""
    o = cfg.optim
    warm = o.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    if o.schedule == "poly":
        return (1.0 - t) ** o.poly_power
    if o.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def _lambdalr_learning_rates(cfg, steps_per_epoch, resume_after=None):
    """The lr of every optimizer step and the ``lr`` metric of every epoch as the worker had them with a torch
    LambdaLR: the scheduler stepped after every optimizer step, the metric was the optimizer's lr after the
    epoch, and a resume loaded the optimizer's and the scheduler's state dicts, then set the lr to the
    base lr times the schedule at the scheduler's step (``resume_after``: resume after that epoch)."""
    total = steps_per_epoch * cfg.train.epochs

    def make():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lambdalr_factor(cfg, s, total, steps_per_epoch))

    opt, sched = make()
    used, logged = [], []
    for epoch in range(cfg.train.epochs):
        for _ in range(steps_per_epoch):
            used.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        logged.append(opt.param_groups[0]["lr"])
        if epoch == resume_after:
            saved = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
            opt, sched = make()
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            opt.param_groups[0]["lr"] = cfg.optim.lr * sched.lr_lambdas[0](sched.last_epoch)
    return used, logged


@pytest.mark.parametrize("resume_after", [None, 0, 1])
@pytest.mark.parametrize(
    "options",
    [
        ["optim.schedule=poly"],
        ["optim.schedule=poly", "optim.warmup_epochs=1"],
        ["optim.schedule=poly", "optim.warmup_epochs=2", "optim.poly_power=2.5"],
        ["optim.schedule=cosine"],
        ["optim.schedule=cosine", "optim.warmup_epochs=1"],
        ["optim.schedule=constant"],
        ["optim.schedule=constant", "optim.warmup_epochs=3"],
        ["optim.schedule=poly", "optim.warmup_epochs=5"],  # warm-up longer than the run
    ],
)
def test_lr_at_gives_the_learning_rates_of_the_lambdalr_schedule_it_replaced(options, resume_after):
    import functools

    from pipelines.train.steps import load_optimizer_state, lr_at

    cfg = load_config(None, [*options, "optim.name=sgd", "optim.lr=0.03", "train.epochs=4"])
    spe = 3
    expected_used, expected_logged = _lambdalr_learning_rates(cfg, spe, resume_after)
    schedule = functools.partial(lr_at, cfg=cfg, steps_per_epoch=spe)
    # Exactly (==): both are the base lr times the same factor.
    assert [schedule(s) for s in range(spe * cfg.train.epochs)] == expected_used
    assert [schedule((e + 1) * spe) for e in range(cfg.train.epochs)] == expected_logged  # what the worker logs

    # What train_epoch sets before each step, epoch by epoch from the epoch's first step, across a resume.
    batch = {"inputs": {"rgb": torch.full((1, 3, 2, 2), 2.0)}, "targets": {"depth": torch.ones(1, 1, 2, 2)}}
    used = []

    def optimizer(model):
        opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.9)
        opt.register_step_pre_hook(lambda o, args, kwargs: used.append(o.param_groups[0]["lr"]))
        return opt

    model = _Scale()
    opt = optimizer(model)
    for epoch in range(cfg.train.epochs):
        train_epoch(
            model,
            [batch] * spe,
            MultiTaskLoss(["depth"]),
            opt,
            schedule,
            torch.device("cpu"),
            epoch=epoch,
            first_step=epoch * spe,
        )
        if epoch == resume_after:
            saved = {"optimizer": opt.state_dict()}
            opt = optimizer(model)
            load_optimizer_state(opt, saved, "checkpoint")
    assert used == expected_used


def test_a_checkpoint_with_the_lambdalr_state_resumes_as_it_did(tmp_path):
    # Checkpoints written before lr_at hold the LambdaLR's state beside the optimizer's, and their param
    # groups LambdaLR's `initial_lr`. They resume; the scheduler state is not read, the step gives the
    # lr; the rest of the run trains exactly as the LambdaLR run would have.
    import functools

    from pipelines.checkpoints import load_train_state, save_checkpoint
    from pipelines.train.steps import load_optimizer_state, lr_at, make_optimizer

    cfg = load_config(None, ["optim.name=adam", "optim.lr=0.01", "optim.warmup_epochs=1", "train.epochs=3"])
    spe, total = 2, 6
    batch = {"inputs": {"rgb": torch.full((1, 3, 2, 2), 2.0)}, "targets": {"depth": torch.ones(1, 1, 2, 2)}}
    crit = MultiTaskLoss(["depth"])

    def lambdalr_epoch(model, opt, sched):  # the loop as it was: optimizer step, then scheduler step
        for _ in range(spe):
            crit(model(batch["inputs"]), batch["targets"])[0].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()

    old = _Scale()
    old_opt = make_optimizer(cfg, old)
    old_sched = torch.optim.lr_scheduler.LambdaLR(old_opt, lambda s: _lambdalr_factor(cfg, s, total, spe))
    lambdalr_epoch(old, old_opt, old_sched)
    save_checkpoint(
        tmp_path, old, {"epoch": 0}, {"optimizer": old_opt.state_dict(), "scheduler": old_sched.state_dict()}
    )
    state = load_train_state(tmp_path)
    assert "scheduler" in state and "initial_lr" in state["optimizer"]["param_groups"][0]
    for _ in (1, 2):  # the LambdaLR run goes on
        lambdalr_epoch(old, old_opt, old_sched)

    new = _Scale()
    new.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    opt = make_optimizer(cfg, new)
    load_optimizer_state(opt, state, str(tmp_path))
    assert "initial_lr" not in opt.param_groups[0]
    schedule = functools.partial(lr_at, cfg=cfg, steps_per_epoch=spe)
    for epoch in (1, 2):
        train_epoch(new, [batch] * spe, crit, opt, schedule, torch.device("cpu"), epoch=epoch, first_step=epoch * spe)
    assert torch.equal(new.w, old.w)
    assert opt.state[new.w]["step"] == old_opt.state[old.w]["step"] == total


def test_no_autocast_on_cpu():
    from pipelines.train.steps import _autocast

    with _autocast(torch.device("cpu"), True):  # bf16 autocast is for CUDA only
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_under_ddp_the_last_shorter_group_steps_when_the_batch_count_is_known():
    from contextlib import nullcontext

    class _DDPLike(_Scale):
        def no_sync(self):
            return nullcontext()

    model = _DDPLike()
    batch = {"inputs": {"rgb": torch.full((1, 3, 2, 2), 2.0)}, "targets": {"depth": torch.ones(1, 1, 2, 2)}}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    train_epoch(
        model,
        iter([batch] * 3),
        MultiTaskLoss(["depth"]),
        opt,
        lambda s, seen=steps: seen.append(s) or 0.1,
        torch.device("cpu"),
        grad_accum=2,
        num_batches=3,
    )
    assert steps == [0, 1]  # groups of 2 + 1: two steps


@pytest.mark.parametrize("workers,batch,refused", [(2, 9, True), (2, 8, False)])
def test_workers_times_batch_size_against_the_training_samples(smoke_shards, workers, batch, refused):
    cfg = load_config(None, [f"data.shards={smoke_shards}", f"train.workers={workers}", f"train.batch_size={batch}"])
    try:
        validate_experiment(cfg)
        message = ""
    except ConfigError as e:
        message = str(e)
    assert ("16 training samples < workers × batch_size = 18" in message) == refused  # the smoke data: 16


def test_adam_is_fused_only_for_gpu_parameters(monkeypatch):
    from pipelines.train.steps import make_optimizer

    model = nn.Conv2d(3, 4, 3)
    for name in ("adam", "adamw"):
        assert make_optimizer(load_config(None, [f"optim.name={name}"]), model).defaults["fused"] is None, name
    # A GPU model (is_cuda faked: CI has none) asks for the fused kernel; tests/pipelines/test_cuda.py
    # builds one on a real GPU.
    seen = {}
    monkeypatch.setattr(torch.optim, "Adam", lambda params, **kw: seen.update(kw) or kw)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    make_optimizer(load_config(None, ["optim.name=adam"]), model)
    assert seen["fused"] is True


def test_a_fused_optimizer_state_resumes_unfused_and_steps():
    # A GPU run's checkpoint (fused Adam) resumed on the CPU: the config's optimizer, not the
    # checkpoint's `fused`, must run (PyTorch's CPU fused Adam takes the same state, so fake the GPU side
    # with it).
    from pipelines.train.steps import keep_settings, optimizer_settings

    model = nn.Linear(2, 2)
    gpu_like = torch.optim.Adam(model.parameters(), fused=True)
    model(torch.randn(3, 2)).sum().backward()
    gpu_like.step()
    resumed = torch.optim.Adam(model.parameters())
    settings = optimizer_settings(resumed)
    resumed.load_state_dict(gpu_like.state_dict())
    assert resumed.param_groups[0]["fused"] is True
    keep_settings(resumed, settings)
    assert resumed.param_groups[0]["fused"] is None
    before = model.weight.detach().clone()
    resumed.step()
    assert not torch.equal(before, model.weight)


def test_model_diagnostics_are_logged_under_model_and_must_be_finite():
    class WithDiagnostics(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def diagnostics(self):
            return {"cen/exchanged/rgb": torch.tensor(self.value), "n": 3}

    assert model_diagnostics(WithDiagnostics(0.25)) == {"model/cen/exchanged/rgb": 0.25, "model/n": 3.0}
    assert model_diagnostics(nn.Linear(1, 1)) == {}  # the method is optional
    with pytest.raises(ValueError, match=r"model diagnostics: 'cen/exchanged/rgb' is nan"):
        model_diagnostics(WithDiagnostics(float("nan")))
