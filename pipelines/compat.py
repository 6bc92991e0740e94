"""Every workaround that reaches into the internals of Ray or MLflow (private attributes and methods,
internal modules, undocumented environment variables), in one place.

Each entry says which library version it was written for and why it exists. ``tests/pipelines/test_compat.py``
checks that the internals each one relies on are still there as it expects, and that the installed
versions are those in :data:`WRITTEN_FOR`: an upgrade fails those tests until every workaround has been
re-checked against the new version (then update :data:`WRITTEN_FOR`, or delete what is no longer needed).
PyTorch needs none at present.

Importing this module imports neither Ray nor MLflow: the driver, worker and tracking modules import it
at their top, some of them where no Ray is needed (``import ray`` alone takes seconds), so each function
imports what it needs when it is called.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The versions the workarounds below were written for and checked against.
WRITTEN_FOR = {"ray": "2.60.0", "mlflow": "3.17.2"}

#: Ray 2.60.0: set (unless the user set them) before a local Ray starts, so its raylet and workers
#: inherit them. ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER`` is read by Train V2's controller
#: (``ray.train.v2._internal.constants``; on by default). A local Ray has no preemptible nodes, so the
#: watcher has nothing to watch; it costs an actor per run and logs a core-worker error line ("has
#: constructor arguments in the object store and max_restarts > 0") at every start.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def interruptible_trainer_cls() -> type:
    """``TorchTrainer`` that remembers a Ctrl-C (its ``interrupted`` attribute).

    Ray 2.60.0: Train V2 installs its own SIGINT handler during ``fit`` (it aborts the run, and ``fit``
    then fails with an actor error that does not say why). Ray has no public hook for it, so this
    overrides the private ``DataParallelTrainer._register_sigint_handler(controller)`` (called by ``fit``
    in the main thread only) and chains a flag in front of Ray's handler: the driver can then mark the
    MLflow run KILLED, not FAILED.
    """
    from ray.train.torch import TorchTrainer  # lazy: see the module docstring

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


def stop_on_fatal_error(recorded: Callable[[], BaseException | None]) -> Any:
    """A Ray Train ``UserCallback`` that ends the run, without a retry, when a worker has failed and
    ``recorded()`` returns an error (the one a worker recorded as fatal: a retry cannot fix it).

    Ray 2.60.0: ``FailureConfig(max_failures=N)`` retries every worker failure, N times or, with -1,
    forever, and has no public way to mark an error as not retryable. The controller calls
    ``UserCallback.after_exception`` from ``WorkerGroup.poll_status`` in its control loop; an error raised
    there fails the loop's step and becomes a ``ControllerError``, which ``DefaultFailurePolicy`` does
    not retry (it retries a ``ControllerError`` only for a worker group that failed to start). ``fit``
    then raises; the driver raises the recorded error in its place. ``recorded`` is pickled to the
    controller: a module-level function or a ``functools.partial`` of one.
    """
    from ray.train import UserCallback  # lazy: see the module docstring

    class StopOnFatalError(UserCallback):
        def __init__(self, recorded: Callable[[], BaseException | None]) -> None:
            self.recorded = recorded

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            error = self.recorded()
            if error is not None:
                raise error

    return StopOnFatalError(recorded)


def ray_start_address() -> str | None:
    """The cluster address in Ray's address file on this machine, else None.

    Ray 2.60.0: ``ray start`` writes its cluster's address to ``<temp>/ray/ray_current_cluster`` (``<temp>``:
    ``$RAY_TMPDIR``, else ``$TMPDIR``, else /tmp), and the file outlives a head that was killed.
    ``ray.init()`` without an address and without ``RAY_ADDRESS`` joins that cluster, and given ``num_cpus``
    it then fails ("When connecting to an existing cluster, num_cpus and num_gpus must not be provided").
    fusionpipe starts its local Ray with ``address="local"`` (public, ignores the file) and reads the file
    only to say that the cluster it names is not used. Ray has no public API for the file: this calls the
    internal ``ray._private.utils.read_ray_address``.
    """
    from ray._private.utils import read_ray_address  # lazy: see the module docstring

    try:
        return read_ray_address() or None
    except OSError:  # unreadable: as good as absent
        return None


#: Ray 2.60.0: the internal module whose module-level logger writes Train V2's per-report INFO line.
RAY_TRAIN_REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"


def quiet_ray_train_reports() -> None:
    """Silence Ray Train V2's per-report INFO line in this worker.

    Ray 2.60.0 logs every ``ray.train.report`` with its whole metrics dict, one multi-kilobyte line per
    epoch and rank (24 lines for the main job), from the module-level ``logger`` of
    :data:`RAY_TRAIN_REPORT_LOGGER_MODULE`. That logger is named by its file path, so ``LoggingConfig``
    (which filters only ``ray.train.*`` loggers) does not reach it; its level is set here instead. Ray's
    session log files keep the rest.
    """
    import importlib

    try:
        module = importlib.import_module(RAY_TRAIN_REPORT_LOGGER_MODULE)
    except ImportError:  # another Ray layout: nothing to silence
        return
    reporter = getattr(module, "logger", None)
    if isinstance(reporter, logging.Logger):
        reporter.setLevel(logging.WARNING)


#: Ray 2.60.0: the environment variable through which the job supervisor hands a submitted job's
#: driver its job config (``ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR``), whose
#: ``metadata`` holds the submission id under ``job_submission_id``.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ray_job_submission_id() -> str | None:
    """The submission id of the Ray job this driver runs as (``fusionpipe submit``), else None.

    Ray 2.60.0 has no public API for it (the runtime context has the job id only): it is read from the
    job config that the job supervisor puts in :data:`RAY_JOB_CONFIG_ENV`.
    """
    raw = os.environ.get(RAY_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id") or None
    except json.JSONDecodeError:
        return None


def tune_trials(results: Any) -> list[Any]:
    """The ``Trial`` objects behind a Tune ``ResultGrid``, with their status; [] when they cannot be reached.

    Ray 2.60.0: a ``ResultGrid`` lists one ``Result`` per trial but not its status, which tells a sweep
    interrupted by Ctrl-C (trials still PENDING, RUNNING or PAUSED) from one that is done; the trials
    are on its private ``_experiment_analysis`` (a public ``ExperimentAnalysis``).
    """
    return getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []


def mlflow_dataset_entity(dataset: Any) -> Any:
    """The ``mlflow.entities.Dataset`` of an ``mlflow.data`` dataset, for ``MlflowClient.log_inputs``.

    MLflow 3.17.2: only the fluent ``mlflow.log_input`` converts a dataset, and it logs to the active
    run of this process; a run written through a client by run id (as every fusionpipe run is, from
    the driver and from the workers) needs the entity, which the private ``Dataset._to_mlflow_entity``
    builds.
    """
    return dataset._to_mlflow_entity()


def system_metrics_monitor(run_id: str, tracking_uri: str, interval_s: float, resume: bool) -> Any:
    """A started monitor that samples this machine's CPU, memory, disk, network and (with
    ``nvidia-ml-py`` and an NVIDIA GPU) GPU use every ``interval_s`` seconds and logs each sample into
    run ``run_id`` as ``system/...`` metrics, from a daemon thread; ``finish()`` stops it and sends
    what it holds. It stops by itself once the run is no longer RUNNING.

    MLflow 3.17.2 starts this monitor only from the fluent ``mlflow.start_run(log_system_metrics=True)``,
    which makes the run this process's active run and ends it (FINISHED) at ``mlflow.end_run``; a
    fusionpipe run is written through a client by run id and ended by the driver, so this starts the
    same monitor, ``mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`` (an internal
    module), directly. ``resume`` continues the step count after the run's last ``system/`` step.
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` in the environment wins over ``interval_s`` (MLflow's rule).
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, resume_logging=resume, tracking_uri=tracking_uri
    )
    monitor.start()
    return monitor


def stop_system_metrics(monitor: Any, timeout_s: float = 30.0) -> bool:
    """Stop a :func:`system_metrics_monitor` and send its last samples, waiting at most ``timeout_s``:
    ``finish()`` joins the monitor's thread, which may be inside a request to a tracking store that does
    not answer. False when it did not finish in time (the daemon thread ends with the process)."""
    done = threading.Thread(target=monitor.finish, daemon=True, name="stop-system-metrics")
    done.start()
    done.join(timeout_s)
    return not done.is_alive()


def ray_working_dir_files(working_dir: str | os.PathLike[str], excludes: list[str]) -> list[str]:
    """The files Ray's job client packs when ``working_dir`` (a local directory) is submitted with
    ``runtime_env["excludes"] = excludes``: relative POSIX paths, sorted.

    Ray 2.60.0 has no public way to ask what a ``working_dir`` upload will hold. Its job client
    (``SubmissionClient._upload_working_dir_if_needed``) adds the default excludes
    (``ray_constants.get_runtime_env_default_excludes()``: ``.git``, ``.venv``, ``venv``, ``__pycache__``,
    or ``$RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES``) to ``excludes``, reads ``.gitignore`` unless
    ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``, and zips with ``packaging._zip_files``, which walks the tree with
    the private ``_dir_travel`` (a ``.gitignore`` and ``.rayignore`` in any directory apply below it) and
    packs every file and empty directory that no exclude matches (links followed). This walks the tree
    the same way, with the same matchers, and keeps the files.
    """
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    root = Path(working_dir).absolute()
    files: list[str] = []

    def handler(path: Path) -> None:
        if path.is_file():
            files.append(path.relative_to(root).as_posix())

    excludes = ray_constants.get_runtime_env_default_excludes() + list(excludes)
    # Ray's packaging logger notes every ignore file it reads (INFO); this one is quiet below WARNING.
    quiet = logging.getLogger(f"{__name__}.ray_packaging")
    quiet.setLevel(logging.WARNING)
    _dir_travel(root, [_get_excludes(root, excludes)], handler, include_gitignore=include_gitignore, logger=quiet)
    return sorted(files)
