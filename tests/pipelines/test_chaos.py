"""Chaos runs with real processes: `fusionpipe train` as a subprocess, a real MLflow server, and faults a
production run can meet.

* A Ray Train worker is SIGKILLed mid-epoch (Ray restarts the worker group from the last checkpoint),
  then the whole driver (its process group: the driver, its own Ray, every worker: a lost machine) is
  SIGKILLed mid-epoch, then the latest checkpoint is damaged, and the same run name resumes from the
  checkpoint before it. The run ends in the same MLflow run with every metric step logged exactly once,
  and its metrics are those of an uninterrupted run.
* The MLflow server stops for 30 s mid-run and comes back: training goes on, the log says the store went
  away and came back, and no metric is lost.
* The MLflow server stops, and rank 0 is SIGKILLed while it holds metrics the store has not taken: the
  worker Ray restarts sends them from the checkpoint, and every step is logged exactly once.

Where a fault must happen at a given point, an epoch hook (``tests/pipelines/faults.py``) holds rank 0
there and the test waits on files and on the process, never on a guess of how long something takes; a
worker is SIGKILLed only once Ray Train has recorded the checkpoint before (a worker killed right after its
report can take the report with it, and the retry would start from an earlier checkpoint). The hooks
reach the command through :data:`LAUNCH`, which runs the `fusionpipe` console script with
``run_training``'s ``epoch_hooks`` set.

Every wait is bounded (:data:`WAIT_S`, :data:`START_WAIT_S` where it includes starting a run; the hooks'
own waits by :data:`HOOK_WAIT_S`, the outages by ``tracking.max_outage_s``), and a wait that runs out
fails the test saying what it waited for, with the end of the run's log. The test SIGKILLs what it
started, and only that: a driver's process group, the processes of a driver's own Ray (found by the
temporary directory in their environment), the MLflow server's process group. Every driver started as a
process has a Ray of its own, so nothing a killed driver leaves behind reaches the session's Ray
(``ray_cluster``), on which the uninterrupted run trains in-process.

The tolerance on the metrics against the uninterrupted run: every source of difference between the two
is pinned by the code, so they agree to float32 rounding (``rel=1e-5``). The data order and the
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import requests
import yaml
from mlflow.tracking import MlflowClient

from pipelines.checkpoints import MODEL, read_meta
from pipelines.config import ExperimentConfig, load_config
from pipelines.train.driver import run_training
from pipelines.train.worker import FALLBACK_TAG
from tests import REPO_ROOT

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
EPOCHS = 3
WAIT_S = 180  # any one wait of the test: a hang fails it within this
START_WAIT_S = 300  # a wait that includes starting a driver, its Ray and its workers, and training an epoch
HOOK_WAIT_S = 300  # a hook's wait for the test's signal: a worker of a test that died does not wait for good
OUTAGE_S = 30
MAX_OUTAGE_S = 150  # tracking.max_outage_s of the runs whose server stops: a server that stays down fails them
# pytest-timeout's bound on a whole test, the last resort: the in-process runs (the uninterrupted run, set
# up by the first test that needs it, and the resume) have no wait of the test's own to bound them.
TEST_TIMEOUT_S = 900
REL = 1e-5  # see the module docstring
TIMING = {"train/samples_per_s", "train/epoch_s"}  # wall-clock measurements: differ from run to run
# The tracker's warnings (pipelines/track/tracker.py), as rank 0's log lines reach the driver's stderr.
STORE_DOWN = re.compile(r"MLflow tracking store \S+ cannot be reached \(")
STORE_BACK = re.compile(r"MLflow tracking store \S+ is reachable again after (\d+) s: sent (\d+) buffered metrics")
RESENT = re.compile(r"(\d+) metrics of step\(s\) \[([\d, ]*)\] that the MLflow tracking store had not taken")
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
    """One `fusionpipe train` process, in its own process group; ``ray_tmp``: the temporary directory of
    its own Ray (``None``: it joined the session's Ray)."""

    proc: subprocess.Popen
    stdout: Path
    stderr: Path
    ray_tmp: Path | None

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def tail(self) -> str:
        return self.log()[-6000:]

    def finish(self) -> dict[str, Any]:
        try:
            rc = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run to end: not within {WAIT_S} s\n{self.tail()}") from None
        assert rc == 0, f"exit {rc}:\n{self.tail()}"
        return json.loads(self.stdout.read_text())


def _wait_for(what: str, ready: Callable[[], bool], run: Run | None = None, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"waiting for {what}: the run exited with {run.proc.returncode}:\n{run.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waiting for {what}: not within {timeout} s" + (f"\n{run.tail()}" if run else ""))
        time.sleep(0.1)


def _kill_ray_of(ray_tmp: Path) -> bool:
    """SIGKILL every process whose environment names ``ray_tmp`` (the processes of a Ray this module
    started); whether there was one."""
    found = False
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("RAY_TMPDIR") == str(ray_tmp):
                found = True
                proc.kill()
    return found


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {proc.pid} outlived SIGKILL for 60 s") from None


class Chaos:
    """A private directory (short: Ray's socket paths have a length limit) and the processes started in it."""

    def __init__(self, shards: Path, ray_address: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fpc-", dir="/tmp"))
        self.shards = shards
        self.ray_address = ray_address  # the session's Ray
        self.runs: list[Run] = []
        self.servers: list[Server] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env.update(
            RAY_USAGE_STATS_ENABLED="0",
            MLFLOW_DISABLE_TELEMETRY="true",
            DVC_NO_ANALYTICS="1",
            # The Ray workers unpickle the hooks: they import tests.pipelines.faults from the source tree.
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            **extra,
        )
        return env

    def experiment(self, name: str, tracking_uri: str, *overrides: str) -> tuple[Path, ExperimentConfig]:
        """configs/smoke.yaml on the session's smoke shards, EPOCHS epochs, every checkpoint kept: its file
        for the command, and the config for an in-process run."""
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
                f"checkpoint.keep={EPOCHS + 2}",
                "tracking.log_model=false",
                "train.preview_every=0",
                *overrides,
            ],
        )
        path = d / "exp.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        return path, cfg

    def train(self, exp: Path, run_name: str, hooks: list[tuple[str, dict[str, Any]]]) -> Run:
        """Start `fusionpipe train --json` with ``hooks`` on a Ray of its own that dies with it: what a
        killed driver leaves behind (its job, its controller, its placement groups) stays out of the
        session's Ray."""
        n = len(self.runs)
        ray_tmp: Path | None = self.root / f"r{n}"
        ray_tmp.mkdir()
        env = self.env(RAY_TMPDIR=str(ray_tmp))
        env.pop("RAY_ADDRESS", None)
        args = ["train", "--config", str(exp), "--run-name", run_name, "--json"]
        out, err = self.root / f"run{n}.out", self.root / f"run{n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, json.dumps(hooks), *args],
                cwd=REPO_ROOT, env=env, stdout=o, stderr=e, start_new_session=True,
            )  # fmt: skip
        run = Run(proc, out, err, ray_tmp)
        self.runs.append(run)
        return run

    def kill(self, run: Run) -> None:
        """SIGKILL the driver's process group and, for a driver with its own Ray, every process of that Ray
        still alive (a Ray worker renames itself, so it is found by the temp dir in its environment); wait
        until none is left."""
        _kill_group(run.proc)
        if run.ray_tmp is not None:
            _wait_for("the killed run's Ray processes to end", lambda: not _kill_ray_of(run.ray_tmp), timeout=60)

    def close(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                self.kill(run)
            elif run.ray_tmp is not None:
                _kill_ray_of(run.ray_tmp)
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Server:
    """`mlflow server` on a free port of 127.0.0.1 with a sqlite store in ``store``; stopped and started
    again on the same port and store."""

    def __init__(self, chaos: Chaos, store: Path) -> None:
        self.chaos, self.store = chaos, store
        store.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        chaos.servers.append(self)

    def healthy(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.uri}/health", timeout=2).ok
        return False

    def start(self) -> None:
        argv = [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
            "--artifacts-destination", str(self.store / "artifacts"),
        ]  # fmt: skip
        log_path = self.store / f"server{self.starts}.log"
        self.starts += 1
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.store, env=self.chaos.env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            return self.healthy()

        _wait_for(f"the MLflow server on port {self.port}", up)

    def ensure_started(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def stop(self) -> None:
        """SIGKILL its process group (the server and its workers): it stops at once, as a crashed or lost
        server does; a SIGTERM can take the server many seconds to act on."""
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None


def _checkpoints(exp: Path, run_name: str) -> list[Path]:
    return sorted(p for p in (exp.parent / "ray" / run_name).glob("checkpoint_*") if (p / "meta.json").is_file())


def _registered(exp: Path, run_name: str, count: int) -> bool:
    """Whether ``count`` checkpoints of the run are written and Ray Train has recorded the newest as the
    run's latest (its checkpoint manager's snapshot beside them names it): what a retry starts from."""
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
    """Every metric rank 0 logged for the run: its (step, value) pairs, sorted by step (MLflow's
    ``system/`` metrics, readings of the machine, are left out)."""
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def _steps(history: dict[str, list[tuple[int, float]]]) -> dict[str, list[int]]:
    return {k: [s for s, _ in v] for k, v in history.items()}


def _assert_every_step_once(history: dict[str, list[tuple[int, float]]]) -> None:
    bad = {k: steps for k, steps in _steps(history).items() if steps != list(range(EPOCHS))}
    assert not bad, f"metrics whose steps are not exactly 0..{EPOCHS - 1}, once each: {bad}"


def _assert_same_values(history, reference) -> None:
    assert history.keys() == reference.keys(), f"metrics not in both runs: {sorted(history.keys() ^ reference.keys())}"
    for key, values in reference.items():
        if key in TIMING:
            continue
        for (step, want), (_, got) in zip(values, history[key], strict=True):
            assert got == pytest.approx(want, rel=REL, abs=1e-9), f"{key} at step {step}"


@pytest.fixture(scope="module")
def chaos(smoke_shards, ray_cluster):
    c = Chaos(smoke_shards, ray.get_runtime_context().gcs_address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def server(chaos) -> Server:
    """One MLflow server for the tests that stop it; each starts it when it is not running."""
    return Server(chaos, chaos.root / "server")


@pytest.fixture(scope="module")
def reference(chaos) -> dict[str, Any]:
    """An uninterrupted run of the experiment the chaos runs use (in-process, on the session's Ray): its
    summary and metric history."""
    _, cfg = chaos.experiment("reference", f"sqlite:///{chaos.root / 'reference.db'}")
    summary = run_training(cfg, run_name="reference")
    history = _history(MlflowClient(tracking_uri=cfg.tracking.uri), summary["mlflow_run_id"])
    _assert_every_step_once(history)
    return {"summary": summary, "history": history}


def _hook(name: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    return name, {**kwargs, "timeout_s": HOOK_WAIT_S}


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_killed_worker_a_killed_driver_and_a_corrupt_checkpoint_lose_at_most_one_epoch(chaos, reference):
    uri = f"sqlite:///{chaos.root / 'chain.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp, cfg = chaos.experiment("chain", uri, "failure.max_failures=1")
    name = "chain"
    kill, killed, held = (chaos.root / f"chain-{n}" for n in ("kill", "worker-killed", "held"))

    # 1. Rank 0 is SIGKILLed in the middle of epoch 1 (after its first batch), once Ray Train has recorded
    #    epoch 0's checkpoint: Ray restarts the worker group from it. Then, in the middle of epoch 2, the
    #    whole driver is SIGKILLed, with its Ray and its workers.
    run = chaos.train(
        exp,
        name,
        [
            _hook("SigkillOnce", epoch=1, rank=0, batch=1, marker=str(killed), after=str(kill)),
            _hook("HoldOnce", epoch=2, rank=0, batch=1, reached=str(held)),
        ],
    )
    _wait_for("Ray Train to record the checkpoint of epoch 0", lambda: _registered(exp, name, 1), run, START_WAIT_S)
    kill.touch()
    _wait_for("rank 0 to SIGKILL itself in epoch 1", killed.exists, run)
    _wait_for("the restarted rank 0 in the middle of epoch 2", held.exists, run)
    _wait_for("Ray Train to record the checkpoint of epoch 1", lambda: _registered(exp, name, 2), run)
    # The restarted worker group resumed at epoch 1 (1-based: 2): only the half of epoch 1 was lost.
    # Ray forwards the workers' lines to the driver shortly.
    _wait_for("the restarted workers' start line", lambda: f"from epoch 2 of {EPOCHS}" in run.log(), run)
    chaos.kill(run)
    run_id = json.loads((exp.parent / "ray" / name / "fusionpipe-run.json").read_text())["mlflow_run_id"]
    history = _history(client, run_id)
    assert _steps(history) == {k: [0, 1] for k in reference["history"]}
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody was left to close it

    # 2. The latest checkpoint (epoch 1) is damaged (a write cut short). The same run name resumes from the
    #    one before it (epoch 0): epoch 1 runs again, and is not logged a second time.
    latest = _checkpoints(exp, name)[-1]
    assert read_meta(latest)["epoch"] == 1
    model = latest / MODEL
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    summary = run_training(cfg, run_name=name)  # in-process, on the session's Ray
    assert summary["resumed"] and summary["mlflow_run_id"] == run_id and summary["epochs"] == EPOCHS
    run_info = client.get_run(run_id)
    assert run_info.info.status == "FINISHED"
    note = run_info.data.tags[FALLBACK_TAG]  # why it went back, and to which checkpoint
    assert f"{latest} is corrupt" in note and "(epoch 0), the newest intact checkpoint of the run" in note
    assert len(client.search_runs([client.get_experiment_by_name("chaos").experiment_id])) == 1
    # Each epoch was checkpointed once, but for the one whose checkpoint was damaged: the worker and the
    # driver killed mid-epoch lost that epoch's unfinished half, the damaged checkpoint one epoch.
    assert Counter(read_meta(p)["epoch"] for p in _checkpoints(exp, name)) == {0: 1, 1: 2, 2: 1}
    history = _history(client, run_id)
    _assert_every_step_once(history)
    # Every epoch was computed from the same state as in the uninterrupted run: the same metrics.
    _assert_same_values(history, reference["history"])
    final, want = summary["final_metrics"], reference["summary"]["final_metrics"]
    assert final.keys() == want.keys()
    assert final == {k: pytest.approx(v, rel=REL, abs=1e-9) for k, v in want.items()}


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_an_mlflow_server_that_stops_for_30_s_loses_no_metric(chaos, reference, server):
    server.ensure_started()
    exp, _ = chaos.experiment("outage", server.uri, "train.preview_every=1", f"tracking.max_outage_s={MAX_OUTAGE_S}")
    reached, release = chaos.root / "outage-reached", chaos.root / "outage-release"
    run = chaos.train(
        exp, "outage", [_hook("HoldOnce", epoch=1, rank=0, batch=0, reached=str(reached), release=str(release))]
    )
    # Epoch 0 is logged; rank 0 waits at the start of epoch 1 while the server is stopped.
    _wait_for("rank 0 at the start of epoch 1", reached.exists, run, START_WAIT_S)
    server.stop()
    stopped = time.monotonic()
    assert not server.healthy()
    release.touch()
    # Epoch 1's metrics meet a store that is down: rank 0 says so, buffers them and trains on.
    _wait_for("rank 0's warning that the store is down", lambda: bool(STORE_DOWN.search(run.log())), run)
    warned = time.monotonic()  # after rank 0's first failed request
    time.sleep(max(0.0, OUTAGE_S - (warned - stopped)))  # the outage lasts 30 s
    assert run.proc.poll() is None, run.tail()  # training did not die (it waits for the store)
    restarted = time.monotonic()  # before the store can take a request again
    server.start()
    summary = run.finish()

    log = run.log()
    went, back = STORE_DOWN.findall(log), STORE_BACK.findall(log)
    assert len(went) == 1 and len(back) == 1, log[-6000:]  # once when it went away, once when it came back
    client = MlflowClient(tracking_uri=server.uri)
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED" and summary["epochs"] == EPOCHS
    history = _history(client, summary["mlflow_run_id"])
    _assert_every_step_once(history)
    _assert_same_values(history, reference["history"])  # nothing lost, nothing changed
    seconds, sent = int(back[0][0]), int(back[0][1])
    # The outage rank 0 measured: from its first failed request to the first one the store took.
    assert restarted - warned - 1 <= seconds <= time.monotonic() - stopped and sent > 0
    assert sent % len(history) == 0  # whole epochs were buffered, and sent
    # Epoch 0's preview was logged before the outage. Epoch 1's was skipped: the store was down, and only
    # the next epoch's (or the end's) send could have found it back.
    previews = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "previews")}
    assert "previews/epoch_0000.png" in previews and "previews/epoch_0001.png" not in previews
    assert "epoch_0001.png not logged: the MLflow tracking store cannot be reached" in log


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_rank_0_killed_during_an_outage_leaves_its_buffered_metrics_to_the_retried_worker(chaos, reference, server):
    server.ensure_started()
    name = "outage-kill"
    exp, _ = chaos.experiment(name, server.uri, "failure.max_failures=1", f"tracking.max_outage_s={MAX_OUTAGE_S}")
    reached, release, kill, killed = (chaos.root / f"{name}-{n}" for n in ("reached", "release", "kill", "killed"))
    run = chaos.train(
        exp,
        name,
        [
            _hook("HoldOnce", epoch=1, rank=0, batch=0, reached=str(reached), release=str(release)),
            _hook("SigkillOnce", epoch=2, rank=0, batch=1, marker=str(killed), after=str(kill)),
        ],
    )
    _wait_for("rank 0 at the start of epoch 1", reached.exists, run, START_WAIT_S)
    server.stop()
    release.touch()
    # Epoch 1's metrics meet the stopped server: buffered, and kept in epoch 1's checkpoint. Once Ray Train
    # has recorded that checkpoint, rank 0 dies in epoch 2, before any send could succeed; then the server
    # comes back.
    _wait_for("Ray Train to record the checkpoint of epoch 1", lambda: _registered(exp, name, 2), run)
    per_epoch = len(reference["history"])
    kept = read_meta(_checkpoints(exp, name)[-1])["unlogged_metrics"]
    assert len(kept) == per_epoch and {step for *_, step in kept} == {1}
    kill.touch()
    _wait_for("rank 0 to SIGKILL itself in epoch 2", killed.exists, run)
    server.start()
    summary = run.finish()

    # Ray restarted the workers from epoch 1's checkpoint; the new rank 0 sent epoch 1's metrics first.
    log = run.log()
    assert len(STORE_DOWN.findall(log)) == 1 and f"from epoch 3 of {EPOCHS}" in log, log[-6000:]
    assert RESENT.findall(log) == [(str(per_epoch), "1")], log[-6000:]
    client = MlflowClient(tracking_uri=server.uri)
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED" and summary["epochs"] == EPOCHS
    history = _history(client, summary["mlflow_run_id"])
    _assert_every_step_once(history)
    _assert_same_values(history, reference["history"])
