"""The train step's speed options on the tiny smoke model: no host sync per step, torch.compile,
channels_last and the device augmentation, each giving the eager step's losses."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from datasets.transforms import AugmentConfig, build_transform, to_tensors
from fusion import build_model
from fusion.losses import MultiTaskLoss
from pipelines.config import load_config, model_config
from pipelines.train.steps import NonFiniteLossError, device_augment, make_forward_loss, train_epoch
from tests import REPO_ROOT

TASKS = ["semseg", "depth", "normals", "edge"]
#: Tensor methods that make the host wait for the device (on a GPU) when called on a device tensor.
SYNCS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "nonzero"}


class SyncCounter(TorchFunctionMode):
    """Counts the calls of :data:`SYNCS` (through ``__torch_function__``, so it sees them on CPU tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _model(num_classes: int = 5):
    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["data.shards=/nonexistent"])
    torch.manual_seed(0)
    return build_model(model_config(cfg, num_classes=num_classes))


def _batches(n: int, size=(32, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = []
    for _ in range(n):
        normals = torch.nn.functional.normalize(torch.randn(2, 3, h, w, generator=g), dim=1)
        out.append(
            {
                "inputs": {"rgb": torch.randn(2, 3, h, w, generator=g)},
                "targets": {
                    "semseg": torch.randint(0, 5, (2, h, w), generator=g),
                    "depth": torch.rand(2, 1, h, w, generator=g) + 0.5,
                    "normals": normals,
                    "edge": (torch.rand(2, 1, h, w, generator=g) > 0.9).float(),
                },
            }
        )
    return out


def _epoch(model, batches, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    crit = MultiTaskLoss(TASKS)
    return train_epoch(model, batches, crit, opt, None, torch.device("cpu"), **kw)


def test_the_step_reads_nothing_from_the_device_per_batch():
    """The host reads from the device a fixed number of times per epoch, whatever its length."""
    counts = []
    for n in (2, 5):
        counter = SyncCounter()
        with counter:
            _epoch(_model(), _batches(n))
        counts.append(counter.calls)
    assert counts[0] == counts[1], counts  # nothing per batch
    # After the loop: one transfer from the device; the rest reads the host copy it made.
    assert counts[1].count("cpu") == 1 and counts[1][0] == "cpu", counts[1]


def test_a_non_finite_loss_is_named_at_the_end_of_the_epoch_with_its_first_batch():
    batches = _batches(3)
    batches[1]["targets"]["depth"][0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"epoch 4, batch 1: task\(s\) depth, scale_0/depth, .* = inf, inf"):
        _epoch(_model(), batches, epoch=4)


def test_channels_last_gives_the_same_losses():
    base = _model()
    eager = _epoch(copy.deepcopy(base), _batches(1))
    cl = _epoch(copy.deepcopy(base).to(memory_format=torch.channels_last), _batches(1), channels_last=True)
    assert set(eager) == set(cl)
    for k in eager:
        if k.startswith("train/loss/"):  # the same weights: float32 rounding of other conv kernels only
            assert cl[k] == pytest.approx(eager[k], rel=1e-4, abs=1e-6), k


def test_a_compiled_step_gives_the_eager_losses():
    """Dynamo and AOTAutograd capture the step (forward, loss, backward) with ``aot_eager``. The smoke
    model's single-task sibling keeps it to a minute on two cores: tracing the smoke MTI-Net takes about
    four, and inductor's C++ kernel build more (benchmarks/gpu_suite.sh runs inductor on the GPU)."""
    cfg = load_config(
        REPO_ROOT / "configs" / "smoke.yaml",
        ["data.shards=/nonexistent", "model.name=single_task", "data.tasks=[depth]"],
    )
    torch.manual_seed(0)
    base = build_model(model_config(cfg, num_classes=5))
    eager_model, compiled_model = copy.deepcopy(base), copy.deepcopy(base)
    crit = MultiTaskLoss(["depth"])
    device = torch.device("cpu")
    # One batch: the losses of the same weights, then the weights after one step.
    batches = _batches(1)
    for b in batches:
        b["targets"] = {"depth": b["targets"]["depth"]}

    def epoch(model, fl):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        return train_epoch(model, batches, crit, opt, None, device, forward_loss=fl)

    eager = epoch(eager_model, make_forward_loss(eager_model, crit, device))
    compiled = epoch(
        compiled_model, make_forward_loss(compiled_model, crit, device, compile_mode="default", backend="aot_eager")
    )
    assert set(compiled) == set(eager) and "train/loss/depth" in eager
    for k in eager:
        if k.startswith("train/loss/"):
            # AOTAutograd decomposes batch norm and the losses: float32 rounding; a wrong graph (a
            # missed term, a stale guard) is off by far more.
            assert compiled[k] == pytest.approx(eager[k], rel=1e-4, abs=1e-6), k
    for (name, p), q in zip(eager_model.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5, msg=name)


def test_device_augmentation_in_the_step_trains_on_the_cpu_paths_batches():
    """augment_on: device: the step warps the loader's raw batch; the losses are those of the CPU path's
    batch (the same warps), up to the tie pixels and rgb rounding tests/datasets/test_device_augment.py
    bounds."""
    from datasets.sources.synthetic import SyntheticSource

    src = SyntheticSource(num_train=2, num_val=1, height=48, width=64, seed=4)
    samples = [src.load("train", k) for k in src.keys("train")]
    cfg = AugmentConfig.model_validate({"hflip": 0.5, "rotate": {"degrees": 15, "p": 1.0}, "crop": (40, 56)})
    cpu_tf, dev_tf = build_transform(cfg, True), build_transform(cfg, True, on="device")

    def batch(tf):
        items = [tf(s, 11 + j) for j, s in enumerate(samples)]
        tens = [to_tensors(x, TASKS, ["rgb"]) for x in items]
        out = {
            "inputs": {"rgb": torch.stack([i["rgb"] for i, _ in tens])},
            "targets": {t: torch.stack([tt[t] for _, tt in tens]) for t in TASKS},
        }
        if "warp" in items[0]["meta"]:
            out["warp"] = torch.from_numpy(np.stack([x["meta"]["warp"] for x in items]))
            out["warp_size"] = torch.tensor([x["meta"]["warp_size"] for x in items])
        return out

    seen = []
    warp = device_augment("zero")

    def recording(b, inputs, targets):
        seen.append(warp(b, inputs, targets))
        return seen[-1]

    base = _model(len(src.classes))
    cpu_batch = batch(cpu_tf)
    on_cpu = _epoch(copy.deepcopy(base), [cpu_batch])
    on_dev = _epoch(copy.deepcopy(base), [batch(dev_tf)], batch_transform=recording)
    ((inputs, targets),) = seen
    for t in TASKS:  # what the forward saw: the CPU path's targets (no tie pixel in these two warps)
        assert torch.equal(targets[t], cpu_batch["targets"][t]) or t == "normals", t
    torch.testing.assert_close(targets["normals"], cpu_batch["targets"]["normals"], rtol=0, atol=1e-6)
    levels = (inputs["rgb"] - cpu_batch["inputs"]["rgb"]).abs() * 0.229 * 255
    assert levels.max() <= 1.0
    # The losses agree closely; the normals loss of an untrained net (predictions near 0, their direction
    # sensitive to any input change) moves most with rgb's rounding.
    for k in on_cpu:
        if k.startswith("train/loss/"):
            assert on_dev[k] == pytest.approx(on_cpu[k], rel=5e-2), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_step_never_syncs_the_host():
    """Under torch.cuda.set_sync_debug_mode("error") any synchronising op inside the batch loop raises."""
    device = torch.device("cuda")
    model = _model().to(device)
    crit = MultiTaskLoss(TASKS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    batches = [
        {
            "inputs": {k: v.pin_memory() for k, v in b["inputs"].items()},
            "targets": {k: v.pin_memory() for k, v in b["targets"].items()},
        }
        for b in _batches(4)
    ]

    def guarded():
        # On for the loop's batches only: the epoch's one read after them is allowed.
        for i, b in enumerate(batches):
            if i == 1:  # after the first batch, which may allocate and initialise (cuDNN, the optimizer)
                torch.cuda.set_sync_debug_mode("error")
            yield b
        torch.cuda.set_sync_debug_mode("default")

    try:
        out = train_epoch(model, guarded(), crit, opt, None, device, num_batches=len(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(out["train/loss/total"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            ["data.augment_on=device", "data.augment={color_jitter: {}}"],
            "augment_on: device warps on the device and has no photometric ops; data.augment sets color_jitter",
        ),
        (["train.compile=0"], "train.compile: must be false, 'default', 'reduce-overhead' or 'max-autotune'"),
        (["train.compile=true"], "train.compile: must be false, 'default', 'reduce-overhead' or 'max-autotune'"),
        (["loss.aux_resolution=half"], "loss.aux_resolution: Input should be 'target' or 'prediction'"),
    ],
)
def test_bad_speed_options_are_config_errors_naming_the_key(override, message):
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(REPO_ROOT / "configs" / "smoke.yaml", ["data.shards=/nonexistent", *override])
    assert message in str(e.value)


def test_the_speed_options_validate_and_default_off():
    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["data.shards=/nonexistent"])
    assert (cfg.train.compile, cfg.train.channels_last, cfg.data.augment_on, cfg.loss.aux_resolution) == (
        False,
        False,
        "cpu",
        "target",
    )
    cfg = load_config(
        REPO_ROOT / "configs" / "smoke.yaml",
        [
            "data.shards=/nonexistent",
            "train.compile=max-autotune",
            "train.channels_last=true",
            "data.augment_on=device",
            "loss.aux_resolution=prediction",
        ],
    )
    assert (cfg.train.compile, cfg.train.channels_last, cfg.data.augment_on, cfg.loss.aux_resolution) == (
        "max-autotune",
        True,
        "device",
        "prediction",
    )
