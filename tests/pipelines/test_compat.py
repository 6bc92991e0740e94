"""The workarounds in pipelines/compat.py still fit the Ray and MLflow installed.

Each test fails when the internal a workaround relies on changed or went away, or when the workaround
has become unnecessary; the version test fails on any upgrade, so that every workaround is re-checked
then (see the module docstring of pipelines.compat).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from pipelines import compat


@pytest.mark.parametrize("package", sorted(compat.WRITTEN_FOR))
def test_the_installed_versions_are_those_the_workarounds_were_written_for(package):
    installed = importlib.metadata.version(package)
    assert installed == compat.WRITTEN_FOR[package], (
        f"{package} {installed} is installed, pipelines/compat.py was written for {compat.WRITTEN_FOR[package]}: "
        "re-check every workaround there against the new version, then update WRITTEN_FOR"
    )


def test_importing_compat_imports_neither_ray_nor_mlflow():
    code = "import sys, pipelines.compat; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_preemption_watcher_is_on_by_default_and_switched_by_that_variable():
    from ray.train.v2._internal import constants

    (name,) = compat.LOCAL_RAY_ENV
    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR == name
    assert constants.DEFAULT_ENABLE_PREEMPTION_WATCHER is True  # off by default: LOCAL_RAY_ENV is not needed
    from ray.train.v2._internal.execution.controller import controller

    assert "ENABLE_PREEMPTION_WATCHER_ENV_VAR" in inspect.getsource(controller)


def test_fit_registers_its_sigint_handler_through_the_overridden_private_method():
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    assert issubclass(TorchTrainer, DataParallelTrainer)
    method = inspect.getattr_static(DataParallelTrainer, "_register_sigint_handler")
    assert list(inspect.signature(method).parameters) == ["self", "controller"]
    # fit() (through the method that starts the controller) still calls it, in the main thread only.
    source = inspect.getsource(DataParallelTrainer)
    assert "self._register_sigint_handler(controller)" in source

    trainer_cls = compat.interruptible_trainer_cls()
    assert issubclass(trainer_cls, TorchTrainer) and trainer_cls.interrupted is False


def test_the_interruptible_trainer_flags_a_sigint_and_hands_it_to_rays_handler(monkeypatch):
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    seen = []

    def ray_registers(self, controller):  # what Ray's method does, without a controller to abort
        signal.signal(signal.SIGINT, lambda signum, frame: seen.append(controller))

    monkeypatch.setattr(DataParallelTrainer, "_register_sigint_handler", ray_registers)
    trainer = object.__new__(compat.interruptible_trainer_cls())
    before = signal.getsignal(signal.SIGINT)
    try:
        trainer._register_sigint_handler("the controller")
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGINT, before)
    assert trainer.interrupted is True and seen == ["the controller"]


def test_an_error_raised_by_the_stop_callback_ends_the_run_without_a_retry():
    import functools
    import pickle
    from types import SimpleNamespace

    from ray import cloudpickle
    from ray.train import FailureConfig
    from ray.train.v2._internal.callbacks.user_callback import UserCallbackHandler
    from ray.train.v2._internal.execution.controller.controller import TrainController
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from pipelines.checkpoints import CheckpointError

    recorded: list[Exception] = []
    stop = compat.stop_on_fatal_error(lambda: recorded[0] if recorded else None)
    failures = {0: ValueError("rank 0 failed")}
    stop.after_exception(None, failures)  # nothing recorded: Ray's failure policy decides
    recorded.append(CheckpointError("no intact checkpoint"))
    # Ray calls after_exception from the worker group's poll, with nothing in between to swallow an error...
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        UserCallbackHandler([stop], None).after_worker_group_poll_status(SimpleNamespace(errors=failures))
    assert "callback.after_worker_group_poll_status(worker_group_poll_status)" in inspect.getsource(
        WorkerGroup.poll_status
    )
    # ...the controller's loop step makes it a ControllerError, which is not retried, even with -1 retries,
    # where a worker's own error is.
    assert "training_error = ControllerError(e)" in inspect.getsource(TrainController._run_control_loop_iteration)
    policy = DefaultFailurePolicy(FailureConfig(max_failures=-1))
    assert policy.make_decision(ControllerError(CheckpointError("x"))) == FailureDecision.RAISE
    assert policy.make_decision(WorkerGroupError("rank 0 failed", failures)) == FailureDecision.RETRY
    # The callback travels to the controller pickled, with a partial of a module-level function.
    clone = pickle.loads(cloudpickle.dumps(compat.stop_on_fatal_error(functools.partial(json.loads, "null"))))
    clone.after_exception(None, failures)


def test_the_per_report_line_comes_from_the_logger_that_is_silenced():
    module = importlib.import_module(compat.RAY_TRAIN_REPORT_LOGGER_MODULE)
    assert isinstance(module.logger, logging.Logger)
    assert not module.logger.name.startswith("ray.train")  # else LoggingConfig would reach it: not needed
    assert 'f"Reporting training result {report_call_index}: {training_report} "' in inspect.getsource(module)
    # That quiet_ray_train_reports raises it to WARNING: tests/pipelines/test_console.py.


def test_the_job_supervisor_hands_the_submission_id_through_that_variable(monkeypatch):
    from ray._private.runtime_env import constants
    from ray.dashboard.modules.job import common, job_supervisor

    assert constants.RAY_JOB_CONFIG_JSON_ENV_VAR == compat.RAY_JOB_CONFIG_ENV
    assert common.JOB_ID_METADATA_KEY == "job_submission_id"
    assert "RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps(" in inspect.getsource(job_supervisor)
    from ray.runtime_context import RuntimeContext

    # The runtime context has no submission id of its own (it would replace the variable). The class, not
    # ray.get_runtime_context(): that would start a Ray.
    assert not any("submission" in name for name in dir(RuntimeContext))

    monkeypatch.setenv(compat.RAY_JOB_CONFIG_ENV, json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}}))
    assert compat.ray_job_submission_id() == "raysubmit_1"
    monkeypatch.setenv(compat.RAY_JOB_CONFIG_ENV, "{not json")
    assert compat.ray_job_submission_id() is None
    monkeypatch.delenv(compat.RAY_JOB_CONFIG_ENV)
    assert compat.ray_job_submission_id() is None


def test_a_result_grid_keeps_its_trials_on_the_private_experiment_analysis():
    from ray.tune import ResultGrid
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    assert list(inspect.signature(ResultGrid.__init__).parameters)[:2] == ["self", "experiment_analysis"]
    assert "self._experiment_analysis = experiment_analysis" in inspect.getsource(ResultGrid.__init__)
    assert "self.trials = " in inspect.getsource(ExperimentAnalysis.__init__)
    # A Result has no status: the trials are still needed.
    from ray.tune import Result

    assert "status" not in {f for f in getattr(Result, "__dataclass_fields__", {})}

    grid = object.__new__(ResultGrid)
    grid._experiment_analysis = type("Analysis", (), {"trials": ["t1", "t2"]})()
    assert compat.tune_trials(grid) == ["t1", "t2"]
    assert compat.tune_trials(object()) == []


def test_a_meta_dataset_converts_to_the_entity_that_log_inputs_takes(tmp_path):
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput
    from mlflow.tracking import MlflowClient

    ds = MetaDataset(source=HTTPDatasetSource(url=tmp_path.as_uri()), name="smoke", digest="0123abcd")
    entity = compat.mlflow_dataset_entity(ds)
    assert isinstance(entity, Dataset) and (entity.name, entity.digest) == ("smoke", "0123abcd")
    assert entity.source_type == "http" and json.loads(entity.source) == {"url": tmp_path.as_uri()}
    # The client still takes entities only: the private conversion is still needed.
    annotation = str(inspect.signature(MlflowClient.log_inputs).parameters["datasets"].annotation)
    assert "DatasetInput" in annotation and DatasetInput(entity).dataset is entity


def test_the_system_metrics_monitor_logs_into_a_client_made_run_and_resumes_its_steps(tmp_path):
    import time

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    keys = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"}

    def sample(resume: bool) -> None:
        before = len(client.get_metric_history(run_id, min(keys)))
        monitor = compat.system_metrics_monitor(run_id, uri, 0.2, resume=resume)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(client.get_metric_history(run_id, min(keys))) < before + 2:
            time.sleep(0.2)
        assert compat.stop_system_metrics(monitor, timeout_s=60)

    sample(resume=False)
    assert keys <= set(client.get_run(run_id).data.metrics)
    assert not [k for k in client.get_run(run_id).data.metrics if "gpu" in k]  # no GPU on this machine
    first = sorted(m.step for m in client.get_metric_history(run_id, min(keys)))
    assert first[0] == 0
    sample(resume=True)  # a resumed run continues the steps
    steps = sorted(m.step for m in client.get_metric_history(run_id, min(keys)))
    assert steps[: len(first)] == first and steps[len(first)] == first[-1] + 1
    # the monitor stops by itself once the run is no longer RUNNING
    client.set_terminated(run_id)
    monitor = compat.system_metrics_monitor(run_id, uri, 0.2, resume=True)
    time.sleep(1.0)
    assert compat.stop_system_metrics(monitor, timeout_s=5)


def test_stopping_system_metrics_is_bounded_when_the_store_hangs():
    import threading
    import time

    release = threading.Event()

    class Stuck:
        def finish(self) -> None:
            release.wait(30)

    started = time.monotonic()
    assert compat.stop_system_metrics(Stuck(), timeout_s=0.3) is False
    assert time.monotonic() - started < 5
    release.set()


def packaged_by_ray_job_client(working_dir, excludes) -> set[str]:
    """The files of the package Ray's job client builds and uploads for ``working_dir``: its own upload
    path (``JobSubmissionClient._upload_working_dir_if_needed``), with the HTTP request captured instead
    of sent."""
    import io
    import zipfile
    from types import SimpleNamespace

    from ray.job_submission import JobSubmissionClient

    client = object.__new__(JobSubmissionClient)
    sent = []
    client._package_exists = lambda uri: False
    client._do_request = lambda method, endpoint, data=None, **kw: sent.append(data) or SimpleNamespace(status_code=200)
    client._upload_working_dir_if_needed({"working_dir": str(working_dir), "excludes": list(excludes)})
    (package,) = sent
    with zipfile.ZipFile(io.BytesIO(package)) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


@pytest.mark.parametrize("ignore_gitignore", ["0", "1"])
def test_the_working_dir_listing_is_what_rays_job_client_uploads(tmp_path, monkeypatch, ignore_gitignore):
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", ignore_gitignore)
    monkeypatch.delenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", raising=False)
    root = tmp_path / "repo"
    files = {
        "a.py": "x",
        "pkg/b.py": "x",
        "pkg/.gitignore": "generated.txt\n",
        "pkg/generated.txt": "x",
        "pkg/sub/.rayignore": "*.log\n!keep.log\n",
        "pkg/sub/run.log": "x",
        "pkg/sub/keep.log": "x",
        "pkg/sub/c.py": "x",
        ".gitignore": "/outputs/\n",
        "outputs/o.json": "x",
        "venv/bin/python": "x",  # Ray's default excludes
        "pkg/__pycache__/b.pyc": "x",
        ".git/HEAD": "x",
        "big/blob.bin": "x",  # the runtime_env excludes
        "x/y/blob.bin": "x",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "empty").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.py").write_text("x")
    (root / "linked").symlink_to(outside)  # Ray follows links
    excludes = ["/big", "blob.bin"]
    listed = compat.ray_working_dir_files(root, excludes)
    assert listed == sorted(listed)
    assert set(listed) == packaged_by_ray_job_client(root, excludes)
    expected = {"a.py", "pkg/b.py", "pkg/.gitignore", "pkg/sub/.rayignore", "pkg/sub/keep.log", "pkg/sub/c.py"}
    expected |= {".gitignore", "linked/o.py"}
    if ignore_gitignore == "1":
        expected |= {"pkg/generated.txt", "outputs/o.json"}
    assert set(listed) == expected
    # The private walk it reuses still has the signature it calls.
    from ray._private.runtime_env import packaging

    assert list(inspect.signature(packaging._dir_travel).parameters) == [
        "path",
        "excludes",
        "handler",
        "include_gitignore",
        "logger",
    ]
    assert list(inspect.signature(packaging._get_excludes).parameters) == ["path", "excludes"]


def test_the_address_file_ray_start_writes_is_the_one_read(tmp_path, monkeypatch):
    from ray._private.utils import write_ray_address  # what `ray start` calls (ray/scripts/scripts.py)

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert compat.ray_start_address() is None
    (tmp_path / "ray").mkdir()
    write_ray_address("127.0.0.1:6379")
    assert (tmp_path / "ray" / "ray_current_cluster").read_text() == "127.0.0.1:6379"
    assert compat.ray_start_address() == "127.0.0.1:6379"
    from ray.scripts import scripts

    assert "write_ray_address(" in inspect.getsource(scripts)


def test_ray_init_without_an_address_joins_the_cluster_in_that_file(tmp_path):
    """Why fusionpipe passes address="local": with a (stale) address file, a plain ray.init(num_cpus=...)
    tries to join that cluster and refuses the CPU count before it even connects."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    code = (
        "import ray\n"
        "try:\n    ray.init(num_cpus=1)\nexcept ValueError as e:\n    print(e)\n"
        "else:\n    ray.shutdown()\n    print('started')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == (
        "When connecting to an existing cluster, num_cpus and num_gpus must not be provided."
    ), out.stdout + out.stderr
