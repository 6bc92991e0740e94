"""The training and evaluation steps, shared by Ray Train workers, ``evaluate`` and benchmarks.

Nothing here imports Ray: distributed reductions use ``torch.distributed`` when a process group
is up (Ray Train sets one up), so the same code runs in a plain single process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fusion.losses import MultiTaskLoss
from fusion.metrics import MetricSet, PerClassMetric
from pipelines.checkpoints import CheckpointError, unwrap
from pipelines.config import ExperimentConfig
from pipelines.progress import Progress


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the task."""


def make_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    # On a GPU, the fused kernel: the whole update in a few launches per step, with no host work per
    # parameter. The update is the same; only its rounding differs. A checkpoint's optimizer state
    # loads either way (keep_settings puts this config's `fused` back after a resume).
    fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    return cls(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused or None)


def optimizer_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's hyper-parameters (all but its parameters)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def keep_settings(optimizer: torch.optim.Optimizer, settings: list[dict[str, Any]]) -> None:
    """After a checkpoint's optimizer state was loaded: put back this config's hyper-parameters
    (``settings``, from :func:`optimizer_settings` before loading).

    ``load_state_dict`` restores the checkpoint's lr, weight decay, momentum and betas with the moments;
    a resume with a lower ``optim.lr`` (the fix for a diverged run) would otherwise go on at the old one.
    The moments are the checkpoint's; the lr of every step comes from :func:`lr_at`. Keys the config's
    optimizer does not have are dropped (``initial_lr``, which the torch scheduler of older checkpoints
    added).
    """
    for group, conf in zip(optimizer.param_groups, settings, strict=True):
        for k in [k for k in group if k != "params" and k not in conf]:
            del group[k]
        group.update(conf)


