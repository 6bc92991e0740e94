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

from datasets.device_augment import warp_batch
from fusion.inference import OFFICIAL_STRIDE_RATIO, predict_tta
from fusion.losses import MultiTaskLoss
from fusion.metrics import MetricSet, PerClassMetric
from pipelines.checkpoints import CheckpointError, unwrap
from pipelines.config import ExperimentConfig
from pipelines.progress import Progress


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the task."""


#: ``forward_loss(inputs, targets) -> (total, parts)``: the model's forward and the loss of one batch.
ForwardLoss = Callable[[dict[str, Tensor], dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]
#: ``batch_transform(batch, inputs, targets) -> (inputs, targets)``: work on a batch once it is on the device.
BatchTransform = Callable[[Mapping[str, Any], dict[str, Tensor], dict[str, Tensor]], tuple[dict, dict]]


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


def channels_last_inputs(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The 4-D inputs (images, depth) in the channels-last memory format (``train.channels_last``)."""
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in inputs.items()}


def device_augment(rgb_pad: str = "zero") -> BatchTransform:
    """The batch transform of ``data.augment_on: device``: the loader's ``batch["warp"]`` and
    ``batch["warp_size"]`` applied to the batch on its device (:func:`datasets.device_augment.warp_batch`)."""

    def transform(batch: Mapping[str, Any], inputs: dict[str, Tensor], targets: dict[str, Tensor]):
        if "warp" not in batch:
            raise ValueError("data.augment_on: device, but the loader's batch has no 'warp' (a WarpSampler draws it)")
        return warp_batch(inputs, targets, batch["warp"], batch["warp_size"], rgb_pad=rgb_pad)

    return transform


def make_forward_loss(
    model: nn.Module,
    criterion: MultiTaskLoss,
    device: torch.device,
    amp: bool = False,
    compile_mode: str | bool = False,
    backend: str = "inductor",
) -> ForwardLoss:
    """The forward pass and the loss of one batch, as one function; ``compile_mode`` (``train.compile``:
    ``"default"``, ``"reduce-overhead"``, ``"max-autotune"``) has ``torch.compile`` compile it, once per
    run: the function is made once and keeps its compiled graphs across epochs. ``backend`` is
    ``torch.compile``'s (``"aot_eager"`` captures the same graphs without generating kernels: the CPU tests
    use it, since inductor's C++ build of the smoke model takes minutes on two cores)."""

    def forward_loss(inputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        with _autocast(device, amp):
            outputs = model(inputs)
        # The loss in float32, outside autocast: under it, the elementwise differences of the
        # depth and normals losses would be taken in bf16 (8 bits of mantissa).
        return criterion(float32_outputs(outputs), targets, model)

    if compile_mode:
        mode = None if compile_mode == "default" or backend != "inductor" else compile_mode
        return torch.compile(forward_loss, mode=mode, backend=backend)
    return forward_loss


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
    forward_loss: ForwardLoss | None = None,
    batch_transform: BatchTransform | None = None,
    channels_last: bool = False,
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

    ``forward_loss`` (:func:`make_forward_loss`, compiled or not) runs the model and the loss; by default
    an eager one. ``batch_transform`` (e.g. :func:`device_augment`) runs on each batch once it is on the
    device, before ``channels_last`` puts its images in that memory format.

    The loop does not wait for the device: losses are summed and a non-finite loss is noted on the
    device, and the host reads them once, after the last batch. So a :class:`NonFiniteLossError` (naming
    the first batch whose loss was not finite, and its tasks) comes at the end of the epoch, before any
    metric or checkpoint of it is reported.

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
    if forward_loss is None:
        forward_loss = make_forward_loss(model, criterion, device, amp)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first batch with a non-finite loss
    first_bad_parts: Tensor | None = None  # that batch's loss components
    part_names: list[str] = []
    step = first_step  # the run's count of optimizer steps, this epoch's next one
    for i, batch in enumerate(loader):
        inputs, targets = to_device(batch, device)
        if batch_transform is not None:
            inputs, targets = batch_transform(batch, inputs, targets)
        if channels_last:
            inputs = channels_last_inputs(inputs)
        group = i - i % grad_accum  # the index of this group's first batch
        if num_batches is not None and i >= num_batches:
            raise RuntimeError(f"train_epoch: the loader yielded more than num_batches = {num_batches} batches")
        group_size = grad_accum if num_batches is None else min(grad_accum, num_batches - group)
        last_micro = (i + 1) % grad_accum == 0 or (num_batches is not None and i + 1 == num_batches)
        sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            total, parts = forward_loss(inputs, targets)
            # Noted on the device (no host sync per step); raised once the epoch's batches are done.
            if not part_names:
                part_names = sorted(parts)
            vals = torch.stack([parts[k].detach().float() for k in part_names])
            newly = (first_bad < 0) & ~torch.isfinite(total.detach())
            first_bad = torch.where(newly, i, first_bad)
            first_bad_parts = vals if first_bad_parts is None else torch.where(newly, vals, first_bad_parts)
            (total / group_size).backward()
        pending += 1
        if last_micro:
            _step(model, optimizer, lr_schedule, step, clip_grad_norm)
            step += 1
            pending = 0
        # Summed on the device: a float() here would make the host wait for the backward pass and the
        # optimizer step on a GPU, so the next batch could not be loaded meanwhile.
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
    # The epoch's one read from the device: the loss sums, and the first non-finite batch with its losses.
    local = torch.cat(
        [torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0, dtype=torch.float64, device=device)]
        + [first_bad.double().view(1)]
        + ([first_bad_parts.double()] if first_bad_parts is not None else [])
    ).cpu()
    if local[len(keys)] >= 0:
        bad_parts = dict(zip(part_names, local[len(keys) + 1 :].tolist(), strict=True))
        bad = [k for k, v in bad_parts.items() if k != "total" and not math.isfinite(v)]
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, batch {int(local[len(keys)])}: task(s) {', '.join(bad) or 'total'} = "
            f"{', '.join(f'{bad_parts[k]}' for k in bad) or bad_parts['total']}"
        )
    red = all_reduce_sum(torch.cat([local[: len(keys)], torch.tensor([batches, samples], dtype=torch.float64)]))
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


