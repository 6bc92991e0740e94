"""Job submission without a cluster: arguments, runtime_env, upload excludes, tokens, probes, errors."""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner

from jobs import submit as js
from pipelines.cli.main import cli
from tests import REPO_ROOT

TOKEN = "s3cret-token-0123456789abcdef"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_ray_env(monkeypatch, tmp_path):
    """No address or token leaks in from the developer's shell; HOME without ~/.ray/auth_token."""
    for k in (
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_AUTH_MODE",
        "MLFLOW_TRACKING_URI",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


class FakeDashboard:
    """A tiny HTTP server answering the two endpoints the probe reads, recording request headers."""

    def __init__(
        self, mode: str = "token", version_status: int | None = None, echo_auth: bool = False, not_ray: bool = False
    ) -> None:
        self.seen: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.seen.append({k.lower(): v for k, v in self.headers.items()})
                if not_ray:
                    return self._send(200, "<html>hello</html>", "text/html")
                if self.path == "/api/authentication_mode":
                    return self._send(200, json.dumps({"authentication_mode": mode}))
                if self.path == "/api/version":
                    auth = self.headers.get("Authorization", "")
                    if version_status is not None:
                        return self._send(version_status, f"echo: {auth}" if echo_auth else "nope", "text/plain")
                    if mode == "token" and not auth:
                        return self._send(401, "Unauthorized: Missing authentication token", "text/plain")
                    if mode == "token" and auth != f"Bearer {TOKEN}":
                        return self._send(403, "Forbidden: Invalid authentication token", "text/plain")
                    return self._send(200, json.dumps({"ray_version": "2.60.0", "version": "4"}))
                return self._send(404, "not found", "text/plain")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dashboard():
    servers: list[FakeDashboard] = []

    def make(**kw) -> FakeDashboard:
        servers.append(FakeDashboard(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


# --- arguments -------------------------------------------------------------------------------------


def test_address_forms():
    assert js.normalize_address("10.0.0.5:8265") == "http://10.0.0.5:8265"
    assert js.normalize_address("https://head.example.com:8443/") == "https://head.example.com:8443"
    with pytest.raises(js.JobSpecError, match="Ray Client address"):
        js.normalize_address("ray://head:10001")
    with pytest.raises(js.JobSpecError, match="no cluster address"):
        js.normalize_address(None)


def test_entrypoint_runs_the_uploaded_code_as_a_module_and_keeps_quoting():
    ep = js.build_entrypoint(
        ["fusionpipe", "train", "--config", "configs/smoke.yaml", "--set", "tracking.run_name=a b"]
    )
    assert ep == "python -m pipelines.cli train --config configs/smoke.yaml --set 'tracking.run_name=a b'"
    assert shlex.split(ep)[-1] == "tracking.run_name=a b"
    with pytest.raises(js.JobSpecError, match="only fusionpipe commands"):
        js.build_entrypoint(["python", "evil.py"])
    with pytest.raises(js.JobSpecError, match="no command to run"):
        js.build_entrypoint([])
    with pytest.raises(js.JobSpecError, match="needs a subcommand"):
        js.build_entrypoint(["fusionpipe"])


def test_env_items_are_parsed_and_ray_secrets_refused():
    env, warnings = js.parse_env(["A=1", "B=x=y", "EMPTY="])
    assert env == {"A": "1", "B": "x=y", "EMPTY": ""} and warnings == []
    env, warnings = js.parse_env(["MLFLOW_TRACKING_TOKEN=abc"])
    assert env == {"MLFLOW_TRACKING_TOKEN": "abc"}
    assert len(warnings) == 1 and "MLFLOW_TRACKING_TOKEN" in warnings[0] and "abc" not in warnings[0]
    for bad, msg in [
        ("RAY_AUTH_TOKEN=x", "their own Ray token"),
        ("RAY_ADDRESS=h:1", "their own Ray token"),
        ("1A=x", "KEY=VALUE"),
        ("NOEQUALS", "KEY=VALUE"),
    ]:
        with pytest.raises(js.JobSpecError, match=msg):
            js.parse_env([bad])


def test_runtime_env_forwards_tracking_but_never_tokens_or_local_stores():
    environ = {
        "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
        "AWS_REGION": "eu-west-1",
        "RAY_AUTH_TOKEN": TOKEN,
        "AWS_SECRET_ACCESS_KEY": "hidden",
    }
    renv = js.build_runtime_env({"EXTRA": "1"}, None, environ)
    assert renv["working_dir"] == str(REPO_ROOT)
    ev = renv["env_vars"]
    assert ev["AWS_REGION"] == "eu-west-1" and ev["EXTRA"] == "1" and ev["RAY_USAGE_STATS_ENABLED"] == "0"
    assert "MLFLOW_TRACKING_URI" not in ev, "a local sqlite store means nothing on the cluster"
    assert TOKEN not in json.dumps(renv) and "hidden" not in json.dumps(renv)
    ev = js.build_runtime_env({}, None, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"})["env_vars"]
    assert ev["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    ev = js.build_runtime_env({"MLFLOW_TRACKING_URI": "http://b:1"}, "http://a:1", {})["env_vars"]
    assert ev["MLFLOW_TRACKING_URI"] == "http://b:1", "--env wins over --mlflow-uri"
    assert {"/data", "/.venv", "mlflow.db", "/.dvc/cache", "/ray_results"} <= set(renv["excludes"])


def _zip_names(root: Path, excludes: list[str], out: Path) -> set[str]:
    from ray._private.runtime_env.packaging import _zip_files

    _zip_files(str(root), excludes, str(out), include_gitignore=True)
    with zipfile.ZipFile(out) as z:
        return set(z.namelist())


def test_ray_packaging_skips_everything_rayignore_names(tmp_path):
    """Ray's own zipper, on a tree with everything that must stay home, keeps only code and configs."""
    root = tmp_path / "repo"
    files = [
        "pipelines/train/driver.py",
        "configs/smoke.yaml",
        "dvc.lock",
        "data/shards/smoke/manifest.json",
        ".venv/bin/python",
        "mlflow.db",
        ".dvc/cache/files/md5/ab/cdef",
        ".dvc/config",
        "ray_results/run/x.pt",
        "outputs/train.json",
        "pipelines/__pycache__/train.cpython-311.pyc",
        ".git/HEAD",
        "mlruns/0/meta.yaml",
        "datasets/data.py",
    ]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    (root / ".rayignore").write_text((REPO_ROOT / ".rayignore").read_text())
    names = _zip_names(root, js.excludes(root), tmp_path / "pkg.zip")
    kept = {n for n in names if not n.endswith("/")}
    assert kept == {
        "pipelines/train/driver.py",
        "configs/smoke.yaml",
        "dvc.lock",
        ".dvc/config",
        "datasets/data.py",
        ".rayignore",
    }
    # .rayignore alone (no runtime_env excludes) already keeps the data and stores out.
    names = _zip_names(root, [], tmp_path / "pkg2.zip")
    assert not any(n.startswith(("data/", ".venv/", "ray_results/", ".dvc/cache/")) or n == "mlflow.db" for n in names)


def test_the_real_repository_uploads_small_and_without_data(tmp_path):
    names = _zip_names(REPO_ROOT, js.excludes(), tmp_path / "repo.zip")
    assert {"pipelines/train/driver.py", "pipelines/cli/main.py", "jobs/submit.py", "configs/smoke.yaml"} <= names
    assert not [
        n
        for n in names
        if n.startswith(("data/", ".venv/", ".git/", "ray_results/", "outputs/")) or n.endswith((".db", ".pyc"))
    ]
    assert (tmp_path / "repo.zip").stat().st_size < 5 * 2**20


def test_config_is_checked_here_and_added_to_the_command(tmp_path):
    cmd = js.check_config(REPO_ROOT / "configs/smoke.yaml", ["fusionpipe", "train", "--set", "train.epochs=1"])
    assert cmd == ["fusionpipe", "train", "--set", "train.epochs=1", "--config", "configs/smoke.yaml"]
    assert js.check_config(REPO_ROOT / "configs/smoke.yaml", []) == [
        "fusionpipe",
        "train",
        "--config",
        "configs/smoke.yaml",
    ]
    same = ["fusionpipe", "train", "--config", "configs/smoke.yaml"]
    assert js.check_config(REPO_ROOT / "configs/smoke.yaml", same) == same
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="train.epochs"):
        js.check_config(REPO_ROOT / "configs/smoke.yaml", ["fusionpipe", "train", "--set", "train.epochs=0"])
    with pytest.raises(js.JobSpecError, match="differs from the command's --config"):
        js.check_config(REPO_ROOT / "configs/smoke.yaml", ["fusionpipe", "train", "--config", "params.yaml"])
    outside = tmp_path / "x.yaml"
    outside.write_text("train: {epochs: 1}\n")
    with pytest.raises(js.JobSpecError, match="not inside the uploaded working directory"):
        js.check_config(outside, ["fusionpipe", "train"])


def test_relative_pretrained_weights_are_never_uploaded_and_refuse_the_submission(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "r50.pth").write_bytes(b"x" * 100)
    (tmp_path / "configs" / "c.yaml").write_text("model: {pretrained: weights/r50.pth}\n")
    assert "weights/r50.pth" not in {rel for rel, _ in js.upload_plan(tmp_path).files}
    with pytest.raises(
        js.JobSpecError, match=r"model.pretrained 'weights/r50.pth': .* --set model.pretrained=/mnt/shared"
    ):
        js.check_config(tmp_path / "configs" / "c.yaml", ["fusionpipe", "train"], working_dir=tmp_path)
    # An absolute path (shared storage every node mounts) is the job's to read.
    cmd = ["fusionpipe", "train", "--set", "model.pretrained=/mnt/shared/weights/r50.pth"]
    assert js.check_config(tmp_path / "configs" / "c.yaml", cmd, working_dir=tmp_path)[-1] == "configs/c.yaml"


# --- tokens ----------------------------------------------------------------------------------------


def test_token_precedence_matches_ray(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    path = tmp_path / "tok"
    path.write_text("  from-path \n")
    assert js.find_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(path)}, home).value == "from-env"
    t = js.find_token({"RAY_AUTH_TOKEN_PATH": str(path)}, home)
    assert t.value == "from-path" and str(path) in t.source
    assert js.find_token({}, home).value == "from-home"
    assert js.find_token({}, tmp_path / "nohome") is None
    with pytest.raises(js.ClusterError, match=r"RAY_AUTH_TOKEN_PATH names .*missing.*cannot be read"):
        js.find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(js.ClusterError, match="is empty"):
        js.find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, home)


def test_redact_hides_token_and_url_passwords():
    t = js.Token(TOKEN, "$RAY_AUTH_TOKEN")
    assert js.redact(f"header Bearer {TOKEN} sent", t) == "header Bearer *** sent"
    assert js.redact("http://user:pw@head:8265/api", None) == "http://user:***@head:8265/api"
    assert js.redact("http://head:8265", t) == "http://head:8265"


def test_token_cluster_without_token_is_a_clear_error(dashboard):
    d = dashboard(mode="token")
    with pytest.raises(
        js.ClusterError, match="requires an authentication token and none was found: set RAY_AUTH_TOKEN"
    ):
        js.probe(d.url, None, 5)


def test_wrong_token_is_rejected_without_showing_it(dashboard):
    d = dashboard(mode="token")
    with pytest.raises(js.ClusterError) as e:
        js.probe(d.url, js.Token("wrong-token-value", "$RAY_AUTH_TOKEN"), 5)
    assert "rejected the token from $RAY_AUTH_TOKEN" in str(e.value) and "wrong-token-value" not in str(e.value)


def test_right_token_is_sent_as_bearer_header(dashboard):
    d = dashboard(mode="token")
    headers, version = js.probe(d.url, js.Token(TOKEN, "$RAY_AUTH_TOKEN"), 5)
    assert headers == {"Authorization": f"Bearer {TOKEN}"} and version == "2.60.0"
    assert d.seen[0].get("authorization") is None, "the mode probe goes out without the token"
    assert d.seen[1]["authorization"] == f"Bearer {TOKEN}"


def test_token_is_not_sent_to_a_cluster_without_auth(dashboard):
    d = dashboard(mode="disabled")
    headers, _ = js.probe(d.url, js.Token(TOKEN, "file ~/.ray/auth_token"), 5)
    assert headers == {} and all("authorization" not in h for h in d.seen)


def test_server_echoing_the_token_is_redacted(dashboard):
    d = dashboard(mode="token", version_status=500, echo_auth=True)
    with pytest.raises(js.ClusterError) as e:
        js.probe(d.url, js.Token(TOKEN, "$RAY_AUTH_TOKEN"), 5)
    assert "is not a Ray dashboard" in str(e.value) and TOKEN not in str(e.value) and "***" in str(e.value)


def test_something_else_on_the_port_is_named(dashboard):
    d = dashboard(not_ray=True)
    with pytest.raises(js.ClusterError, match="not as a Ray dashboard"):
        js.probe(d.url, None, 5)


# --- unreachable addresses in bounded time --------------------------------------------------------


def test_refused_connection_is_reported_at_once():
    t0 = time.monotonic()
    with pytest.raises(js.ClusterError, match="cannot reach the Ray dashboard at http://127.0.0.1:.*refused"):
        js.probe(f"http://127.0.0.1:{_closed_port()}", None, 10)
    assert time.monotonic() - t0 < 5


def test_silent_server_times_out_in_bounded_time():
    with socket.socket() as s:  # accepts connections (kernel backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        t0 = time.monotonic()
        with pytest.raises(js.ClusterError, match=r"no answer from the Ray dashboard .* within 1 s"):
            js.probe(f"http://127.0.0.1:{s.getsockname()[1]}", None, 1.0)
        assert time.monotonic() - t0 < 5


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_unreachable_address_exits_3_quickly(no_ray_env):
    t0 = time.monotonic()
    r = CliRunner().invoke(
        cli,
        [
            "submit",
            "--address",
            f"127.0.0.1:{_closed_port()}",
            "--timeout",
            "2",
            "--",
            "fusionpipe",
            "train",
            "--config",
            "configs/smoke.yaml",
        ],
    )
    assert r.exit_code == 3, r.output
    assert "cannot reach the Ray dashboard" in r.output and time.monotonic() - t0 < 10


def test_cli_bad_input_fails_before_any_network(no_ray_env):
    port = _closed_port()  # exit 2 (bad input), not 3 (cluster): nothing was contacted
    r = CliRunner().invoke(cli, ["submit", "--address", f"127.0.0.1:{port}", "--", "python", "x.py"])
    assert r.exit_code == 2 and "only fusionpipe commands" in r.output
    r = CliRunner().invoke(
        cli,
        [
            "submit",
            "--address",
            f"127.0.0.1:{port}",
            "--config",
            "configs/smoke.yaml",
            "--",
            "fusionpipe",
            "train",
            "--set",
            "optim.lr=-1",
            "--set",
            "bogus.key=1",
        ],
    )
    assert r.exit_code == 2 and "optim.lr" in r.output and "bogus" in r.output
    r = CliRunner().invoke(cli, ["submit", "--", "fusionpipe", "train"])
    assert r.exit_code == 2 and "no cluster address" in r.output
    r = CliRunner().invoke(
        cli, ["submit", "--address", f"127.0.0.1:{port}", "--env", "RAY_AUTH_TOKEN=x", "--", "fusionpipe", "train"]
    )
    assert r.exit_code == 2 and "RAY_AUTH_TOKEN" in r.output


def test_cli_reads_address_from_ray_address(no_ray_env, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{port}")
    r = CliRunner().invoke(cli, ["jobs", "list", "--timeout", "2"])
    assert r.exit_code == 3 and f"127.0.0.1:{port}" in r.output


def test_cli_missing_token_exits_3_with_what_to_set(no_ray_env, dashboard):
    d = dashboard(mode="token")
    r = CliRunner().invoke(cli, ["jobs", "status", "raysubmit_x", "--address", d.url, "--json"])
    assert r.exit_code == 3
    assert json.loads(r.stdout.splitlines()[0])["ok"] is False
    assert "RAY_AUTH_TOKEN_PATH" in r.output and "ray get-auth-token" in r.output


class FakeJobClient:
    """Stands in for JobClient: a job whose log streams in chunks and which ends FAILED."""

    submitted: list[dict] = []

    def __init__(self, address, timeout_s=10.0, environ=None):
        self.url, self.shown_url, self.cluster_ray_version = address, address, ray.__version__
        self.token = js.Token(TOKEN, "$RAY_AUTH_TOKEN")
        self.client = self
        self.statuses = iter(["RUNNING", "FAILED"])

    async def tail_job_logs(self, job_id):
        for i in range(60):
            yield f"line {i}\n"
        yield f"leaked {TOKEN}\n"

    def submit(self, entrypoint, runtime_env, metadata, submission_id, num_cpus, num_gpus):
        FakeJobClient.submitted.append({"entrypoint": entrypoint, "runtime_env": runtime_env, "num_gpus": num_gpus})
        return "raysubmit_fake"

    def status(self, job_id):
        return next(self.statuses)

    follow, wait = js.JobClient.follow, js.JobClient.wait

    def info(self, job_id):
        return type("Info", (), {"message": "Job entrypoint command failed with exit code 2"})()

    def logs(self, job_id):
        return "".join(f"line {i}\n" for i in range(60)) + "error: boom\n"


def test_follow_streams_redacted_log_and_failed_job_exits_1_with_tail(no_ray_env, monkeypatch):
    monkeypatch.setattr(js, "JobClient", FakeJobClient)
    monkeypatch.setattr(js.time, "sleep", lambda s: None)
    r = CliRunner().invoke(
        cli,
        [
            "submit",
            "--address",
            "http://head:8265",
            "--follow",
            "--entrypoint-num-gpus",
            "1",
            "--",
            "fusionpipe",
            "train",
            "--config",
            "configs/smoke.yaml",
        ],
    )
    assert r.exit_code == 1, r.output
    sub = FakeJobClient.submitted[-1]
    assert sub["entrypoint"] == "python -m pipelines.cli train --config configs/smoke.yaml" and sub["num_gpus"] == 1
    assert "line 0\n" in r.stdout and "leaked ***" in r.stdout and TOKEN not in r.output
    assert "job raysubmit_fake FAILED: Job entrypoint command failed with exit code 2" in r.stderr
    tail = r.stderr.split("--- last lines of its log ---\n", 1)[1].splitlines()
    assert tail[-1] == "error: boom" and tail[0] == "line 21" and len(tail) == js.LOG_TAIL_LINES


def test_job_env_carries_the_git_commit_for_runs_in_the_upload(tmp_path, monkeypatch):
    import subprocess

    from jobs.submit import build_runtime_env
    from pipelines.track.tracker import GIT_COMMIT_ENV, GIT_DIRTY_ENV, git_info
    from tests import REPO_ROOT

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    env = build_runtime_env({}, environ={})["env_vars"]
    assert env[GIT_COMMIT_ENV] == head and env[GIT_DIRTY_ENV] in ("true", "false")
    # In the job's working directory (no .git) the tags come from those variables.
    monkeypatch.setenv(GIT_COMMIT_ENV, head)
    monkeypatch.setenv(GIT_DIRTY_ENV, "false")
    assert git_info(tmp_path) == {"git.commit": head, "git.dirty": "false"}
    monkeypatch.delenv(GIT_COMMIT_ENV)
    assert git_info(tmp_path) == {}


def test_logs_and_a_tracking_password_are_kept_out_of_output(no_ray_env, monkeypatch):
    # A job's log as the cluster returns it is redacted before anyone prints it (jobs logs, a failed
    # job's tail), like the streamed log.
    client = object.__new__(js.JobClient)
    client.url, client.token = "http://head:8265", js.Token(TOKEN, "$RAY_AUTH_TOKEN")
    client.client = type(
        "Inner", (), {"get_job_logs": lambda self, job_id: f"token {TOKEN} uri http://u:pw@m:5000\n"}
    )()
    assert client.logs("raysubmit_x") == "token *** uri http://u:***@m:5000\n"
    # A tracking URI with a password still reaches the job, with a warning that the dashboard shows it.
    monkeypatch.setattr(js, "JobClient", FakeJobClient)
    r = CliRunner().invoke(
        cli,
        [
            "submit",
            "--address",
            "http://head:8265",
            "--mlflow-uri",
            "http://u:pw@m:5000",
            "--",
            "fusionpipe",
            "train",
            "--config",
            "configs/smoke.yaml",
        ],
    )
    assert FakeJobClient.submitted[-1]["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://u:pw@m:5000"
    assert "warning: MLFLOW_TRACKING_URI carries a password" in r.stderr and "pw" not in r.stderr.replace(
        "password", ""
    )
    r = CliRunner().invoke(
        cli,
        [
            "submit",
            "--address",
            "http://head:8265",
            "--json",
            "--",
            "fusionpipe",
            "train",
            "--config",
            "configs/smoke.yaml",
            "--set",
            "tracking.uri=http://u:pw@m:5000",
        ],
    )
    assert "warning: the command carries a URL with a password" in r.stderr
    assert json.loads(r.stdout)["entrypoint"].endswith("tracking.uri=http://u:***@m:5000")  # printed redacted


def test_redaction_covers_every_userinfo_shape_and_every_printed_error(capsys):
    from pipelines.cli.output import fail
    from pipelines.track.redact import redact_url_password as r

    assert r("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"  # "@" inside the password
    assert r("http://:tok@h") == "http://***@h" and r("https://ghp_TOKEN@github.com/x") == "https://***@github.com/x"
    assert r("see http://h/p?q=a@b and x@y.com") == "see http://h/p?q=a@b and x@y.com"  # no userinfo: unchanged
    with pytest.raises(SystemExit):
        fail("API request to http://alice:s3cret@m:5000/api failed", as_json=True)
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err and json.loads(out)["error"].startswith("API request to http://alice:***@m:5000")


def test_redaction_hides_object_store_keys_and_query_string_secrets():
    from pipelines.track.redact import redact_url_password as r
    from pipelines.track.redact import redact_value, strip_secrets

    assert r("s3://AKIAKEY:SECRETKEY@bucket/rr") == "s3://AKIAKEY:***@bucket/rr"
    assert r("s3://AKIAKEY:wJalr/K7MDENG@bucket/rr") == "s3://AKIAKEY:***@bucket/rr"  # an unencoded "/"
    signed = "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12"
    assert r(signed) == "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***"
    assert r("s3://b/r?access_key=AK&secret_key=SK&session_token=ST&region=eu") == (
        "s3://b/r?access_key=***&secret_key=***&session_token=***&region=eu"
    )
    assert (
        r("https://acct.blob.core.windows.net/c?sv=2022&sig=abc%3D")
        == "https://acct.blob.core.windows.net/c?sv=2022&sig=***"
    )
    assert r("https://x/cb#access_token=abc&state=1") == "https://x/cb#access_token=***&state=1"
    assert r('{"a": "http://u:pw@h", "b": "x@y", "c": "https://registry.npmjs.org/@scope/pkg"}') == (
        '{"a": "http://u:***@h", "b": "x@y", "c": "https://registry.npmjs.org/@scope/pkg"}'
    )
    assert redact_value({"a": ["s3://K:S@b", 1, None], "b": {"c": "gs://b/r?key=K"}}) == {
        "a": ["s3://K:***@b", 1, None],
        "b": {"c": "gs://b/r?key=***"},
    }
    assert strip_secrets("s3://K:S@b/r?secret_key=S&region=eu") == "s3://b/r?region=eu"
    assert strip_secrets("s3://b/r?secret_key=S") == "s3://b/r"


def test_a_request_the_cluster_refuses_is_bad_input_not_an_unreachable_cluster():
    client = object.__new__(js.JobClient)
    client.url, client.token = "http://head:8265", js.Token(TOKEN, "$RAY_AUTH_TOKEN")
    with pytest.raises(js.JobSpecError, match=r"^Ray cluster at http://head:8265: Job raysubmit_nope does not exist$"):
        with client.errors():
            raise RuntimeError("Request failed with status code 404: Job raysubmit_nope does not exist.")
    body = (
        'Traceback (most recent call last):\n  File "job_manager.py", line 554\nValueError: Job with '
        f"submission_id x already exists. Please use a different submission_id. {TOKEN}\n"
    )
    with pytest.raises(js.JobSpecError) as e:
        with client.errors():
            raise RuntimeError(f"Request failed with status code 400: {body}.")
    assert str(e.value).startswith(
        "Ray cluster at http://head:8265: ValueError: Job with submission_id x already exists"
    ) and TOKEN not in str(e.value)
    with pytest.raises(js.ClusterError, match="status code 500"):  # the cluster's own failure stays exit 3
        with client.errors():
            raise RuntimeError("Request failed with status code 500: No available agent to submit job.")


# --- what is uploaded: never credentials ----------------------------------------------------------

# Built at run time, so that this file does not itself look like a key to the upload check.
PEM_KEY = (
    "-----BEGIN "
    + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"
)
CODE = {
    "pipelines/x.py": "print('hi')\n",
    "configs/smoke.yaml": "train: {epochs: 1}\n",
    "docs/keys.md": "A `-----BEGIN ... PRIVATE KEY-----` block is refused; so is aws_secret_access_key = <40 chars>.\n",
    "environment.yaml": "name: env\n",  # not .env
    "keys.py": "KEY_NAMES = ['a']\n",  # not *.key
}
CREDENTIALS = [
    ".env",
    ".env.production",
    "services/api/.env",
    "tls/server.pem",
    "tls/server.key",
    "certs/client.p12",
    "certs/client.pfx",
    "id_rsa",
    "keys/id_ed25519",
    "keys/id_ed25519.pub",
    "id_ecdsa",
    ".netrc",
    ".pgpass",
    ".dvc/config.local",
    ".aws/credentials",
    ".aws/config",
    ".ssh/config",
    ".gnupg/private-keys-v1.d/x.key",
    "gcp/credentials.json",
    "gcp/application_default_credentials.json",
    ".git-credentials",
    ".pypirc",
    "kubeconfig",
    ".kube/config",
    "deploy/secrets.yaml",
]


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_credential_files_are_never_uploaded_whatever_rayignore_says(tmp_path):
    from tests.pipelines.test_compat import packaged_by_ray_job_client

    rayignore = "/data\n!.env\n!*.pem\n!.aws/\n!/id_rsa\n"  # a .rayignore that tries to bring them back
    root = _tree(tmp_path / "repo", {**CODE, **dict.fromkeys(CREDENTIALS, "secret\n"), ".rayignore": rayignore})
    (root / ".dvc" / "config").write_text("[core]\n    remote = s3\n")
    expected = {*CODE, ".rayignore", ".dvc/config"}
    upload = js.upload_plan(root)
    assert {rel for rel, _ in upload.files} == expected
    assert dict(upload.files)["pipelines/x.py"] == len(CODE["pipelines/x.py"])
    assert upload.total_bytes == sum((root / rel).stat().st_size for rel in expected)
    # What Ray's job client packs and uploads with these excludes is exactly that list.
    assert packaged_by_ray_job_client(root, js.excludes(root)) == expected
    # The credential patterns come after .rayignore's lines: no "!pattern" there re-includes them.
    ex = js.excludes(root)
    assert ex[-len(js.CREDENTIAL_PATTERNS) :] == list(js.CREDENTIAL_PATTERNS) and ex.index("!.env") < ex.index(".env")
    assert not js.is_uploaded(root / ".env", root) and not js.is_uploaded(root / "tls/server.pem", root)
    assert js.is_uploaded(root / "configs/smoke.yaml", root)
    assert js.secret_files(upload) == []


def test_the_real_repository_upload_is_what_ray_packs_and_holds_no_credentials():
    from tests.pipelines.test_compat import packaged_by_ray_job_client

    upload = js.upload_plan(REPO_ROOT)
    names = {rel for rel, _ in upload.files}
    assert names == packaged_by_ray_job_client(REPO_ROOT, js.excludes(REPO_ROOT))
    assert js.secret_files(upload) == []
    assert not js.is_uploaded(REPO_ROOT / ".env", REPO_ROOT)


def test_a_file_that_looks_like_a_key_refuses_the_submission_until_excluded(tmp_path):
    aws_line = "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" + "\n"
    sa = json.dumps({"type": "service_account", "private_key": PEM_KEY.replace("OPENSSH ", "")})
    root = _tree(
        tmp_path / "repo",
        {**CODE, "notes/deploy.txt": "ssh in with:\n" + PEM_KEY, "my-project-1a2b.json": sa, "ops/creds.ini": aws_line},
    )
    home = _tree(tmp_path / "home", {".aws/credentials": "[default]\n"})
    (root / "cloud").symlink_to(home / ".aws" / "credentials")  # its name says nothing; its target does
    found = dict(js.secret_files(js.upload_plan(root)))
    assert found == {
        "notes/deploy.txt": "holds a private key",
        "my-project-1a2b.json": "holds a private key",
        "ops/creds.ini": "holds an AWS secret access key",
        "cloud": f"a link to {home / '.aws' / 'credentials'}",
    }
    with pytest.raises(js.JobSpecError) as e:
        js.check_upload(js.upload_plan(root))
    message = str(e.value)
    assert message.startswith(f"refusing to upload 4 file(s) from {root} that look like credentials: cloud (a link")
    assert "notes/deploy.txt (holds a private key)" in message and f"add to {root / '.rayignore'}:" in message
    assert "\n  /notes/deploy.txt" in message and "b3BlbnNzaC" not in message and "wJalr" not in message
    # Excluded as the message says, the same tree uploads.
    (root / ".rayignore").write_text("".join(f"/{rel}\n" for rel in found))
    js.check_upload(js.upload_plan(root))
    assert "notes/deploy.txt" not in {rel for rel, _ in js.upload_plan(root).files}


def test_cli_dry_run_lists_every_file_and_the_size_and_contacts_no_cluster(tmp_path, monkeypatch, no_ray_env):
    from tests.pipelines.test_compat import packaged_by_ray_job_client

    root = _tree(tmp_path / "repo", {**CODE, ".env": "TOKEN=x\n", "id_rsa": PEM_KEY})
    monkeypatch.setenv("FUSIONPIPE_PROJECT_ROOT", str(root))
    monkeypatch.setattr(js, "JobClient", None)  # any attempt to connect fails the test
    r = CliRunner().invoke(cli, ["submit", "--dry-run", "--json", "--", "fusionpipe", "train", "--config", "c.yaml"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    paths = [f["path"] for f in out["upload"]["files"]]
    assert set(paths) == packaged_by_ray_job_client(root, js.excludes(root)) == set(CODE)
    assert paths == sorted(paths) and out["upload"]["count"] == len(CODE)
    assert out["upload"]["bytes"] == sum(len(t.encode()) for t in CODE.values())
    assert out["dry_run"] is True and out["working_dir"] == str(root)
    assert out["entrypoint"] == "python -m pipelines.cli train --config c.yaml"
    r = CliRunner().invoke(cli, ["submit", "--dry-run", "--", "fusionpipe", "train"])
    assert r.exit_code == 0 and "dry run: nothing submitted" in r.stdout
    assert f"upload:      {root}: {len(CODE)} files" in r.stdout
    assert "pipelines/x.py" in r.stdout and ".env" not in r.stdout.replace("environment.yaml", "")


def test_cli_refuses_a_key_before_any_network_exit_2(tmp_path, monkeypatch, no_ray_env):
    root = _tree(tmp_path / "repo", {**CODE, "notes/deploy.txt": PEM_KEY})
    monkeypatch.setenv("FUSIONPIPE_PROJECT_ROOT", str(root))
    for extra in (["--dry-run"], ["--address", f"127.0.0.1:{_closed_port()}"]):
        r = CliRunner().invoke(cli, ["submit", *extra, "--json", "--", "fusionpipe", "train"])
        assert r.exit_code == 2, r.output
        error = json.loads(r.stdout)["error"]
        assert "look like credentials: notes/deploy.txt (holds a private key)" in error and ".rayignore" in error


def test_job_metadata_carries_the_command_without_credentials():
    meta = js.job_metadata(
        ["fusionpipe", "train", "--set", "checkpoint.storage_path=s3://AKIA123:wJalr/K7MDENG@bucket/rr"]
    )
    assert meta["fusionpipe.command"].endswith("checkpoint.storage_path=s3://AKIA123:***@bucket/rr")
