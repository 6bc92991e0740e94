"""Chaos runs with real processes: `fusionpipe train` as a subprocess with its own local Ray, a real
MLflow server, and faults a production run can meet.

* A Ray Train worker is SIGKILLed mid-epoch (Ray restarts the worker group from the last checkpoint),
  then the whole driver (its process group: the driver, its Ray, every worker) is SIGKILLed mid-epoch and
  the same command resumes it, then the driver is killed again, the latest checkpoint is corrupted, and
  the same command resumes from the checkpoint before it. The run ends in the same MLflow run with every
  metric step logged exactly once, and its final metrics are those of an uninterrupted run.
* The MLflow server stops for 30 s mid-run and comes back: training goes on, the log says the store went
  away and came back, and no metric is lost.

Where a fault must happen at a given point, an epoch hook (``tests/pipelines/faults.py``) holds rank 0
there and the test waits on files and on the process, never on a guess of how long something takes. The
hooks reach the command through :data:`LAUNCH`, which runs the `fusionpipe` console script with
``run_training``'s ``epoch_hooks`` set; the resumes run the console script itself.

The tolerance on the final metrics against the uninterrupted run: every source of difference between
the two is pinned by the code, so they agree to float32 rounding (``rel=1e-5``). The data order and the
augmentation are seeded per epoch (``datasets/loader.py``), a checkpoint holds the exact model and
optimizer state, the learning rate is a function of the step (``lr_at``), the smoke model has no dropout,
and each worker runs one torch thread on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from tests import REPO_ROOT

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
EPOCHS = 4
STEP_TIMEOUT = 600  # any one wait; generous for a loaded 2-core machine
REL = 1e-5  # see the module docstring
TIMING = {"train/samples_per_s", "train/epoch_s"}  # wall-clock measurements: differ from run to run
# The tracker's warnings (pipelines/track/tracker.py), as rank 0's log lines reach the driver's stderr.
STORE_DOWN = re.compile(r"MLflow tracking store \S+ cannot be reached \(")
STORE_BACK = re.compile(r"MLflow tracking store \S+ is reachable again after (\d+) s: sent (\d+) buffered metrics")
# Runs the console script with epoch hooks: argv[1] is a JSON list of [class name in faults.py, kwargs].
LAUNCH = """
import functools, json, sys
from pipelines.cli.main import cli
import pipelines.train.driver as driver
from tests.pipelines import faults
hooks = [getattr(faults, name)(**kwargs) for name, kwargs in json.loads(sys.argv[1])]
driver.run_training = functools.partial(driver.run_training, epoch_hooks=hooks)
cli.main(sys.argv[2:], prog_name="fusionpipe")
"""


@dataclass
class Run:
    """One `fusionpipe train` process: its own process group and local Ray (temp dir ``ray_tmp``)."""

    proc: subprocess.Popen
    stdout: Path
    stderr: Path
    ray_tmp: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def finish(self, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"exit {rc}:\n{self.log()[-5000:]}"
        return json.loads(self.stdout.read_text())


class Chaos:
    """A private directory (short: Ray's socket paths have a length limit) and the processes started in it."""

    def __init__(self, shards: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fpc-", dir="/tmp"))
        self.shards = shards
        self.runs: list[Run] = []
        self.servers: list[subprocess.Popen] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}
        env.update(
            RAY_USAGE_STATS_ENABLED="0",
            MLFLOW_DISABLE_TELEMETRY="true",
            DVC_NO_ANALYTICS="1",
            # The Ray workers unpickle the hooks: they import tests.pipelines.faults from the source tree.
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        )
        self.env = env

    def experiment(self, name: str, tracking_uri: str, *overrides: str) -> Path:
        """configs/smoke.yaml on the small smoke shards, EPOCHS epochs, every checkpoint kept."""
        d = self.root / name
        d.mkdir()
        cfg = load_config(
            REPO_ROOT / "configs" / "smoke.yaml",
            [
                f"data.shards={self.shards}",
                "tracking.experiment=chaos",
                f"tracking.uri={tracking_uri}",
                f"checkpoint.storage_path={d / 'ray'}",
                f"train.epochs={EPOCHS}",
                f"checkpoint.keep={EPOCHS}",
                "tracking.log_model=false",
                "train.preview_every=0",
                *overrides,
            ],
        )
        path = d / "exp.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        return path

    def train(self, exp: Path, run_name: str, hooks: list[tuple[str, dict[str, Any]]] | None = None) -> Run:
        n = len(self.runs)
        ray_tmp = self.root / f"r{n}"
        ray_tmp.mkdir()
        args = ["train", "--config", str(exp), "--run-name", run_name, "--json"]
        argv = [sys.executable, "-c", LAUNCH, json.dumps(hooks), *args] if hooks else [str(BIN / "fusionpipe"), *args]
        out, err = self.root / f"run{n}.out", self.root / f"run{n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env={**self.env, "RAY_TMPDIR": str(ray_tmp)}, stdout=o, stderr=e,
                start_new_session=True,
            )  # fmt: skip
        run = Run(proc, out, err, ray_tmp)
        self.runs.append(run)
        return run

    def kill(self, run: Run) -> None:
        """SIGKILL the driver's whole process group, then any process of its Ray still alive (a Ray
        worker renames itself, so it is found by the temp dir in its environment), and wait until none is."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=60)
        _wait_for("the killed run's Ray processes to end", lambda: not _kill_ray_of(run.ray_tmp), 120)

    def close(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                self.kill(run)
            _kill_ray_of(run.ray_tmp)
        for server in self.servers:
            _stop_server(server)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_ray_of(ray_tmp: Path) -> bool:
    """SIGKILL every process whose environment names ``ray_tmp`` (processes this module started);
    whether there was one."""
    import psutil

    found = False
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("RAY_TMPDIR") == str(ray_tmp):
                found = True
                proc.kill()
    return found


def _wait_for(what: str, ready: Callable[[], bool], timeout: float, run: Run | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"waiting for {what}: the run exited with {run.proc.returncode}:\n{run.log()[-5000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s" + (f"\n{run.log()[-5000:]}" if run else ""))
        time.sleep(0.1)


def _checkpoints(exp: Path, run_name: str) -> list[Path]:
    return sorted(p for p in (exp.parent / "ray" / run_name).glob("checkpoint_*") if (p / "meta.json").is_file())


def _registered(exp: Path, run_name: str, count: int) -> bool:
    """Whether ``count`` checkpoints of the run are written and Ray Train has recorded the newest as the
    run's latest (its checkpoint manager's snapshot beside them names it): what a resume starts from."""
    ckpts = _checkpoints(exp, run_name)
    snapshot = exp.parent / "ray" / run_name / "checkpoint_manager_snapshot.json"
    if len(ckpts) != count or not snapshot.is_file():
        return False
    try:
        state = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return False  # being written
    latest = state.get("latest_checkpoint_result", {})
    if latest is not None and "checkpoint_dir_name" not in latest:  # fail now, not at the timeout
        raise AssertionError(f"{snapshot}: no latest_checkpoint_result.checkpoint_dir_name; has Ray's format changed?")
    return latest is not None and latest["checkpoint_dir_name"] == ckpts[-1].name


def _history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run: its (step, value) pairs as logged, sorted by step."""
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def _assert_every_step_once(history: dict[str, list[tuple[int, float]]]) -> None:
    bad = {k: [s for s, _ in v] for k, v in history.items() if [s for s, _ in v] != list(range(EPOCHS))}
    assert not bad, f"metrics whose steps are not exactly 0..{EPOCHS - 1}, once each: {bad}"


