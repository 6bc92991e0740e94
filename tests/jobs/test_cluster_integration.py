"""A real two-node Ray cluster (token auth on), a real MLflow server, jobs through `fusionpipe submit`.

Both nodes run on this machine, started with `ray start --block` in their own process groups and
a private --temp-dir, on free ports: a bare `ray.init()` elsewhere (other test sessions) never finds
them (/tmp/ray/ray_current_cluster is not touched), and teardown kills only these process groups,
never `ray stop` (which kills every Ray on the machine). Where mount namespaces are available the
second node runs in one with a tmpfs over ``node-local/``: the same path, different contents, as on
two machines without a shared filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests import REPO_ROOT

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
STEP_TIMEOUT = 240


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _can_mount_private_tmpfs(path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount -t tmpfs fpj {path}"],
        capture_output=True,
        timeout=30,
    )
    return r.returncode == 0


def _wait(what: str, ready, timeout_s: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: {p.args[:3]} exited with {p.returncode}")
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready within {timeout_s} s")


@dataclass
class Cluster:
    root: Path
    token: str
    dashboard: str
    mlflow: str
    gcs_port: int
    shards: Path
    isolated_node: bool
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def fusionpipe(self, *args: str, env: dict[str, str] | None = None, timeout: float = STEP_TIMEOUT):
        return subprocess.run(
            [str(BIN / "fusionpipe"), *args],
            cwd=REPO_ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _client_env(base: dict[str, str], token: str | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", HOME=str(home))
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(dashboard: str, token: str) -> int:
    r = requests.get(f"{dashboard}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    if r.status_code != 200:
        return 0
    rows = r.json()["data"]["result"]["result"]
    return sum(1 for n in rows if n.get("state") == "ALIVE")


def _stop(procs: list[subprocess.Popen], root: Path) -> None:
    """SIGTERM each process group we started, SIGKILL what is left; then any straggler whose command
    line names our private temp dir (a Ray worker that left its group)."""
    import psutil

    gone = (ProcessLookupError, PermissionError, subprocess.TimeoutExpired, psutil.Error)
    for p in procs:
        with contextlib.suppress(*gone):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5  # `ray start --block` can sit on SIGTERM; its children are gone by then
    for p in procs:
        with contextlib.suppress(*gone):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:
        with contextlib.suppress(*gone):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(*gone):
            p.wait(timeout=10)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(*gone):
            if str(root) in " ".join(proc.info["cmdline"] or []):
                proc.kill()


@pytest.fixture(scope="module")
def cluster():
    from datasets.sources.synthetic import SyntheticSource
    from datasets.writer import write_dataset

    root = Path(tempfile.mkdtemp(prefix="fpj-", dir="/tmp"))  # short: Ray's unix socket paths have a limit
    (root / "shared").mkdir()
    (root / "node-local").mkdir()
    (root / "home").mkdir()
    token = secrets.token_hex(16)
    gcs, dash, client_port, mlflow_port, *agent = _free_ports(12)
    node_env = _client_env(dict(os.environ), token, root / "home")
    node_env.update(RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    common = [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        f"--temp-dir={root / 'ray'}",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], log: str) -> subprocess.Popen:
        with open(root / log, "wb") as out:
            p = subprocess.Popen(
                argv, env=node_env, stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
            )
        procs.append(p)
        return p

    try:
        mlflow = start(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            "mlflow.log",
        )
        head = start(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                *common,
                f"--port={gcs}",
                f"--dashboard-port={dash}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--ray-client-server-port={client_port}",
                f"--dashboard-agent-listen-port={agent[0]}",
                f"--dashboard-agent-grpc-port={agent[1]}",
                f"--metrics-export-port={agent[2]}",
                f"--runtime-env-agent-port={agent[3]}",
            ],
            "head.log",
        )
        shards = root / "shards"
        write_dataset(
            SyntheticSource(num_train=16, num_val=8, height=64, width=80, seed=3), shards, shard_size=4, progress=False
        )
        dashboard = f"http://127.0.0.1:{dash}"
        _wait("Ray head's GCS", lambda: _port_open(gcs), 90, [head])
        isolated = _can_mount_private_tmpfs(root / "node-local")
        worker = [
            str(BIN / "ray"),
            "start",
            *common,
            f"--address=127.0.0.1:{gcs}",
            '--resources={"node2": 1}',
            f"--dashboard-agent-listen-port={agent[4]}",
            f"--dashboard-agent-grpc-port={agent[5]}",
            f"--metrics-export-port={agent[6]}",
            f"--runtime-env-agent-port={agent[7]}",
        ]
        if isolated:
            worker = [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount -t tmpfs fpj {shlex.quote(str(root / 'node-local'))} && exec {shlex.join(worker)}",
            ]
        start(worker, "worker.log")
        _wait("two alive Ray nodes", lambda: _alive_nodes(dashboard, token) == 2, 90, procs[1:])
        _wait(
            "MLflow server", lambda: requests.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=2).ok, 90, [mlflow]
        )
        yield Cluster(
            root=root,
            token=token,
            dashboard=dashboard,
            mlflow=f"http://127.0.0.1:{mlflow_port}",
            gcs_port=gcs,
            shards=shards,
            isolated_node=isolated,
            procs=procs,
            env=_client_env(dict(os.environ), token, root / "home"),
        )
    finally:
        _stop(procs, root)
        shutil.rmtree(root, ignore_errors=True)


def _train_args(c: Cluster, storage: Path, run_name: str) -> list[str]:
    return [
        "fusionpipe",
        "train",
        "--config",
        "configs/smoke.yaml",
        "--run-name",
        run_name,
        "--set",
        f"data.shards={c.shards}",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.preview_every=0",
        "--set",
        "tracking.log_model=false",
        "--set",
        "tracking.experiment=cluster",
        "--set",
        f"checkpoint.storage_path={storage}",
    ]


def test_cluster_is_private_to_this_test(cluster):
    assert (cluster.root / "ray" / "ray_current_cluster").read_text().endswith(f":{cluster.gcs_port}")
    default = Path("/tmp/ray/ray_current_cluster")
    assert not default.exists() or not default.read_text().endswith(f":{cluster.gcs_port}")


def test_two_worker_training_job_succeeds_and_is_tracked(cluster):
    from mlflow.tracking import MlflowClient

    r = cluster.fusionpipe(
        "submit",
        "--address",
        cluster.dashboard,
        "--mlflow-uri",
        cluster.mlflow,
        "--follow",
        "--json",
        "--",
        *_train_args(cluster, cluster.root / "shared", "two-nodes"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["status"] == "SUCCEEDED" and out["entrypoint"].startswith("python -m pipelines.cli train")
    # The streamed log (stderr with --json): rank 0's start line and its epoch lines.
    assert "training mtinet on 2 workers (cpu)" in r.stderr
    assert "epoch 1/" in r.stderr
    assert cluster.token not in r.stdout + r.stderr

    client = MlflowClient(tracking_uri=cluster.mlflow)
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "two-nodes"
    assert run.data.tags["ray.submission_id"] == out["submission_id"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/semseg/miou")] == [0]
    assert 0.0 <= run.data.metrics["val/semseg/miou"] <= 1.0
    best = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/best")}
    assert {"checkpoints/best/model.pt", "checkpoints/best/meta.json"} <= best
    assert all(cluster.token not in str(v) for v in [*run.data.params.values(), *run.data.tags.values()])

    ckpts = sorted((cluster.root / "shared" / "two-nodes").glob("checkpoint_*/model.pt"))
    assert ckpts and run.data.tags["fusionpipe.best_checkpoint"] == str(ckpts[-1].parent)
    assert not list((cluster.root / "shared").glob(".fusionpipe-shared-check-*")), "marker cleaned up"

    status = cluster.fusionpipe("jobs", "status", out["submission_id"], "--address", cluster.dashboard, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "SUCCEEDED"
    assert json.loads(status.stdout)["metadata"]["fusionpipe.command"].startswith("fusionpipe train")
    listed = cluster.fusionpipe("jobs", "list", "--address", cluster.dashboard, "--json")
    assert out["submission_id"] in {j["submission_id"] for j in json.loads(listed.stdout)["jobs"]}


def test_failing_job_exits_nonzero_with_its_log(cluster):
    r = cluster.fusionpipe(
        "submit",
        "--address",
        cluster.dashboard,
        "--follow",
        "--",
        "fusionpipe",
        "train",
        "--config",
        "nonexistent.yaml",
    )
    assert r.returncode == 1
    assert "FAILED" in r.stderr and "--- last lines of its log ---" in r.stderr
    tail = r.stderr.split("--- last lines of its log ---", 1)[1]
    assert "error: nonexistent.yaml: no such config file" in tail


def test_checkpoint_path_one_node_cannot_see_is_refused(cluster):
    if not cluster.isolated_node:
        pytest.skip("no mount namespaces here (unshare -m + tmpfs): both nodes see every path")
    r = cluster.fusionpipe(
        "submit",
        "--address",
        cluster.dashboard,
        "--mlflow-uri",
        cluster.mlflow,
        "--follow",
        "--",
        *_train_args(cluster, cluster.root / "node-local", "not-shared"),
    )
    assert r.returncode == 1
    tail = r.stderr.split("--- last lines of its log ---", 1)[1]
    assert f"checkpoint.storage_path '{cluster.root / 'node-local'}' is a local path" in tail
    assert "does not see it" in tail and "s3://" in tail


def test_stopped_training_job_is_aborted_and_its_run_closed(cluster):
    from mlflow.tracking import MlflowClient

    args = _train_args(cluster, cluster.root / "shared", "stop-me")
    args[args.index("train.epochs=1")] = "train.epochs=50"
    args[args.index("tracking.experiment=cluster")] = "tracking.experiment=cluster-stop"
    r = cluster.fusionpipe(
        "submit", "--address", cluster.dashboard, "--mlflow-uri", cluster.mlflow, "--json", "--", *args
    )
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)["submission_id"]
    client = MlflowClient(tracking_uri=cluster.mlflow)

    def training() -> bool:  # an epoch is logged: the driver is inside trainer.fit()
        exp = client.get_experiment_by_name("cluster-stop")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return bool(runs) and "train/loss/total" in runs[0].data.metrics

    _wait("the first epoch", training, STEP_TIMEOUT, [])
    stop = cluster.fusionpipe("jobs", "stop", job, "--wait", "--address", cluster.dashboard, "--json")
    assert stop.returncode == 0 and json.loads(stop.stdout) == {
        "submission_id": job,
        "stop_requested": True,
        "status": "STOPPED",
    }
    logs = cluster.fusionpipe("jobs", "logs", job, "--follow", "--address", cluster.dashboard)
    assert logs.returncode == 1 and f"job {job} STOPPED" in logs.stderr
    # SIGINT (not Ray's default SIGTERM) reaches the driver: Ray Train aborts gracefully and the MLflow
    # run is closed as KILLED instead of being left RUNNING, with the resume hint in the log.
    assert "Received SIGINT. Gracefully aborting the training run" in logs.stdout
    assert "re-run with the same --run-name to resume" in logs.stdout + logs.stderr
    run = client.search_runs([client.get_experiment_by_name("cluster-stop").experiment_id])[0]
    assert run.info.status == "KILLED"
    assert list((cluster.root / "shared" / "stop-me").glob("checkpoint_*/model.pt")), "checkpoints so far are kept"


def test_missing_token_is_a_clear_error(cluster):
    no_token = _client_env(cluster.env, None, cluster.root / "home")
    t0 = time.monotonic()
    r = cluster.fusionpipe("jobs", "list", "--address", cluster.dashboard, env=no_token)
    assert r.returncode == 3 and "requires an authentication token and none was found" in r.stderr
    assert cluster.token not in r.stdout + r.stderr and time.monotonic() - t0 < 30
