"""What every Ray Train worker of a ``fusionpipe train`` run executes (:func:`train_loop_per_worker`).

The driver (:mod:`pipelines.train.driver`) hands each worker the validated config, the model config and
the MLflow run id. A worker builds the model, its data streams and optimizer, resumes from
``ray.train.get_checkpoint()`` when there is one (or, when that one is corrupt, from the newest intact
checkpoint of the run: :mod:`pipelines.train.resume`), and per epoch runs the caller's epoch hooks
(:class:`EpochHook`), trains, evaluates, reports metrics and a checkpoint to Ray, and (rank 0 only) logs
to MLflow and prints one line.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import ValidationError

from datasets.loader import ShardStream, make_loader
from datasets.transforms import build_transform
from fusion import build_model
from fusion.losses import MultiTaskLoss
from fusion.tasks import delta_m_directions
from pipelines.checkpoints import (
    CheckpointError,
    CorruptCheckpointError,
    apply_model_state,
    check_compatible,
    load_train_state,
    read_meta,
    read_model_state,
    save_checkpoint,
    unwrap,
)
from pipelines.compat import quiet_ray_train_reports, stop_system_metrics, system_metrics_monitor
from pipelines.config import ConfigError, ExperimentConfig
from pipelines.progress import Progress, format_duration, run_eta_s
from pipelines.storage import join, read_text, write_text
from pipelines.track.redact import redact_url_password
from pipelines.track.tracker import Tracker, TrackingStoreError, store_error
from pipelines.train.previews import preview_grid
from pipelines.train.resume import resume_from
from pipelines.train.steps import (
    NonFiniteLossError,
    device_augment,
    evaluate,
    load_optimizer_state,
    lr_at,
    make_forward_loss,
    make_optimizer,
    model_diagnostics,
    predict,
    to_device,
    train_epoch,
    with_sync_batchnorm,
)

log = logging.getLogger(__name__)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochHook(Protocol):
    """What a caller of :func:`pipelines.train.driver.run_training` may have every worker run at the start of
    each epoch, before the epoch trains: ``hook(epoch, rank, model)``, with ``model`` the model being
    trained (not its DDP wrapper). Hooks travel to the workers pickled, so a hook is a picklable callable:
    an instance of a class, or a function, defined at the top level of a module the workers can import."""

    def __call__(self, epoch: int, rank: int, model: torch.nn.Module) -> None: ...


def headline_metrics() -> list[str]:
    """The one number per task that the epoch line shows (the full set goes to MLflow): the metric
    each registered task enters Δm with, e.g. ``val/semseg/miou`` or a plugin task's."""
    return [f"val/{k}" for k in delta_m_directions()]


def epoch_line(
    metrics: dict[str, Any], epoch: int, epochs: int, checkpoint_metric: str, eta_s: float | None = None
) -> str:
    """The one line rank 0 prints per epoch: loss, the checkpoint metric, each task's headline
    metric, throughput, time and, with epochs left, the run's ETA (``eta_s``, :func:`run_eta_s`).
    Metrics a run does not have are left out."""
    parts = [f"epoch {epoch + 1}/{epochs}"]
    if "train/loss/total" in metrics:
        parts.append(f"loss {metrics['train/loss/total']:.4f}")
    names = [checkpoint_metric] + [m for m in headline_metrics() if m != checkpoint_metric]
    parts += [f"{m} {metrics[m]:.4f}" for m in names if m in metrics]
    if "train/samples_per_s" in metrics:
        parts.append(f"{metrics['train/samples_per_s']:.1f} samples/s")
    if "train/epoch_s" in metrics:
        parts.append(f"{metrics['train/epoch_s']:.0f} s")
    if eta_s is not None and epoch + 1 < epochs:
        parts.append(f"run ETA {format_duration(eta_s)}")
    return "  ".join(parts)