def _assert_same_values(history, reference) -> None:
    assert history.keys() == reference.keys()
    for key, values in reference.items():
        if key in TIMING:
            continue
        for (step, want), (_, got) in zip(values, history[key], strict=True):
            assert got == pytest.approx(want, rel=REL, abs=1e-9), f"{key} at step {step}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(chaos: Chaos, port: int, store: Path) -> subprocess.Popen:
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
    ]
    with open(store / f"server{len(chaos.servers)}.log", "wb") as log:
        server = subprocess.Popen(
            argv, cwd=store, env=chaos.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    chaos.servers.append(server)

    def healthy() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited with {server.returncode}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
        return False

    _wait_for("the MLflow server", healthy, 180)
    return server


def _stop_server(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # its workers, should one outlive it


@pytest.fixture(scope="module")
def chaos(smoke_shards):
    c = Chaos(smoke_shards)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(chaos) -> dict[str, Any]:
    """An uninterrupted run of the experiment the chaos runs use: its summary and metric history."""
    uri = f"sqlite:///{chaos.root / 'reference.db'}"
    summary = chaos.train(chaos.experiment("reference", uri), "reference").finish()
    history = _history(MlflowClient(tracking_uri=uri), summary["mlflow_run_id"])
    _assert_every_step_once(history)
    return {"summary": summary, "history": history}


def test_a_killed_worker_a_killed_driver_and_a_corrupt_checkpoint_lose_at_most_one_epoch(chaos, reference):
    uri = f"sqlite:///{chaos.root / 'chain.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = chaos.experiment("chain", uri, "failure.max_failures=1")
    name = "chain"
    root = chaos.root

    # 1. Rank 0 is SIGKILLed in the middle of epoch 1 (after its first batch): Ray restarts the worker
    #    group from the epoch-0 checkpoint. Then, in the middle of epoch 2, the whole driver is killed.
    run = chaos.train(
        exp,
        name,
        hooks=[
            ("SigkillOnce", {"epoch": 1, "rank": 0, "batch": 1, "marker": str(root / "worker-killed")}),
            ("HoldOnce", {"epoch": 2, "rank": 0, "batch": 1, "reached": str(root / "held-1")}),
        ],
    )
    _wait_for("rank 0 in the middle of epoch 2", (root / "held-1").exists, STEP_TIMEOUT, run)
    _wait_for("the checkpoints of epochs 0 and 1", lambda: _registered(exp, name, 2), STEP_TIMEOUT, run)
    chaos.kill(run)
    assert (root / "worker-killed").exists(), "the worker was not killed"
    assert "from epoch 2 of 4" in run.log()  # the restarted worker group resumed at epoch 1 (1-based: 2)
    run_id = json.loads((exp.parent / "ray" / name / "fusionpipe-run.json").read_text())["mlflow_run_id"]
    history = _history(client, run_id)
    assert {k: [s for s, _ in v] for k, v in history.items()} == {k: [0, 1] for k in reference["history"]}
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody was left to close it

    # 2. The same command resumes from the epoch-1 checkpoint: of epoch 2, only the half done is lost.
    #    In the middle of epoch 3 the driver is killed again.
    run = chaos.train(
        exp, name, hooks=[("HoldOnce", {"epoch": 3, "rank": 0, "batch": 1, "reached": str(root / "held-2")})]
    )
    _wait_for("rank 0 in the middle of epoch 3", (root / "held-2").exists, STEP_TIMEOUT, run)
    _wait_for("the checkpoint of epoch 2", lambda: _registered(exp, name, 3), STEP_TIMEOUT, run)
    chaos.kill(run)
    assert "from epoch 3 of 4" in run.log()
    assert [s for s, _ in _history(client, run_id)["train/loss/total"]] == [0, 1, 2]

    # 3. The latest checkpoint (epoch 2) is damaged (a write cut short). The same command resumes from
    #    the one before it (epoch 1): epoch 2 runs again, and is not logged a second time.
    latest = _checkpoints(exp, name)[-1]
    assert json.loads((latest / "meta.json").read_text())["epoch"] == 2
    model = latest / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    run = chaos.train(exp, name)
    summary = run.finish()
    assert "from epoch 3 of 4" in run.log() and str(latest.name) in run.log()  # why it went back is logged
    assert summary["resumed"] and summary["mlflow_run_id"] == run_id and summary["epochs"] == EPOCHS
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("chaos").experiment_id])) == 1
    history = _history(client, run_id)
    _assert_every_step_once(history)
    # Every epoch was computed from the same state as in the uninterrupted run: the same metrics.
    _assert_same_values(history, reference["history"])
    final, want = summary["final_metrics"], reference["summary"]["final_metrics"]
    assert final.keys() == want.keys()
    assert final == {k: pytest.approx(v, rel=REL, abs=1e-9) for k, v in want.items()}


