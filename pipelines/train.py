"""``fusionpipe train``: one Ray Train (V2) run of any registered model on any shard dataset.

The driver validates the config against the dataset and the model registry before Ray starts,
creates (or, for a run name that already has state, re-opens) the MLflow run, and starts a
``TorchTrainer``. Re-running with the same run name and storage path resumes from the latest
checkpoint: Ray Train V2 hands it to the workers through ``ray.train.get_checkpoint()``, and the
MLflow run id inside it makes the resumed run log into the same MLflow run, from the next epoch on.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from pipelines.config import ConfigError, ExperimentConfig, flatten
from pipelines.redact import redact_url_password
from pipelines.storage import checkpoint_uri, join, read_text, remove, write_text

log = logging.getLogger(__name__)
RUN_STATE = "fusionpipe-run.json"
# Testing hook for failure recovery: "EPOCH:RANK:MARKER_FILE" makes that rank exit hard once.
INJECT_FAILURE_ENV = "FUSIONPIPE_INJECT_FAILURE"


def validate_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Check everything that can be checked without Ray; returns the dataset manifest."""
    from datasets.manifest import ManifestError, load_manifest
    from fusion import build_model, list_models

    problems: list[str] = []
    cfg = cfg.resolved_paths()
    manifest: dict[str, Any] = {}
    try:
        manifest = load_manifest(cfg.data.shards)
    except ManifestError as e:
        problems.append(f"data.shards: {e}")
    from datasets.codec import MEMBERS

    no_member = [t for t in cfg.data.tasks if t not in MEMBERS]
    if no_member:
        problems.append(f"data.tasks: no shard member is registered for task(s) {no_member}; register one with "
                        "datasets.codec.register_member in a module listed in plugins")
    if manifest:
        for what in ("tasks", "modalities"):
            lacking = [x for x in getattr(cfg.data, what) if x not in manifest["members"]]
            if lacking:
                problems.append(f"data.{what}: dataset {cfg.data.shards} lacks {lacking}; it has {manifest['members']}")
        for split in (cfg.data.train_split, cfg.data.val_split):
            if split not in manifest["splits"]:
                problems.append(f"data: dataset has no split {split!r}; splits: {sorted(manifest['splits'])}")
        n_train = manifest["splits"].get(cfg.data.train_split, {}).get("num_samples", 0)
        if n_train and n_train < cfg.train.workers * cfg.train.batch_size:
            problems.append(f"train: {n_train} training samples < workers × batch_size = "
                            f"{cfg.train.workers * cfg.train.batch_size}")
    if cfg.model.name not in list_models():
        problems.append(f"model.name: unknown model {cfg.model.name!r}; registered: {', '.join(list_models())}")
    elif manifest:  # built even when the data has problems too: every problem is listed at once
        from pipelines.loop import model_config

        try:
            model = build_model(model_config(cfg, len(manifest["classes"])))
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"model: {e}")
        else:
            # A model whose aux losses are its only training signal for some part (nn.Module.needs_aux_losses).
            reason = getattr(model, "needs_aux_losses", None)
            if reason and not cfg.loss.deep_supervision:
                problems.append(f"loss.deep_supervision is false, but model {cfg.model.name} {reason}, or set "
                                "loss.deep_supervision true")
    aux = set(cfg.model.options.get("auxiliary_tasks") or [])
    final = [t for t in cfg.data.tasks if t not in aux]
    lacking_aux = sorted(aux - set(cfg.data.tasks))
    if lacking_aux:
        problems.append(f"model.options.auxiliary_tasks {lacking_aux} must also be in data.tasks (their targets)")
    metric_task = cfg.checkpoint.metric.split("/")[1] if cfg.checkpoint.metric.count("/") >= 2 else None
    if not cfg.checkpoint.metric.startswith("val/") or metric_task not in final:
        problems.append(f"checkpoint.metric: {cfg.checkpoint.metric!r} must be 'val/<task>/<metric>' for a final "
                        f"task in {final}")
    else:  # a misspelt metric name would otherwise surface only after the first epoch, or never
        from fusion.metrics import MetricSet

        names = sorted(f"val/{k}" for k in MetricSet([metric_task], max(1, len(manifest.get("classes", [])))).compute())
        if cfg.checkpoint.metric not in names:
            problems.append(f"checkpoint.metric: no metric {cfg.checkpoint.metric!r}; {metric_task} has "
                            f"{', '.join(names)}")
    if problems:
        raise ConfigError("invalid experiment:\n" + "\n".join(f"  - {p}" for p in problems))
    return manifest


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _maybe_inject_nan(spec: str | None, epoch: int, model: torch.nn.Module) -> None:
    """Tests: ``nan:EPOCH:TASK`` fills the parameters of TASK's output layers with NaN at that epoch."""
    if not spec or not spec.startswith("nan:"):
        return
    _, at_epoch, task = spec.split(":", 2)
    if int(at_epoch) == epoch:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f"heads.{task}." in name:
                    param.fill_(float("nan"))