def load_optimizer_state(optimizer: torch.optim.Optimizer, train_state: Mapping[str, Any], where: str) -> None:
    """Load a checkpoint's ``train_state`` into ``optimizer`` (made from this config) and keep this config's
    hyper-parameters (:func:`keep_settings`).

    Only the optimizer's state is read. Checkpoints written while the schedule was a torch ``LambdaLR``
    also hold its state (``scheduler``); it is ignored: the step, which the epoch gives, gives the lr.
    """
    settings = optimizer_settings(optimizer)
    try:
        optimizer.load_state_dict(train_state["optimizer"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # the last two: not an optimizer state at all
        raise CheckpointError(f"{where}: the optimizer state does not fit this config's optimizer: {e}") from e
    keep_settings(optimizer, settings)


def lr_factor(cfg: ExperimentConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then poly (DeepLab/MTI-Net: (1 - t)^0.9), cosine or constant."""
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


def lr_at(step: int, cfg: ExperimentConfig, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step``, counted from 0 over the whole run (the first step of
    epoch e is ``e × steps_per_epoch``): ``optim.lr`` times :func:`lr_factor` over the run's
    ``steps_per_epoch × train.epochs`` steps.

    A function of the step alone, set on every param group before every step (:func:`train_epoch`): a
    resumed run needs no scheduler state, and a resume with another ``optim.lr`` or ``train.epochs``
    runs at that config's schedule from the restored step on.
    """
    return cfg.optim.lr * lr_factor(cfg, step, steps_per_epoch * cfg.train.epochs, steps_per_epoch)


def to_device(batch: Mapping[str, Any], device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch["inputs"].items()}
    targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
    return inputs, targets


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over every rank; the result is on ``t``'s device.

    NCCL (Ray Train's backend on GPU workers) reduces CUDA tensors only, so under NCCL a CPU tensor
    (the metric sums, the epoch's loss sums) travels through the rank's current GPU and back.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        work = t.to(reduce_device(t, dist.get_backend()), copy=True)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        t = work.to(t.device)
    return t


def reduce_device(t: Tensor, backend: str) -> torch.device:
    """Where ``t`` can be all-reduced: its own device, or the rank's current GPU for NCCL."""
    if backend == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def float32_outputs(outputs: Any) -> Any:
    """``outputs`` (nested dicts and lists of tensors, as models return them) with bf16/fp16 as float32."""
    if isinstance(outputs, Mapping):
        return {k: float32_outputs(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(float32_outputs(v) for v in outputs)
    if isinstance(outputs, Tensor) and outputs.is_floating_point() and outputs.dtype != torch.float64:
        return outputs.float()
    return outputs


def train_epoch(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    criterion: MultiTaskLoss,
    optimizer: torch.optim.Optimizer,
    lr_schedule: Callable[[int], float] | None,
    device: torch.device,
    *,
    grad_accum: int = 1,
    amp: bool = False,
    clip_grad_norm: float | None = None,
    epoch: int = 0,
    num_batches: int | None = None,
    first_step: int = 0,
    progress: Progress | None = None,
) -> dict[str, float]:
    """One pass; returns mean loss components over all ranks, samples/s and seconds.

    Before each optimizer step every param group's lr is set to ``lr_schedule(step)`` (e.g. :func:`lr_at`),
    ``step`` counting the run's steps: this epoch's first is ``first_step``. ``None`` leaves the lr as it is.

    With ``grad_accum`` = k the optimizer steps once per k batches, on the mean of their losses. When
    the epoch's batch count (``num_batches``, else ``len(loader)``) is not a multiple of k, its last,
    shorter group steps too, on the mean over its own batches: no batch's gradient is dropped, and an
    epoch takes ``ceil(num_batches / k)`` steps. Under DDP the count must be known, since the last
    batch of each group is the one whose gradients are all-reduced.

    ``progress`` (rank 0's, :class:`pipelines.progress.Progress` over the epoch's batches) is told after
    every batch; when a line is due it shows this rank's running mean loss, read from the device then only.
    """
    model.train()
    sums: dict[str, Tensor] = {}
    batches, samples = 0, 0
    if num_batches is None:
        try:
            num_batches = len(loader)  # type: ignore[arg-type]
        except TypeError:  # an iterable without a length (a DataLoader over an IterableDataset)
            pass
    if grad_accum > 1 and num_batches is None and hasattr(model, "no_sync"):
        raise ValueError(
            "train_epoch: grad_accum > 1 under DDP needs num_batches (the epoch's batch count), "
            "so that the last, shorter group still all-reduces its gradients"
        )
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    pending = 0  # batches whose gradients wait for a step
    step = first_step  # the run's count of optimizer steps, this epoch's next one
    for i, batch in enumerate(loader):
        inputs, targets = to_device(batch, device)
        group = i - i % grad_accum  # the index of this group's first batch
        if num_batches is not None and i >= num_batches:
            raise RuntimeError(f"train_epoch: the loader yielded more than num_batches = {num_batches} batches")
        group_size = grad_accum if num_batches is None else min(grad_accum, num_batches - group)
        last_micro = (i + 1) % grad_accum == 0 or (num_batches is not None and i + 1 == num_batches)
        sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with _autocast(device, amp):
                outputs = model(inputs)
            # The loss in float32, outside autocast: under it, the elementwise differences of the
            # depth and normals losses would be taken in bf16 (8 bits of mantissa).
            total, parts = criterion(float32_outputs(outputs), targets, model)
            if not torch.isfinite(total):
                bad = [k for k, v in parts.items() if k != "total" and not torch.isfinite(v)]
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, batch {i}: task(s) {', '.join(bad) or 'total'} = "
                    f"{', '.join(f'{parts[k].item()}' for k in bad) or total.item()}"
                )
            (total / group_size).backward()
        pending += 1
        if last_micro:
            _step(model, optimizer, lr_schedule, step, clip_grad_norm)
            step += 1
            pending = 0
        # Summed on the device: a float() here would make the host wait for the backward pass and the
        # optimizer step on a GPU, so the next batch could not be loaded meanwhile. (The loss still
        # syncs once per step, after the forward pass: the valid-pixel counts and the finiteness check.)
        for k, v in parts.items():
            sums[k] = sums[k] + v.detach().double() if k in sums else v.detach().double()
        batches += 1
        samples += next(iter(inputs.values())).shape[0]
        if progress is not None:
            progress.update(batches, samples, lambda n=batches: {"loss": float(sums["total"]) / n})
    if pending:
        # The loader ended inside a group (its length was not known, or was shorter than said): these
        # gradients were divided by group_size; step on their mean over the batches they came from.
        if hasattr(model, "no_sync"):
            raise RuntimeError(
                f"train_epoch: the loader ended after {batches} batches, inside a gradient "
                f"accumulation group; under DDP those gradients were never all-reduced"
            )
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(group_size / pending)
        _step(model, optimizer, lr_schedule, step, clip_grad_norm)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the epoch's time includes its last queued kernels
    seconds = time.perf_counter() - start
    keys = sorted(sums)
    red = all_reduce_sum(torch.tensor([float(sums[k]) for k in keys] + [batches, samples], dtype=torch.float64))
    n_batches, n_samples = red[-2].item(), red[-1].item()
    out = {f"train/loss/{k}": red[j].item() / max(1.0, n_batches) for j, k in enumerate(keys)}
    out["train/samples_per_s"] = n_samples / max(seconds, 1e-9)
    out["train/epoch_s"] = seconds
    return out


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_schedule: Callable[[int], float] | None,
    step: int,
    clip_grad_norm: float | None,
) -> None:
    if lr_schedule is not None:
        lr = lr_schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def with_sync_batchnorm(model: nn.Module, enabled: bool, world_size: int) -> nn.Module:
    """``model`` with every BatchNorm a ``SyncBatchNorm`` when ``enabled`` and there are several ranks.

    Batch statistics then come from the global batch (workers × batch size), as on one device: the
    paper set-ups' 2 images per GPU would otherwise normalise over 2. Parameter and buffer names do
    not change, so checkpoints load into the plain model and back.
    """
    if enabled and world_size > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics over ranks (integer buffers: take rank 0's).

    DDP broadcasts rank 0's buffers at the start of each forward, so after the last training step
    every rank holds slightly different running stats; evaluation and the checkpoint must agree.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    for buf in unwrap(model).buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
        else:
            dist.broadcast(buf, src=0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    tasks: list[str],
    num_classes: int,
    device: torch.device,
    amp: bool = False,
    edge_max_dist: float = 0.0075,
    *,
    per_class: PerClassMetric | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Exact metrics over every sample of every rank (sums all-reduced, then computed).

    ``per_class`` (:class:`fusion.metrics.PerClassMetric`), when given, is updated with every batch too
    and holds the sums of every rank afterwards (all-reduced with the others), so its per-class IoU and
    errors are exact under DDP. ``progress`` is told after every batch.
    """
    sync_buffers(model)
    net = unwrap(model)  # DDP's forward would broadcast buffers: a collective ranks may not match
    net.eval()
    metrics = MetricSet(tasks, num_classes=num_classes, edge_max_dist=edge_max_dist)
    batches, samples = 0, 0
    for batch in loader:
        inputs, targets = to_device(batch, device)
        with _autocast(device, amp):
            outputs = net(inputs)
        outputs = {t: outputs[t].float() for t in tasks}
        metrics.update(outputs, targets)
        if per_class is not None:
            per_class.update(outputs, targets)
        batches += 1
        samples += next(iter(inputs.values())).shape[0]
        if progress is not None:
            progress.update(batches, samples)
    state = metrics.state()
    if per_class is None:
        metrics.load_state(all_reduce_sum(state))
    else:  # one collective for both
        summed = all_reduce_sum(torch.cat([state, per_class.state()]))
        metrics.load_state(summed[: state.numel()])
        per_class.load_state(summed[state.numel() :])
    if progress is not None:
        progress.finish()
    return {f"val/{k}": v for k, v in metrics.compute().items()}


@torch.no_grad()
def predict(model: nn.Module, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    net = unwrap(model)
    net.eval()
    return net(dict(inputs))
