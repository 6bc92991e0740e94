"""Training-step behaviour without Ray: non-finite losses, schedules, validation before start."""
import math

import pytest
import torch
from torch import nn

from fusion.losses import MultiTaskLoss
from pipelines.config import ConfigError, load_config
from pipelines.train.steps import (NonFiniteLossError, float32_outputs, lr_factor, reduce_device, train_epoch,
                            with_sync_batchnorm)
from pipelines.train.driver import validate_experiment


class _Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, inputs):
        x = inputs["rgb"]
        depth = x[:, :1] * self.w * float("nan")
        return {"semseg": x[:, :2] * self.w, "depth": depth}


def test_nan_loss_names_the_task():
    batch = {"inputs": {"rgb": torch.ones(2, 3, 4, 4)},
             "targets": {"semseg": torch.zeros(2, 4, 4, dtype=torch.long), "depth": torch.ones(2, 1, 4, 4)}}
    model = _Bad()
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, batch 0: task\(s\) depth"):
        train_epoch(model, [batch], MultiTaskLoss(["semseg", "depth"]), torch.optim.SGD(model.parameters(), 0.1),
                    None, torch.device("cpu"), epoch=3)


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, inputs):
        return {"depth": inputs["rgb"][:, :1] * self.w}


def test_epoch_losses_are_means_over_batches_and_samples_are_counted():
    # Per-batch depth L1 losses of 1, 2 and 6 (targets 1, predictions 2/3/7): the epoch reports 3.
    batches = [{"inputs": {"rgb": torch.full((n, 3, 4, 4), v)}, "targets": {"depth": torch.ones(n, 1, 4, 4)}}
               for v, n in [(2.0, 2), (3.0, 3), (7.0, 2)]]
    model = _Scale()
    out = train_epoch(model, batches, MultiTaskLoss(["depth"]), torch.optim.SGD(model.parameters(), 0.0), None,
                      torch.device("cpu"))
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

    model = build_model({"name": "cen", "tasks": ["semseg"], "modalities": ["rgb", "depth"], "width": 0.125,
                         "num_classes": 3})
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
    out = {"semseg": torch.ones(1, 2, dtype=torch.bfloat16, requires_grad=True),
           "aux": {"scale_0": {"depth": torch.ones(1, dtype=torch.float16)}, "ids": torch.ones(1, dtype=torch.long)},
           "alpha": torch.ones(1, dtype=torch.float64), "per_modality": [torch.ones(1, dtype=torch.bfloat16)]}
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
    halves = [{"inputs": {"rgb": rgb[i:i + 2]}, "targets": {"depth": depth[i:i + 2]}} for i in (0, 2)]
    results = []
    for batches, accum in ((whole, 1), (halves, 2)):
        model = _Scale()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        train_epoch(model, batches, MultiTaskLoss(["depth"]), opt, sched, torch.device("cpu"), grad_accum=accum)
        results.append((model.w.detach().clone(), sched.last_epoch))
    (w_whole, steps_whole), (w_accum, steps_accum) = results
    assert not torch.equal(w_whole, torch.ones(1))  # the step moved the weight
    torch.testing.assert_close(w_accum, w_whole)
    assert steps_whole == steps_accum == 1  # one optimizer and scheduler step per accumulated batch


@pytest.mark.parametrize("length", ["known", "iterator"])
def test_a_last_shorter_accumulation_group_steps_on_its_own_mean(length):
    # Three batches, grad_accum 2: a step on the mean of batches 0-1, then one on batch 2 alone (its
    # gradient was dropped before). SGD without momentum, so each step is w -= lr * grad.
    g = torch.Generator().manual_seed(1)
    batches = [{"inputs": {"rgb": torch.rand(2, 3, 4, 4, generator=g) * 3},
                "targets": {"depth": torch.rand(2, 1, 4, 4, generator=g) + 0.5}} for _ in range(3)]
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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    loader = batches if length == "known" else iter(batches)
    train_epoch(model, loader, crit, opt, sched, torch.device("cpu"), grad_accum=2)
    torch.testing.assert_close(model.w.detach(), expected.w.detach())
    assert sched.last_epoch == 2  # ceil(3 / 2) steps
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
        train_epoch(model, iter([batch]), MultiTaskLoss(["depth"]), opt, None, torch.device("cpu"), grad_accum=2,
                    num_batches=2)
    with pytest.raises(RuntimeError, match="more than num_batches = 1 batches"):
        train_epoch(model, iter([batch, batch]), MultiTaskLoss(["depth"]), opt, None, torch.device("cpu"),
                    num_batches=1)