def _maybe_inject_failure(spec: str | None, epoch: int, rank: int) -> None:
    if not spec or spec.startswith("nan:"):
        return
    at_epoch, at_rank, marker = spec.split(":", 2)
    if int(at_epoch) == epoch and int(at_rank) == rank and not Path(marker).exists():
        Path(marker).write_text(f"failed at epoch {epoch} rank {rank}\n")
        os._exit(1)


# Set (unless the user set them) before a local Ray starts, so its raylet and workers inherit them.
# A local Ray has no preemptible nodes, so Train V2's preemption watcher has nothing to watch; it
# costs an actor per run and logs a core-worker error line ("has constructor arguments in the object
# store and max_restarts > 0") at every start.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

def headline_metrics() -> list[str]:
    """The one number per task that the epoch line shows (the full set goes to MLflow): the metric
    each registered task enters Δm with, e.g. ``val/semseg/miou`` or a plugin task's."""
    from fusion.tasks import delta_m_directions

    return [f"val/{k}" for k in delta_m_directions()]


def epoch_line(metrics: dict[str, Any], epoch: int, epochs: int, checkpoint_metric: str) -> str:
    """The one line rank 0 prints per epoch: loss, the checkpoint metric, each task's headline
    metric, throughput and time. Metrics a run does not have are left out."""
    parts = [f"epoch {epoch + 1}/{epochs}"]
    if "train/loss/total" in metrics:
        parts.append(f"loss {metrics['train/loss/total']:.4f}")
    names = [checkpoint_metric] + [m for m in headline_metrics() if m != checkpoint_metric]
    parts += [f"{m} {metrics[m]:.4f}" for m in names if m in metrics]
    if "train/samples_per_s" in metrics:
        parts.append(f"{metrics['train/samples_per_s']:.1f} samples/s")
    if "train/epoch_s" in metrics:
        parts.append(f"{metrics['train/epoch_s']:.0f} s")
    return "  ".join(parts)


def quiet_ray_train_reports() -> None:
    """Silence Ray Train V2's per-report INFO line in this worker.

    Ray logs every ``ray.train.report`` with its whole metrics dict, one multi-kilobyte line per
    epoch and rank (24 lines for the main job). That logger is named by its file path, so
    ``LoggingConfig`` (which filters only ``ray.train.*`` loggers) does not reach it; its level is
    set here instead. :func:`epoch_line` says what matters. Ray's session log files keep the rest.
    """
    try:
        from ray.train.v2._internal.execution import context as ray_train_context
    except ImportError:  # another Ray layout: nothing to silence
        return
    reporter = getattr(ray_train_context, "logger", None)
    if isinstance(reporter, logging.Logger):
        reporter.setLevel(logging.WARNING)


FATAL = "fusionpipe-fatal.json"


def _fatal_path(storage: str, run_name: str) -> str:
    """Where a worker records an error that a retry cannot fix: beside the run's checkpoints, on a
    local path or an object store (:mod:`pipelines.storage`)."""
    return join(storage, run_name, FATAL)


def _record_fatal(location: str, error: Exception) -> None:
    write_text(location, json.dumps({"type": type(error).__name__, "message": str(error)}))


def _read_fatal(location: str) -> Exception | None:
    """The recorded error as its own class (one of :func:`_fatal_errors`), or None."""
    text = read_text(location)
    if text is None:
        return None
    info = json.loads(text)
    cls = {c.__name__: c for c in _fatal_errors()}.get(info["type"], RuntimeError)
    return cls(info["message"])