FATAL = "fusionpipe-fatal.json"
#: The MLflow tag on a run that resumed from an earlier checkpoint than its latest, which was corrupt.
FALLBACK_TAG = "fusionpipe.resume_fallback"
TAG_MAX = 5000  # within MLflow's limit on a tag value; a note this long has said what it must


def fatal_path(storage: str, run_name: str) -> str:
    """Where a worker records an error that a retry cannot fix: beside the run's checkpoints, on a
    local path or an object store (:mod:`pipelines.storage`)."""
    return join(storage, run_name, FATAL)


def _record_fatal(location: str, error: Exception) -> None:
    write_text(location, json.dumps({"type": type(error).__name__, "message": str(error)}))


def read_fatal(location: str) -> Exception | None:
    """The recorded error as its own class (one of :func:`_fatal_errors`), or None."""
    text = read_text(location)
    if text is None:
        return None
    info = json.loads(text)
    cls = {c.__name__: c for c in _fatal_errors()}.get(info["type"], RuntimeError)
    return cls(info["message"])


def _fatal_errors() -> tuple[type[Exception], ...]:
    """The errors a retry cannot fix. A corrupt checkpoint is one when no other checkpoint of the run is
    intact (:func:`pipelines.train.resume.resume_from` falls back to one when there is)."""
    return NonFiniteLossError, CheckpointError, CorruptCheckpointError, ConfigError


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker.

    A non-finite loss, an incompatible checkpoint, a run whose checkpoints are all corrupt or a config
    that does not validate on the worker (a plugin this node cannot import) cannot be fixed by a retry:
    the worker records it beside the run's checkpoints before raising, Ray ends the run without a retry
    (the driver's :func:`pipelines.compat.stop_on_fatal_error` callback), a retried worker (should one
    start before it acts) raises it again at once instead of training until it recurs, and the driver
    re-raises it as itself (:func:`pipelines.train.driver.run_training`).
    """
    fatal = fatal_path(config["storage_path"], config["run_name"])
    earlier = read_fatal(fatal)
    if earlier is not None:
        raise earlier
    try:
        _train_loop(config)
    except _fatal_errors() as e:
        _record_fatal(fatal, e)
        raise
    except Exception as e:
        cause = store_error(e)
        if cause is None:
            raise
        # MLflow's message names the URI it called: no password in what Ray logs and hands the driver.
        raise TrackingStoreError(redact_url_password(str(cause))) from None


def _train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    quiet_ray_train_reports()
    try:
        cfg = ExperimentConfig.model_validate(config["cfg"])
    except ValidationError as e:  # e.g. a plugin that the driver imported but this node cannot
        raise ConfigError(f"the config does not validate on Ray worker node {platform.node()}:\n{e}") from e
    mcfg, run_id = config["model_config"], config["mlflow_run_id"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))
    device = ray.train.torch.get_device()
    _seed_everything(cfg.train.seed)
    # On the device before the optimizer exists: a resumed optimizer's state (Adam's moments) is cast to
    # the device of the parameters it is loaded into, and must not stay on the CPU behind a GPU model.
    model = with_sync_batchnorm(build_model(mcfg), cfg.train.sync_batchnorm, world).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = MultiTaskLoss(
        mcfg["tasks"],
        cfg.loss.weights,
        deep_supervision=cfg.loss.deep_supervision,
        ohem=cfg.loss.ohem,
        aux_resolution=cfg.loss.aux_resolution,
    )
    d = cfg.data
    common = dict(
        tasks=d.tasks,
        modalities=d.modalities,
        batch_size=cfg.train.batch_size,
        rank=rank,
        world_size=world,
        num_workers=d.loader_workers,
        seed=cfg.train.seed,
        errors=d.errors,
    )
    train_stream = ShardStream(
        d.shards,
        d.train_split,
        train=True,
        shuffle_buffer=d.shuffle_buffer,
        transform=build_transform(d.augment, train=True, on=d.augment_on),
        **common,
    )
    val_stream = ShardStream(
        d.shards, d.val_split, train=False, transform=build_transform(d.augment, train=False), **common
    )
    steps_per_epoch = math.ceil(train_stream.batches_per_rank / cfg.optim.grad_accum)  # a last, shorter group steps too
    optimizer = make_optimizer(cfg, model)
    lr_schedule = functools.partial(lr_at, cfg=cfg, steps_per_epoch=steps_per_epoch)

    start_epoch, fallback_note = 0, None
    unlogged: list[list[Any]] = []  # metrics the tracking store had not taken when the checkpoint was written
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        # Ray's latest checkpoint, or the newest intact one of the run when that one is corrupt.
        resumed = resume_from(ckpt, functools.partial(_read_resume_state, mcfg=mcfg, run_id=run_id, cfg=cfg))
        meta, model_state, train_state = resumed.value
        apply_model_state(model, model_state, resumed.path)
        # The moments are the checkpoint's; lr, weight decay, ... the config's.
        load_optimizer_state(optimizer, train_state, resumed.path)
        start_epoch = meta["epoch"] + 1
        fallback_note = resumed.note(meta["epoch"])
        unlogged = meta.get("unlogged_metrics") or []
    # Without deep supervision the aux heads (MTI-Net's and PAD-Net's initial predictions, ANN's stage-4
    # head, ...) get no gradient, and DDP must be told, or its second step fails waiting for them.
    unused_aux = not cfg.loss.deep_supervision and bool(getattr(model, "aux_weights", None))
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused_aux})
    # Made once, so that a compiled step keeps its graphs across epochs.
    forward_loss = make_forward_loss(model, criterion, device, cfg.train.amp, cfg.train.compile)
    batch_transform = device_augment(d.augment.rgb_pad) if d.augment_on == "device" else None

    tracker = monitor = None
    if rank == 0:
        log.info(
            f"training {mcfg['name']} on {world} worker{'s' if world > 1 else ''} ({device.type}), "
            f"{steps_per_epoch} steps per epoch, from epoch {start_epoch + 1} of {cfg.train.epochs}"
        )

        tracker = Tracker(config["tracking_uri"], run_id, max_outage_s=cfg.tracking.max_outage_s)
        # A worker that dies right after ray.train.report can take the report with it, so a retry may
        # redo an epoch whose metrics are already in MLflow: those steps are not logged again. So do the
        # epochs that run again after a resume from an earlier checkpoint than the latest (which was
        # corrupt): their metrics stay those of the first time they ran.
        already_logged = tracker.logged_steps("train/loss/total")
        if fallback_note is not None:
            log.warning("resume: %s", fallback_note)
            tracker.set_tags({FALLBACK_TAG: fallback_note[:TAG_MAX]})
        tracker.requeue(unlogged, skip_steps=already_logged)
        if cfg.tracking.system_metrics:  # this machine's CPU, memory, GPU use as MLflow system/ metrics
            monitor = system_metrics_monitor(
                run_id, config["tracking_uri"], cfg.tracking.system_metrics_interval_s, resume=start_epoch > 0
            )
    num_classes = mcfg["num_classes"]
    hooks: list[EpochHook] = list(config.get("epoch_hooks") or [])
    every_s = float(config.get("progress_every_s", 30.0))
    started = time.monotonic()
    for epoch in range(start_epoch, cfg.train.epochs):
        for hook in hooks:
            hook(epoch, rank, unwrap(model))
        train_stream.set_epoch(epoch)
        # Rank 0's lines inside the epoch; the rate is its own times the ranks (they take equal shares).
        progress = (
            Progress(
                f"epoch {epoch + 1}/{cfg.train.epochs}", train_stream.batches_per_rank, log.info, every_s, scale=world
            )
            if rank == 0
            else None
        )
        metrics = train_epoch(
            model,
            make_loader(train_stream, pin_memory=device.type == "cuda"),
            criterion,
            optimizer,
            lr_schedule,
            device,
            grad_accum=cfg.optim.grad_accum,
            amp=cfg.train.amp,
            clip_grad_norm=cfg.optim.clip_grad_norm,
            epoch=epoch,
            num_batches=train_stream.batches_per_rank,
            first_step=epoch * steps_per_epoch,
            progress=progress,
            forward_loss=forward_loss,
            batch_transform=batch_transform,
            channels_last=cfg.train.channels_last,
        )
        metrics.update(
            evaluate(
                model,
                make_loader(val_stream),
                mcfg["tasks"],
                num_classes,
                device,
                amp=cfg.train.amp,
                edge_max_dist=d.edge_max_dist,
                miou_classes=d.miou_classes,
                edge_protocol=d.val_edge_protocol,
            )
        )
        metrics.update(model_diagnostics(model))
        metrics["lr"] = lr_schedule((epoch + 1) * steps_per_epoch)  # the lr of the next epoch's first step
        metrics["epoch"] = epoch
        if tracker is not None and epoch not in already_logged:
            # Logged before the report: a Tune scheduler may stop the trial as soon as it sees the report.
            # A retry that redoes this epoch does not log it again.
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                meta = {
                    "epoch": epoch,
                    "mlflow_run_id": run_id,
                    "model_config": mcfg,
                    "metrics": metrics,
                    "tasks": d.tasks,
                    "modalities": d.modalities,
                    "classes": config["classes"],
                    "optimizer": cfg.optim.name,
                    # Buffered while the tracking store is down: a retry or resume from here sends them.
                    "unlogged_metrics": tracker.unlogged() if tracker is not None else [],
                }
                save_checkpoint(tmp, model, meta, {"optimizer": optimizer.state_dict()})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if rank == 0:
            # Through logging, not print: Ray Train patches print in workers and, where Ray has
            # wrapped sys.stdout, writes each printed line twice.
            eta = run_eta_s(time.monotonic() - started, epoch + 1 - start_epoch, cfg.train.epochs - epoch - 1)
            log.info(epoch_line(metrics, epoch, cfg.train.epochs, cfg.checkpoint.metric, eta_s=eta))
        if tracker is not None and epoch not in already_logged:
            every = cfg.train.preview_every
            if every and (epoch % every == every - 1 or epoch == cfg.train.epochs - 1):
                _log_preview(tracker, model, val_stream, mcfg["tasks"], epoch, device, predict)
    if monitor is not None:
        stop_system_metrics(monitor)
    if tracker is not None:
        tracker.flush(wait=True)  # what an outage of the tracking store left buffered, within its bound


def _read_resume_state(
    cdir: Path, mcfg: dict[str, Any], run_id: str, cfg: ExperimentConfig
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's meta, model state and training state, each verified, once it is known to be this
    run's and to fit this config. A damaged file raises :class:`CorruptCheckpointError` (another
    checkpoint of the run may be intact); a checkpoint of another run, model or optimizer, a
    :class:`CheckpointError`."""
    meta = read_meta(cdir, require=("model_config",))
    check_compatible(meta["model_config"], mcfg, str(cdir))
    if meta.get("mlflow_run_id") != run_id:
        raise CheckpointError(f"{cdir}: checkpoint belongs to MLflow run {meta.get('mlflow_run_id')}, not {run_id}")
    if meta.get("optimizer", cfg.optim.name) != cfg.optim.name:
        raise CheckpointError(
            f"{cdir}: checkpoint was trained with optim.name {meta['optimizer']!r}, the "
            f"config says {cfg.optim.name!r}; resume with the same optimizer or use a "
            f"new run name"
        )
    return meta, read_model_state(cdir), load_train_state(cdir)


def _log_preview(
    tracker: Any, model: torch.nn.Module, stream: Any, tasks: list[str], epoch: int, device: torch.device, predict: Any
) -> None:
    batch = next(iter(make_loader(stream)), None)
    if batch is None:
        return
    inputs, targets = to_device(batch, device)
    outputs = predict(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = preview_grid(inputs, targets, outputs, tasks, Path(tmp) / f"epoch_{epoch:04d}.png")
        tracker.log_optional_artifact(path, "previews")
