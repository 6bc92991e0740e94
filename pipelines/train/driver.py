"""``fusionpipe train``: one Ray Train (V2) run of any registered model on any shard dataset.

The driver validates the config against the dataset and the model registry before Ray starts,
creates (or, for a run name that already has state, re-opens) the MLflow run, and starts a
``TorchTrainer``. Re-running with the same run name and storage path resumes from the latest
checkpoint: Ray Train V2 hands it to the workers through ``ray.train.get_checkpoint()``, and the
MLflow run id inside it makes the resumed run log into the same MLflow run, from the next epoch on.

What each worker runs is :mod:`pipelines.train.worker`; the MLflow side of a run (open, resume, finish,
outputs) is :mod:`pipelines.track.run_record`.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from datasets.codec import MEMBERS
from datasets.manifest import ManifestError, load_manifest
from fusion import build_model, list_models
from fusion.metrics import MetricSet
from pipelines.compat import LOCAL_RAY_ENV, interruptible_trainer_cls, ray_start_address, stop_on_fatal_error
from pipelines.config import ConfigError, ExperimentConfig, model_config
from pipelines.progress import progress_every_s
from pipelines.storage import remove
from pipelines.track.data_versions import resolve_data_rev
from pipelines.track.run_record import finish_run, open_run
from pipelines.track.tracker import check_store_for_cluster
from pipelines.train.cluster import alive_nodes, check_shared_storage
from pipelines.train.worker import EpochHook, fatal_path, read_fatal, train_loop_per_worker


def said(message: str) -> None:
    """One line on stderr about what the driver is doing (stdout may be a ``--json`` object)."""
    print(f"fusionpipe: {message}", file=sys.stderr, flush=True)


def validate_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Check everything that can be checked without Ray; returns the dataset manifest."""
    problems: list[str] = []
    cfg = cfg.resolved_paths()
    manifest: dict[str, Any] = {}
    try:
        manifest = load_manifest(cfg.data.shards)
    except ManifestError as e:
        problems.append(f"data.shards: {e}")

    no_member = [t for t in cfg.data.tasks if t not in MEMBERS]
    if no_member:
        problems.append(
            f"data.tasks: no shard member is registered for task(s) {no_member}; register one with "
            "datasets.codec.register_member in a module listed in plugins"
        )
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
            problems.append(
                f"train: {n_train} training samples < workers × batch_size = {cfg.train.workers * cfg.train.batch_size}"
            )
    if cfg.model.name not in list_models():
        problems.append(f"model.name: unknown model {cfg.model.name!r}; registered: {', '.join(list_models())}")
    elif manifest:  # built even when the data has problems too: every problem is listed at once
        try:
            model = build_model(model_config(cfg, len(manifest["classes"])))
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"model: {e}")
        else:
            # A model whose aux losses are its only training signal for some part (nn.Module.needs_aux_losses).
            reason = getattr(model, "needs_aux_losses", None)
            if reason and not cfg.loss.deep_supervision:
                problems.append(
                    f"loss.deep_supervision is false, but model {cfg.model.name} {reason}, or set "
                    "loss.deep_supervision true"
                )
    aux = set(cfg.model.options.get("auxiliary_tasks") or [])
    final = [t for t in cfg.data.tasks if t not in aux]
    lacking_aux = sorted(aux - set(cfg.data.tasks))
    if lacking_aux:
        problems.append(f"model.options.auxiliary_tasks {lacking_aux} must also be in data.tasks (their targets)")
    metric_task = cfg.checkpoint.metric.split("/")[1] if cfg.checkpoint.metric.count("/") >= 2 else None
    if not cfg.checkpoint.metric.startswith("val/") or metric_task not in final:
        problems.append(
            f"checkpoint.metric: {cfg.checkpoint.metric!r} must be 'val/<task>/<metric>' for a final task in {final}"
        )
    else:  # a misspelt metric name would otherwise surface only after the first epoch, or never
        names = sorted(f"val/{k}" for k in MetricSet([metric_task], max(1, len(manifest.get("classes", [])))).compute())
        if cfg.checkpoint.metric not in names:
            problems.append(
                f"checkpoint.metric: no metric {cfg.checkpoint.metric!r}; {metric_task} has {', '.join(names)}"
            )
    if problems:
        raise ConfigError("invalid experiment:\n" + "\n".join(f"  - {p}" for p in problems))
    return manifest