def _fatal_errors() -> tuple[type[Exception], ...]:
    """The errors a retry cannot fix."""
    from pipelines.checkpoints import CheckpointError
    from pipelines.loop import NonFiniteLossError

    return NonFiniteLossError, CheckpointError, ConfigError


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker.

    A non-finite loss, an incompatible checkpoint or a config that does not validate on the worker
    (a plugin this node cannot import) cannot be fixed by a retry: the worker records
    it beside the run's checkpoints before raising, a retried worker raises it again at once instead
    of training until it recurs, and the driver re-raises it as itself (:func:`run_training`).
    """
    fatal = _fatal_path(config["storage_path"], config["run_name"])
    earlier = _read_fatal(fatal)
    if earlier is not None:
        raise earlier
    try:
        _train_loop(config)
    except _fatal_errors() as e:
        _record_fatal(fatal, e)
        raise
    except Exception as e:
        from pipelines.tracking import TrackingStoreError, store_error

        cause = store_error(e)
        if cause is None:
            raise
        # MLflow's message names the URI it called: no password in what Ray logs and hands the driver.
        raise TrackingStoreError(redact_url_password(str(cause))) from None


def _train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from datasets.loader import ShardStream, make_loader
    from datasets.transforms import build_transform
    from fusion import build_model
    from fusion.losses import MultiTaskLoss
    from pipelines.checkpoints import (CheckpointError, check_compatible, load_model_state, load_train_state,
                                       read_meta, save_checkpoint)
    from pipelines.loop import (evaluate, keep_settings, lr_factor, make_optimizer, optimizer_settings, predict,
                                train_epoch, with_sync_batchnorm)

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
    criterion = MultiTaskLoss(mcfg["tasks"], cfg.loss.weights, deep_supervision=cfg.loss.deep_supervision,
                              ohem=cfg.loss.ohem)
    d = cfg.data
    common = dict(tasks=d.tasks, modalities=d.modalities, batch_size=cfg.train.batch_size, rank=rank,
                  world_size=world, num_workers=d.loader_workers, seed=cfg.train.seed, errors=d.errors)
    train_stream = ShardStream(d.shards, d.train_split, train=True, shuffle_buffer=d.shuffle_buffer,
                               transform=build_transform(d.augment, train=True), **common)
    val_stream = ShardStream(d.shards, d.val_split, train=False, transform=build_transform(d.augment, train=False),
                             **common)
    steps_per_epoch = math.ceil(train_stream.batches_per_rank / cfg.optim.grad_accum)  # a last, shorter group steps too
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, total_steps, steps_per_epoch))

    start_epoch = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as cdir:
            meta = read_meta(cdir)
            check_compatible(meta["model_config"], mcfg, str(cdir))
            if meta.get("mlflow_run_id") != run_id:
                raise CheckpointError(f"{cdir}: checkpoint belongs to MLflow run {meta.get('mlflow_run_id')}, "
                                      f"not {run_id}")
            if meta.get("optimizer", cfg.optim.name) != cfg.optim.name:
                raise CheckpointError(f"{cdir}: checkpoint was trained with optim.name {meta['optimizer']!r}, the "
                                      f"config says {cfg.optim.name!r}; resume with the same optimizer or use a "
                                      f"new run name")
            load_model_state(model, cdir)
            state = load_train_state(cdir)
            settings = optimizer_settings(optimizer)
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{cdir}: the optimizer state does not fit this config's optimizer: {e}") from e
            scheduler.load_state_dict(state["scheduler"])
            keep_settings(optimizer, scheduler, settings)  # the config's lr, weight decay, ... not the checkpoint's
            start_epoch = int(meta["epoch"]) + 1
    # Without deep supervision the aux heads (MTI-Net's and PAD-Net's initial predictions, ANN's stage-4
    # head, ...) get no gradient, and DDP must be told, or its second step fails waiting for them.
    unused_aux = not cfg.loss.deep_supervision and bool(getattr(model, "aux_weights", None))
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused_aux})

    tracker = None
    if rank == 0:
        log.info(f"training {mcfg['name']} on {world} worker{'s' if world > 1 else ''} ({device.type}), "
                 f"{steps_per_epoch} steps per epoch, from epoch {start_epoch + 1} of {cfg.train.epochs}")
        from pipelines.tracking import Tracker

        tracker = Tracker(config["tracking_uri"], run_id)
        # A worker that dies right after ray.train.report can take the report with it, so a retry may
        # redo an epoch whose metrics are already in MLflow: those steps are not logged again.
        already_logged = tracker.logged_steps("train/loss/total")
    num_classes = mcfg["num_classes"]
    for epoch in range(start_epoch, cfg.train.epochs):
        _maybe_inject_failure(config.get("inject_failure"), epoch, rank)
        _maybe_inject_nan(config.get("inject_failure"), epoch, model)
        train_stream.set_epoch(epoch)
        metrics = train_epoch(model, make_loader(train_stream, pin_memory=device.type == "cuda"), criterion,
                              optimizer, scheduler, device, grad_accum=cfg.optim.grad_accum, amp=cfg.train.amp,
                              clip_grad_norm=cfg.optim.clip_grad_norm, epoch=epoch,
                              num_batches=train_stream.batches_per_rank)
        metrics.update(evaluate(model, make_loader(val_stream), mcfg["tasks"], num_classes, device, amp=cfg.train.amp,
                                edge_max_dist=d.edge_max_dist))
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["epoch"] = epoch
        if tracker is not None and epoch not in already_logged:
            # Logged before the report: a Tune scheduler may stop the trial as soon as it sees the report.
            # A retry that redoes this epoch does not log it again.
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                meta = {"epoch": epoch, "mlflow_run_id": run_id, "model_config": mcfg, "metrics": metrics,
                        "tasks": d.tasks, "modalities": d.modalities, "classes": config["classes"],
                        "optimizer": cfg.optim.name}
                save_checkpoint(tmp, model, meta, {"optimizer": optimizer.state_dict(),
                                                   "scheduler": scheduler.state_dict()})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if rank == 0:
            # Through logging, not print: Ray Train patches print in workers and, where Ray has
            # wrapped sys.stdout, writes each printed line twice.
            log.info(epoch_line(metrics, epoch, cfg.train.epochs, cfg.checkpoint.metric))
        if tracker is not None and epoch not in already_logged:
            every = cfg.train.preview_every
            if every and (epoch % every == every - 1 or epoch == cfg.train.epochs - 1):
                _log_preview(tracker, model, val_stream, mcfg["tasks"], epoch, device, predict)


def _log_preview(tracker: Any, model: torch.nn.Module, stream: Any, tasks: list[str], epoch: int,
                 device: torch.device, predict: Any) -> None:
    from datasets.loader import make_loader
    from pipelines.loop import to_device
    from pipelines.previews import preview_grid

    batch = next(iter(make_loader(stream)), None)
    if batch is None:
        return
    inputs, targets = to_device(batch, device)
    outputs = predict(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = preview_grid(inputs, targets, outputs, tasks, Path(tmp) / f"epoch_{epoch:04d}.png")
        tracker.log_artifact(path, "previews")


def init_ray(cfg: ExperimentConfig, concurrent_runs: int = 1) -> None:
    """Join ``RAY_ADDRESS``, or start a local Ray big enough for ``concurrent_runs`` runs of ``cfg``.

    The local Ray always has its dashboard, listening on 127.0.0.1 only: it serves Ray's state API,
    which every Train V2 run polls once a second (its placement-group cleaner frees the workers of a
    run whose controller died, e.g. a Tune trial stopped early). Without it each poll fails and logs
    a warning, once a second for the whole run. A local Ray also gets :data:`LOCAL_RAY_ENV`.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        needed = math.ceil(concurrent_runs * cfg.train.workers * cfg.train.cpus_per_worker)
        start_local_ray(max(os.cpu_count() or 1, needed))