def model_diagnostics(model: nn.Module) -> dict[str, float]:
    """The model's ``diagnostics()`` (optional in the model contract: quantities of its current parameters,
    such as the channels CEN exchanges) as ``model/<name>`` metrics; ``{}`` for a model without it. Every
    DDP rank holds the same parameters, so every rank gets the same values."""
    fn = getattr(unwrap(model), "diagnostics", None)
    if fn is None:
        return {}
    out = {}
    for name, value in fn().items():
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"model diagnostics: {name!r} is {v}")
        out[f"model/{name}"] = v
    return out


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
    miou_classes: str = "present",
    edge_protocol: str = "bsds",
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
    metrics = MetricSet(
        tasks,
        num_classes=num_classes,
        edge_max_dist=edge_max_dist,
        miou_classes=miou_classes,
        edge_protocol=edge_protocol,
    )
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
def predict(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    *,
    tasks: list[str] | None = None,
    scales: list[float] | None = None,
    flip: bool = False,
    window: tuple[int, int] | None = None,
    stride_ratio: float = OFFICIAL_STRIDE_RATIO,
) -> dict[str, Tensor]:
    """The model's outputs in eval mode. With ``scales``, ``flip`` or ``window``, the predictions of
    ``tasks`` by multi-scale, flip and sliding-window inference (:func:`fusion.inference.predict_tta`)."""
    net = unwrap(model)
    net.eval()
    if scales is None and not flip and window is None:
        return net(dict(inputs))
    if not tasks:
        raise ValueError("predict: test-time augmentation needs the tasks to predict")
    return predict_tta(net, inputs, tasks, scales=scales or [1.0], flip=flip, window=window, stride_ratio=stride_ratio)