def init_ray(cfg: ExperimentConfig, concurrent_runs: int = 1) -> None:
    """Join the cluster in ``RAY_ADDRESS``, or start a local Ray big enough for ``concurrent_runs`` runs of
    ``cfg``.

    Without ``RAY_ADDRESS`` (or with ``RAY_ADDRESS=local``) the command always starts its own Ray, also
    when a Ray started with ``ray start`` on this machine is running or left its address file behind
    (a note on stderr names it; ``RAY_ADDRESS=auto`` joins it instead).

    The local Ray always has its dashboard, listening on 127.0.0.1 only: it serves Ray's state API,
    which every Train V2 run polls once a second (its placement-group cleaner frees the workers of a
    run whose controller died, e.g. a Tune trial stopped early). Without it each poll fails and logs
    a warning, once a second for the whole run. A local Ray also gets :data:`pipelines.compat.LOCAL_RAY_ENV`.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
        return
    needed = math.ceil(concurrent_runs * cfg.train.workers * cfg.train.cpus_per_worker)
    other = ray_start_address()
    if other:
        print(
            f"note: starting a local Ray for this command, not joining the Ray cluster at {other} that `ray start` "
            "recorded on this machine (it may have stopped since); to run on that cluster, set RAY_ADDRESS=auto",
            file=sys.stderr,
        )
    start_local_ray(max(os.cpu_count() or 1, needed))


def start_local_ray(num_cpus: int, log_to_driver: bool = True) -> None:
    """Start a local Ray the way every fusionpipe command does (see :func:`init_ray`): a new instance
    (``address="local"``: never the cluster a ``ray start`` on this machine recorded), dashboard on
    127.0.0.1, :data:`LOCAL_RAY_ENV` in the environment its processes inherit. The test suite's session
    cluster and the benchmarks start theirs through here too."""
    import ray

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=log_to_driver,
    )


def run_training(
    cfg: ExperimentConfig,
    run_name: str | None = None,
    *,
    extra_tags: dict[str, str] | None = None,
    callbacks: list[Any] | None = None,
    epoch_hooks: Sequence[EpochHook] = (),
    close_on_error: bool = True,
) -> dict[str, Any]:
    """Validate, train with Ray Train, log to MLflow; returns the run summary.

    ``extra_tags`` go on a new MLflow run (a Tune trial passes ``mlflow.parentRunId`` and its trial id);
    ``callbacks`` are Ray Train ``UserCallback``s (a Tune trial passes its ``TuneReportCallback``).
    ``epoch_hooks`` run in every worker at the start of every epoch (:class:`pipelines.train.worker.EpochHook`).
    ``close_on_error=False`` leaves the MLflow run open when training raises, for a caller that closes it.
    """
    cfg = resolve_data_rev(cfg)
    manifest = validate_experiment(cfg)
    cfg = cfg.resolved_paths()
    run_name = run_name or cfg.tracking.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    every_s = progress_every_s()  # before Ray starts: a bad value is an error now
    # What the driver is doing before the first epoch line (Ray's start and the workers' take seconds).
    said(f"run {run_name}: starting Ray")
    t0 = time.monotonic()
    init_ray(cfg)
    said(f"run {run_name}: Ray is up ({time.monotonic() - t0:.1f} s)")
    check_store_for_cluster(cfg.tracking.uri, len(alive_nodes()))
    check_shared_storage(cfg.checkpoint.storage_path)
    tracker, resumed = open_run(cfg, run_name, manifest, extra_tags)
    said(
        f"run {run_name}: MLflow run {tracker.run_id} {'resumed' if resumed else 'created'}; starting "
        f"{cfg.train.workers} Ray Train worker{'s' if cfg.train.workers > 1 else ''} ({cfg.train.epochs} epochs)"
    )
    fatal = fatal_path(cfg.checkpoint.storage_path, run_name)
    remove(fatal)  # an earlier attempt's error; the config may have been fixed since
    # A worker's error that a retry cannot fix ends the run at once, also with failure.max_failures -1.
    stop = stop_on_fatal_error(functools.partial(read_fatal, fatal))
    trainer = _trainer(cfg, run_name, manifest, tracker.run_id, [*(callbacks or []), stop], epoch_hooks, every_s)
    result = _fit(trainer, tracker, fatal, close_on_error)
    try:
        return finish_run(cfg, tracker, result, run_name, resumed)
    except BaseException as e:
        # Training is over and its checkpoints are kept; the run failed (or was interrupted) in what
        # follows (the artifact store, the model export): it must not stay RUNNING.
        if close_on_error:
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def _trainer(
    cfg: ExperimentConfig,
    run_name: str,
    manifest: dict[str, Any],
    mlflow_run_id: str,
    callbacks: list[Any] | None,
    epoch_hooks: Sequence[EpochHook],
    progress_every: float = 30.0,
) -> Any:
    """The Ray Train run of ``cfg`` (resolved paths): every rank runs :func:`train_loop_per_worker`."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    return interruptible_trainer_cls()(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "model_config": model_config(cfg, len(manifest["classes"])),
            "classes": manifest["classes"],
            "mlflow_run_id": mlflow_run_id,
            "tracking_uri": cfg.tracking.uri,
            "epoch_hooks": list(epoch_hooks),
            "run_name": run_name,
            "storage_path": cfg.checkpoint.storage_path,
            "progress_every_s": progress_every,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=cfg.checkpoint.storage_path,
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=cfg.failure.max_failures),
            # Ray Train's own INFO lines (worker group set-up, device moves) stay in Ray's log files.
            logging_config=LoggingConfig(log_level="WARNING"),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoint.keep,
                checkpoint_score_attribute=cfg.checkpoint.metric,
                checkpoint_score_order=cfg.checkpoint.mode,
            ),
        ),
    )


def _fit(trainer: Any, tracker: Any, fatal: str, close_on_error: bool) -> Any:
    """``trainer.fit()``; on failure the MLflow run is ended (FAILED, or KILLED after Ctrl-C) and the
    worker's own error is raised, not Ray's wrapper around it."""
    try:
        result = trainer.fit()
    except BaseException as e:
        interrupted = trainer.interrupted or isinstance(e, KeyboardInterrupt)
        if close_on_error:
            tracker.end("KILLED" if interrupted else "FAILED")
        if interrupted and not isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from e  # Ray Train aborted the run on Ctrl-C: report it as such
        recorded = read_fatal(fatal)
        if recorded is not None:
            raise recorded from e
        raise
    if trainer.interrupted:
        if close_on_error:
            tracker.end("KILLED")
        raise KeyboardInterrupt
    return result