def start_local_ray(num_cpus: int, log_to_driver: bool = True) -> None:
    """Start a local Ray the way every fusionpipe command does (see :func:`init_ray`): dashboard on
    127.0.0.1, :data:`LOCAL_RAY_ENV` in the environment its processes inherit. The test suite's
    session cluster and the benchmarks start theirs through here too."""
    import ray

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=log_to_driver)


def _run_state(storage: str, run_name: str) -> str:
    """The run-state file's location: a path, or a URI on an object store (pipelines.storage)."""
    return join(storage, run_name, RUN_STATE)


def _record_resume(tracker: Any, cfg: ExperimentConfig, run_name: str, plugins: dict[str, str]) -> None:
    """Tag a resumed run: the Ray job, what this attempt changed (settings, plugin code), and drop the
    tags of plugins no longer listed."""
    from pipelines.tracking import PARAM_MAX, changed_plugins, changes_tag, config_changes, ray_job_tags

    tags = {**ray_job_tags(), "fusionpipe.resumed": "true"}
    run = tracker.client.get_run(tracker.run_id)
    logged = run.data.tags
    # MLflow params cannot change, so they stay the run's first config; what this attempt changed
    # (a lower optim.lr after a divergence, more train.epochs) is on record in a tag.
    differ = config_changes(run.data.params, flatten(cfg.model_dump(mode="json")))
    if differ:
        print(f"note: run {run_name!r} resumes with changed settings: "
              + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in differ.items())
              + " (tag fusionpipe.resume_changed; the params keep the first values)", file=sys.stderr)
        tags["fusionpipe.resume_changed"] = changes_tag(differ, PARAM_MAX)
    changed = changed_plugins(logged, plugins)
    stale = [k for k in logged if k.startswith("plugin.") and k not in plugins]  # plugins dropped since
    if changed and not any(k.startswith("plugin.") for k in logged) and "plugins" not in differ:
        # A run started before plugin code was tagged: record it now, there is nothing to compare.
        tags.update(plugins)
    elif changed:
        # Not refused (a fix to a plugin is a reason to resume), but on record: the run's epochs
        # before and after this point ran different plugin code. The plugin tags now name the code
        # that runs from here on; fusionpipe.plugins_changed keeps every plugin that ever changed.
        print(f"warning: run {run_name!r}: the code of plugin(s) {', '.join(changed)} changed since the run "
              "was last started; its earlier epochs ran other code (tag fusionpipe.plugins_changed)",
              file=sys.stderr)
        before = [n for n in logged.get("fusionpipe.plugins_changed", "").split(",") if n]
        tags.update(plugins)
        tags["fusionpipe.plugins_changed"] = ",".join(sorted(set(before) | set(changed)))
    tracker.set_tags(tags)
    for key in stale:
        tracker.client.delete_tag(tracker.run_id, key)