def test_poly_and_cosine_schedules():
    poly = load_config(None, ["optim.schedule=poly", "optim.warmup_epochs=1"])
    assert lr_factor(poly, 0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(poly, 10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(poly, 55, 100, 10) == pytest.approx(0.5 ** 0.9)
    cos = load_config(None, ["optim.schedule=cosine"])
    assert lr_factor(cos, 50, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_invalid_experiment_lists_every_problem_before_ray(smoke_shards, tmp_path):
    from datasets.writer import write_dataset
    from tests.conftest import ToySource

    cfg = load_config(None, [f"data.shards={smoke_shards}", "model.name=nosuchnet", "data.tasks=[semseg]",
                             "checkpoint.metric=val/depth/rmse", "train.batch_size=64"])
    with pytest.raises(ConfigError) as e:
        validate_experiment(cfg)
    msg = str(e.value)
    assert "unknown model 'nosuchnet'" in msg and "checkpoint.metric" in msg and "training samples" in msg
    # A bad model option is listed beside the data's problems, not only once they are fixed.
    cfg = load_config(None, [f"data.shards={smoke_shards}", "model.name=mtinet", "model.options={nosuch: 1}",
                             "train.batch_size=64"])
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
    with pytest.raises(ConfigError, match=r"loss.deep_supervision is false, but model mtinet learns its "
                                          r"auxiliary_tasks \['edge', 'normals'\] only through their aux losses"):
        validate_experiment(load_config(None, [*base, "model.name=mtinet",
                                               "model.options={auxiliary_tasks: [normals, edge]}"]))
    cen = [*base, "model.name=cen", "data.tasks=[semseg]", "data.modalities=[rgb, depth]",
           "checkpoint.metric=val/semseg/miou"]
    with pytest.raises(ConfigError, match=r"model cen trains its per-modality predictions only through their aux "
                                          r"losses: with detach_ensemble"):
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
    result = SimpleNamespace(checkpoint=last, metrics={"epoch": 3},
                             best_checkpoints=[(nan, {"val/m": float("nan"), "epoch": 0}),
                                               (good, {"val/m": 0.5, "epoch": 1}), (worse, {"val/m": 0.2, "epoch": 2})])
    assert best_checkpoint(result, "val/m", "max")[0] == good
    assert best_checkpoint(result, "val/m", "min")[0] == worse
    result.best_checkpoints = [(nan, {"val/m": float("inf"), "epoch": 0})]
    assert best_checkpoint(result, "val/m", "min") == (last, {"epoch": 3})  # no finite score: the last


def test_stored_configs_and_summaries_carry_no_tracking_password(tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    from pipelines.track.tracker import redacted_config
    from pipelines.track.run_record import write_outputs

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
    from pipelines.train.steps import keep_settings, optimizer_settings

    def setup(lr, momentum, wd):
        model = _Scale()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))

    model, opt, sched = setup(1e-3, 0.9, 1e-4)
    batch = {"inputs": {"rgb": torch.full((1, 3, 2, 2), 2.0)}, "targets": {"depth": torch.ones(1, 1, 2, 2)}}
    train_epoch(model, [batch] * 3, MultiTaskLoss(["depth"]), opt, sched, torch.device("cpu"))
    saved = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    buf = opt.state[model.w]["momentum_buffer"].clone()

    model2, opt2, sched2 = setup(1e-5, 0.5, 0.0)  # the resumed config: a lower lr, other settings
    model2.load_state_dict(model.state_dict())
    settings = optimizer_settings(opt2)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)  # what loading alone leaves: the old lr
    keep_settings(opt2, sched2, settings)
    g = opt2.param_groups[0]
    assert sched2.last_epoch == 3 and sched2.base_lrs == [1e-5]
    assert g["lr"] == pytest.approx(1e-5 / 4) and sched2.get_last_lr() == [g["lr"]]
    assert g["momentum"] == 0.5 and g["weight_decay"] == 0.0 and g["initial_lr"] == 1e-5
    torch.testing.assert_close(opt2.state[model2.w]["momentum_buffer"], buf)  # the moments are the checkpoint's
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-5 / 5)  # the schedule goes on from the config's base


def test_a_resume_with_changed_settings_is_on_record(tmp_path, smoke_shards, capsys):
    import json

    from mlflow.tracking import MlflowClient

    from pipelines.track.run_record import open_mlflow_run

    def cfg(*more):
        return load_config(None, [f"data.shards={smoke_shards}", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                                  f"checkpoint.storage_path={tmp_path}/ray", *more]).resolved_paths()

    manifest = json.loads((smoke_shards / "manifest.json").read_text())
    first, _ = open_mlflow_run(cfg("optim.lr=0.01"), "r", manifest)
    open_mlflow_run(cfg("optim.lr=0.01"), "r", manifest)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert "fusionpipe.resume_changed" not in client.get_run(first.run_id).data.tags
    assert "changed settings" not in capsys.readouterr().err
    again, resumed = open_mlflow_run(cfg("optim.lr=0.001", "train.epochs=40"), "r", manifest)
    assert resumed and again.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert json.loads(run.data.tags["fusionpipe.resume_changed"]) == {"optim.lr": ["0.01", "0.001"],
                                                                      "train.epochs": ["10", "40"]}
    assert run.data.params["optim.lr"] == "0.01"  # params are the run's first values
    assert "resumes with changed settings: optim.lr 0.01 -> 0.001, train.epochs 10 -> 40" in capsys.readouterr().err