def test_an_mlflow_server_that_stops_for_30_s_loses_no_metric(chaos, reference):
    port = _free_port()
    store = chaos.root / "server"
    store.mkdir()
    server = _start_server(chaos, port, store)
    uri = f"http://127.0.0.1:{port}"
    exp = chaos.experiment("outage", uri, "train.preview_every=1")
    reached, release = chaos.root / "outage-reached", chaos.root / "outage-release"
    run = chaos.train(
        exp,
        "outage",
        hooks=[("HoldOnce", {"epoch": 1, "rank": 0, "batch": 0, "reached": str(reached), "release": str(release)})],
    )
    # Epoch 0 is logged; rank 0 waits at the start of epoch 1 while the server is stopped.
    _wait_for("rank 0 at the start of epoch 1", reached.exists, STEP_TIMEOUT, run)
    _stop_server(server)
    stopped = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{uri}/health", timeout=2)
    release.touch()
    # Epoch 1's metrics meet a store that is down: rank 0 says so, buffers them and trains on.
    _wait_for("the warning that the store is down", lambda: bool(STORE_DOWN.search(run.log())), STEP_TIMEOUT, run)
    time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))  # the outage lasts 30 s
    assert run.proc.poll() is None, run.log()[-5000:]  # training did not die (it waits for the store)
    _start_server(chaos, port, store)
    summary = run.finish()

    log = run.log()
    went, back = STORE_DOWN.findall(log), STORE_BACK.findall(log)
    assert len(went) == 1 and len(back) == 1, log[-5000:]  # once when it went away, once when it came back
    seconds, sent = int(back[0][0]), int(back[0][1])
    per_epoch = len(reference["history"])
    assert 0 < seconds <= time.monotonic() - stopped and sent > 0
    assert sent % per_epoch == 0  # whole epochs were buffered, and sent
    client = MlflowClient(tracking_uri=uri)
    run_info = client.get_run(summary["mlflow_run_id"])
    assert run_info.info.status == "FINISHED" and summary["epochs"] == EPOCHS
    history = _history(client, summary["mlflow_run_id"])
    _assert_every_step_once(history)
    _assert_same_values(history, reference["history"])  # nothing lost, nothing changed
    # Epoch 0's preview was logged before the outage. Epoch 1's was skipped: the store was down, and only
    # the next epoch's (or the end's) send could have found it back.
    previews = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "previews")}
    assert "previews/epoch_0000.png" in previews and "previews/epoch_0001.png" not in previews
    assert "epoch_0001.png not logged: the MLflow tracking store cannot be reached" in log