def _open_mlflow_run(cfg: ExperimentConfig, run_name: str, manifest: dict[str, Any],
                     extra_tags: dict[str, str] | None = None) -> tuple[Any, bool]:
    """Re-open the MLflow run recorded for ``run_name``, or create one with params, tags and inputs."""
    from pipelines.tracking import (Tracker, data_version, git_info, plugin_tags, ray_job_tags, redact_url_password,
                                    redacted_config)

    state = _run_state(cfg.checkpoint.storage_path, run_name)
    uri = cfg.tracking.uri
    plugins = plugin_tags(cfg.plugins)
    state_text = read_text(state)
    if state_text is not None:
        info = json.loads(state_text)
        tracker = Tracker(uri, info["mlflow_run_id"])
        tracker.client.update_run(tracker.run_id, status="RUNNING")
        _record_resume(tracker, cfg, run_name, plugins)
        return tracker, True
    tags = {"fusionpipe.model": cfg.model.name, "fusionpipe.run_name": run_name, **git_info(),
            **data_version(cfg.data.shards, cfg.data.rev), **plugins, **ray_job_tags(), **(extra_tags or {})}
    tracker = Tracker.create_run(uri, cfg.tracking.experiment, run_name, tags)
    tracker.log_params(flatten(cfg.model_dump(mode="json")))
    _log_dataset_input(tracker, cfg, manifest, tags["data.manifest_digest"])
    with tempfile.TemporaryDirectory() as tmp:
        import yaml

        p = Path(tmp) / "config.yaml"
        p.write_text(yaml.safe_dump(redacted_config(cfg), sort_keys=False))
        tracker.log_artifact(p)
    write_text(state, json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": redact_url_password(uri)}))
    return tracker, False


def _log_dataset_input(tracker: Any, cfg: ExperimentConfig, manifest: dict[str, Any], digest: str) -> None:
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    from mlflow.data.http_dataset_source import HTTPDatasetSource

    source = HTTPDatasetSource(url=Path(cfg.data.shards).as_uri())
    ds = MetaDataset(source=source, name=manifest.get("name", "dataset"), digest=digest[:32])
    tracker.client.log_inputs(tracker.run_id, datasets=[
        DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "train")])])