def test_the_resume_changes_tag_is_valid_json_within_the_limit():
    import json

    from pipelines.track.tracker import changes_tag

    changes = {f"model.options.k{i:02d}": ["a" * 30, "b" * 30] for i in range(40)}
    assert json.loads(changes_tag(changes, 10_000)) == changes
    short = json.loads(changes_tag(changes, 500))
    assert len(changes_tag(changes, 500)) <= 500 and short["..."] == 40 - (len(short) - 1)
    assert all(short[k] == changes[k] for k in short if k != "...")


def test_a_padnet_checkpoint_from_before_the_fuse_layer_still_loads(tmp_path, smoke_shards):
    import json

    from fusion import build_model
    from pipelines.checkpoints import CheckpointError, check_compatible, load_model_state, read_meta, save_checkpoint
    from pipelines.config import model_config

    def cfg(*more):
        return load_config(None, [f"data.shards={smoke_shards}", "model.name=padnet", "model.width=0.125",
                                  "model.options={channels: 16}", *more])

    new = model_config(cfg(), 13)
    assert new["options"] == {"channels": 16, "fuse": True}  # recorded explicitly in every new checkpoint
    # A checkpoint written before the option existed: no fuse layer, no "fuse" in its meta.
    old_cfg = {**new, "options": {"channels": 16}}
    old_model = build_model({**old_cfg, "options": {"channels": 16, "fuse": False}})
    save_checkpoint(tmp_path / "old", old_model, {"epoch": 3, "model_config": old_cfg})
    assert json.loads((tmp_path / "old" / "meta.json").read_text())["model_config"]["options"] == {"channels": 16}
    meta = read_meta(tmp_path / "old")
    assert meta["model_config"]["options"] == {"channels": 16, "fuse": False}  # read as it was trained
    load_model_state(build_model(meta["model_config"]), tmp_path / "old")  # strict: every key fits
    with pytest.raises(CheckpointError, match=r"options: checkpoint .*'fuse': False.* vs config .*'fuse': True"):
        check_compatible(meta["model_config"], new, "old")
    check_compatible(meta["model_config"], model_config(cfg("model.options={channels: 16, fuse: false}"), 13), "old")


def test_checkpoint_meta_is_strict_json_with_a_nan_metric(tmp_path):
    import json

    from pipelines.checkpoints import read_meta, save_checkpoint

    save_checkpoint(tmp_path / "ck", torch.nn.Linear(2, 2),
                    {"epoch": 1, "metrics": {"val/edge/odsF": float("nan"), "val/semseg/miou": 0.25}})
    text = (tmp_path / "ck" / "meta.json").read_text()
    assert json.loads(text, parse_constant=pytest.fail)["metrics"] == {"val/edge/odsF": None, "val/semseg/miou": 0.25}
    assert read_meta(tmp_path / "ck")["metrics"]["val/edge/odsF"] is None


def _fake_two_ranks(monkeypatch, other_rank: torch.Tensor) -> None:
    """A world of two ranks in one process: the other rank contributes ``other_rank`` to every all-reduce."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.add_(other_rank.to(t.dtype)))


def test_all_reduce_sum_sums_the_ranks(monkeypatch):
    from pipelines.train.steps import all_reduce_sum

    _fake_two_ranks(monkeypatch, torch.tensor([1.0, 2.0]))
    assert all_reduce_sum(torch.tensor([3.0, 4.0])).tolist() == [4.0, 6.0]


def test_the_epoch_loss_is_the_mean_over_every_ranks_batches(monkeypatch):
    # This rank: one batch of depth loss 1. The other rank: two batches summing to 6 (depth, total,
    # batches, samples). The epoch's loss is 7 / 3, not this rank's 1 nor a mean of the ranks' means.
    _fake_two_ranks(monkeypatch, torch.tensor([6.0, 6.0, 2.0, 4.0], dtype=torch.float64))
    batch = {"inputs": {"rgb": torch.full((2, 3, 4, 4), 2.0)}, "targets": {"depth": torch.ones(2, 1, 4, 4)}}
    model = _Scale()
    out = train_epoch(model, [batch], MultiTaskLoss(["depth"]), torch.optim.SGD(model.parameters(), 0.0), None,
                      torch.device("cpu"))
    assert out["train/loss/depth"] == pytest.approx(7 / 3)


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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train_epoch(model, iter([batch] * 3), MultiTaskLoss(["depth"]), opt, sched, torch.device("cpu"), grad_accum=2,
                num_batches=3)
    assert sched.last_epoch == 2  # groups of 2 + 1: two steps


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
    scheduler = torch.optim.lr_scheduler.LambdaLR(resumed, lambda s: 1.0)
    settings = optimizer_settings(resumed)
    resumed.load_state_dict(gpu_like.state_dict())
    assert resumed.param_groups[0]["fused"] is True
    keep_settings(resumed, scheduler, settings)
    assert resumed.param_groups[0]["fused"] is None
    before = model.weight.detach().clone()
    resumed.step()
    assert not torch.equal(before, model.weight)