def _interruptible_trainer_cls() -> type:
    """``TorchTrainer`` that remembers a Ctrl-C. Ray Train V2 installs its own SIGINT handler during
    ``fit`` (it aborts the run, and ``fit`` then fails with an actor error); chaining a flag in front of it
    lets the driver mark the MLflow run KILLED, not FAILED."""
    import signal

    from ray.train.torch import TorchTrainer

    class InterruptibleTrainer(TorchTrainer):
        interrupted = False

        def _register_sigint_handler(self, controller: Any) -> None:
            super()._register_sigint_handler(controller)
            ray_handler = signal.getsignal(signal.SIGINT)

            def handler(signum: int, frame: Any) -> None:
                self.interrupted = True
                if callable(ray_handler):
                    ray_handler(signum, frame)

            signal.signal(signal.SIGINT, handler)

    return InterruptibleTrainer


def run_training(cfg: ExperimentConfig, run_name: str | None = None, *, extra_tags: dict[str, str] | None = None,
                 callbacks: list[Any] | None = None, inject_failure: str | None = None,
                 close_on_error: bool = True) -> dict[str, Any]:
    """Validate, train with Ray Train, log to MLflow; returns the run summary.

    ``extra_tags`` go on a new MLflow run (a Tune trial passes ``mlflow.parentRunId`` and its trial id);
    ``callbacks`` are Ray Train ``UserCallback``s (a Tune trial passes its ``TuneReportCallback``).
    ``close_on_error=False`` leaves the MLflow run open when training raises, for a caller that closes it.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from pipelines.cluster import alive_nodes, check_shared_storage
    from pipelines.data_versions import resolve_data_rev
    from pipelines.loop import model_config
    from pipelines.tracking import check_store_for_cluster

    cfg = resolve_data_rev(cfg)
    manifest = validate_experiment(cfg)
    cfg = cfg.resolved_paths()
    run_name = run_name or cfg.tracking.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    init_ray(cfg)
    check_store_for_cluster(cfg.tracking.uri, len(alive_nodes()))
    check_shared_storage(cfg.checkpoint.storage_path)
    tracker, resumed = _open_mlflow_run(cfg, run_name, manifest, extra_tags)
    fatal = _fatal_path(cfg.checkpoint.storage_path, run_name)
    remove(fatal)  # an earlier attempt's error; the config may have been fixed since
    mcfg = model_config(cfg, len(manifest["classes"]))
    trainer = _interruptible_trainer_cls()(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "model_config": mcfg, "classes": manifest["classes"],
                           "mlflow_run_id": tracker.run_id, "tracking_uri": cfg.tracking.uri,
                           "inject_failure": inject_failure or os.environ.get(INJECT_FAILURE_ENV),
                           "run_name": run_name, "storage_path": cfg.checkpoint.storage_path},
        scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name, storage_path=cfg.checkpoint.storage_path, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=cfg.failure.max_failures),
            # Ray Train's own INFO lines (worker group set-up, device moves) stay in Ray's log files.
            logging_config=LoggingConfig(log_level="WARNING"),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep,
                                               checkpoint_score_attribute=cfg.checkpoint.metric,
                                               checkpoint_score_order=cfg.checkpoint.mode)),
    )
    try:
        result = trainer.fit()
    except BaseException as e:
        interrupted = trainer.interrupted or isinstance(e, KeyboardInterrupt)
        if close_on_error:
            tracker.end("KILLED" if interrupted else "FAILED")
        if interrupted and not isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from e  # Ray Train aborted the run on Ctrl-C: report it as such
        recorded = _read_fatal(fatal)
        if recorded is not None:
            raise recorded from e  # the worker's own error, not Ray's wrapper around it
        raise
    if trainer.interrupted:
        if close_on_error:
            tracker.end("KILLED")
        raise KeyboardInterrupt
    try:
        return _finish_run(cfg, tracker, result, run_name, resumed)
    except BaseException as e:
        # Training is over and its checkpoints are kept; the run failed (or was interrupted) in what
        # follows (the artifact store, the model export): it must not stay RUNNING.
        if close_on_error:
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def _best_checkpoint(result: Any, metric: str, mode: str) -> tuple[Any, dict[str, Any]]:
    """The best of Ray's kept checkpoints by ``metric`` (a NaN or infinite score never wins), else the
    last one."""
    scored = [(c, m) for c, m in (result.best_checkpoints or [])
              if isinstance(m.get(metric), (int, float)) and math.isfinite(m[metric])]
    if not scored:
        return result.checkpoint, result.metrics
    return (max if mode == "max" else min)(scored, key=lambda cm: cm[1][metric])


def _finish_run(cfg: ExperimentConfig, tracker: Any, result: Any, run_name: str, resumed: bool) -> dict[str, Any]:
    """Log the best and last checkpoints and the final model, close the MLflow run; the run summary."""
    from pipelines.checkpoints import read_meta
    from pipelines.model_export import log_final_model
    from pipelines.tracking import redact_url_password

    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name}: training produced no checkpoint")
    best_ckpt, best_metrics = _best_checkpoint(result, cfg.checkpoint.metric, cfg.checkpoint.mode)
    best_at = checkpoint_uri(cfg.checkpoint.storage_path, best_ckpt.path)
    last_at = checkpoint_uri(cfg.checkpoint.storage_path, result.checkpoint.path)
    # as_directory: the directory itself on a local or mounted storage path, a downloaded copy from an
    # object store (Ray's Checkpoint.path there is a key inside the bucket, not a local path).
    with contextlib.ExitStack() as stack:
        best_dir = stack.enter_context(best_ckpt.as_directory())
        # Ray's Result hands out one Checkpoint object for the last and, when it scored best, the best
        # checkpoint: one download, one directory.
        same = best_ckpt is result.checkpoint or best_ckpt.path == result.checkpoint.path
        last_dir = best_dir if same else stack.enter_context(result.checkpoint.as_directory())
        last_meta = read_meta(last_dir)
        tracker.log_artifacts(best_dir, "checkpoints/best")
        tracker.log_artifacts(last_dir, "checkpoints/last")
        tracker.set_tags({"fusionpipe.best_checkpoint": best_at, "fusionpipe.last_checkpoint": last_at,
                          "fusionpipe.best_epoch": str(best_metrics.get("epoch"))})
        if cfg.tracking.log_model:
            h, w = _sample_hw(cfg)
            log_final_model(tracker, best_dir, read_meta(best_dir), (h, w))
    tracker.end("FINISHED")
    # meta.json stores a NaN metric (nothing to measure) as null: it is NaN again here.
    final = {k: math.nan if v is None else v for k, v in last_meta["metrics"].items() if k.startswith("val/")}
    # The summary is printed and written to files (outputs/train.json): no password in it.
    return {"run_name": run_name, "mlflow_run_id": tracker.run_id, "tracking_uri": redact_url_password(cfg.tracking.uri),
            "experiment": cfg.tracking.experiment, "resumed": resumed, "epochs": last_meta["epoch"] + 1,
            "best_checkpoint": best_at, "last_checkpoint": last_at,
            "best_metric": {cfg.checkpoint.metric: best_metrics.get(cfg.checkpoint.metric)},
            "final_metrics": final}


def write_outputs(summary: dict[str, Any], summary_path: str | None, history_path: str | None,
                  tracking_uri: str | None = None) -> None:
    """The summary JSON and a per-epoch CSV of every logged metric (for ``dvc plots``), atomically.

    The history is read from ``tracking_uri``, the run's real URI (the summary's has its password
    redacted), else from the summary's."""
    import csv
    import io

    from pipelines.tracking import Tracker

    from datasets.manifest import write_atomic
    from pipelines._output import dumps

    def put(path: str, text: str) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, text.encode())

    if summary_path:
        put(summary_path, dumps(summary, indent=2, sort_keys=True) + "\n")  # NaN -> null: strict JSON
    if history_path:
        tracker = Tracker(tracking_uri or summary["tracking_uri"], summary["mlflow_run_id"])
        keys = sorted(k for k in tracker.client.get_run(tracker.run_id).data.metrics if k != "epoch")
        rows: dict[int, dict[str, float]] = {}
        for k in keys:
            for m in tracker.client.get_metric_history(tracker.run_id, k):
                rows.setdefault(m.step, {})[k] = m.value
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["epoch", *keys])
        w.writeheader()
        for step in sorted(rows):
            w.writerow({"epoch": step, **rows[step]})
        put(history_path, buf.getvalue())


def _sample_hw(cfg: ExperimentConfig) -> tuple[int, int]:
    if cfg.data.augment.resize:
        return tuple(cfg.data.augment.resize)  # type: ignore[return-value]
    from datasets.inspect import read_samples

    s = read_samples(Path(cfg.data.shards), cfg.data.val_split, 1)[0]
    return s["rgb"].shape[:2] if "rgb" in s else s["depth"].shape[:2]
