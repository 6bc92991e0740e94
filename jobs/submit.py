"""Submit fusionpipe commands to a Ray cluster as Ray jobs, and watch them.

A thin layer over ``ray.job_submission.JobSubmissionClient`` that adds what the bare client lacks:

* a bounded-time reachability probe (the client's own requests have no timeout, so a firewalled
  address hangs for minutes);
* Ray token authentication (Ray >= 2.52) read the way Ray reads it (``RAY_AUTH_TOKEN``, then the
  file named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``) and sent as
  ``Authorization: Bearer`` only to a cluster that asks for it. The client sends a token by itself
  only when ``RAY_AUTH_MODE=token`` is set locally, which a laptop submitting to a cluster rarely
  has. The token never appears in output: every message is redacted;
* the runtime environment of a fusionpipe job: the repository as ``working_dir`` minus
  ``.rayignore``, telemetry off, and the tracking/storage settings that are not secrets;
* what that upload holds, file by file (:func:`upload_plan`, the same walk Ray's job client makes),
  without credentials: :data:`CREDENTIAL_PATTERNS` are always excluded, and a file that looks like a
  private key or an AWS credentials file refuses the submission (:func:`check_upload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.compat import ray_working_dir_files
from pipelines.config import load_config, project_root
from pipelines.track.redact import redact_url_password
from pipelines.track.tracker import GIT_COMMIT_ENV, GIT_DIRTY_ENV, git_info, is_local_store

DEFAULT_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
# Set in every job: this project runs without phoning home, and logs should stream as written.
# `jobs stop` then sends SIGINT, like Ctrl-C, so `fusionpipe train` can mark its MLflow run KILLED
# (Ray's default SIGTERM would end the driver with the run left RUNNING), and waits up to 30 s.
BASE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONUNBUFFERED": "1",
    "RAY_JOB_STOP_SIGNAL": "SIGINT",
    "RAY_JOB_STOP_WAIT_TIME_S": "30",
}
# Non-secret tracking/storage settings copied from the submitting shell when set there.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "GOOGLE_CLOUD_PROJECT",
)
# Never passed through a job: the cluster has its own, and runtime_env is shown in the dashboard.
REFUSED_ENV = (AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV, "RAY_AUTH_MODE", *ADDRESS_ENVS)
SECRET_LIKE = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY", re.IGNORECASE)
# Excluded even if .rayignore is edited away: uploading these would be slow, large, or leak data.
#: /weights: ImageNet files (model.pretrained) are hundreds of MB; a job reads them from shared storage.
ALWAYS_EXCLUDE = ("/data", "/.venv", "/.git", "/.dvc/cache", "/ray_results", "/weights", "mlflow.db")
#: Files and directories that hold credentials, never uploaded with a job whatever .rayignore says
#: (.gitignore syntax; a pattern without "/" matches at any depth). docs/cluster.md lists them.
CREDENTIAL_PATTERNS = (
    # environment files, private keys and certificate stores
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.ppk",
    "*.keytab",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    # credential directories of ssh, gpg, cloud and cluster tools
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    "**/.config/gcloud",
    # credential files of tools
    "**/.dvc/config.local",
    ".netrc",
    "_netrc",
    ".pgpass",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    ".boto",
    ".s3cfg",
    ".htpasswd",
    "kubeconfig",
    "auth_token",
    "*credentials.json",
    "client_secret*.json",
    "service-account*.json",
    "service_account*.json",
    "secrets.json",
    "secrets.toml",
    "secrets.yaml",
    "secrets.yml",
    "*.tfstate",
    "*.tfstate.backup",
)
# What a file that is uploaded must not contain: a PEM, OpenSSH or PGP private key, a PuTTY key, or an
# AWS credentials-file line with a secret key.
SECRET_CONTENT = (
    (re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"), "a private key"),
    (re.compile(rb"PuTTY-User-Key-File-\d+:"), "a PuTTY private key"),
    (
        re.compile(rb"(?im)^[ \t]*aws_secret_access_key[ \t]*[=:][ \t]*[\"']?[A-Za-z0-9/+]{40}[\"']?[ \t]*$"),
        "an AWS secret access key",
    ),
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class ClusterError(RuntimeError):
    """The cluster cannot be reached or refused us; the message says what to check."""


class JobSpecError(ValueError):
    """A submission that cannot be built from the given arguments (bad --env, command, config)."""


# --- token --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for messages (never the value)


def find_token(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Token | None:
    """Ray's own precedence: ``RAY_AUTH_TOKEN``, then ``RAY_AUTH_TOKEN_PATH``, then ~/.ray/auth_token."""
    if environ.get(AUTH_TOKEN_ENV, "").strip():
        return Token(environ[AUTH_TOKEN_ENV].strip(), f"${AUTH_TOKEN_ENV}")
    if environ.get(AUTH_TOKEN_PATH_ENV):
        path = Path(environ[AUTH_TOKEN_PATH_ENV]).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise ClusterError(f"${AUTH_TOKEN_PATH_ENV} names {path}, which cannot be read: {e.strerror}") from None
        if not value:
            raise ClusterError(f"${AUTH_TOKEN_PATH_ENV} names {path}, which is empty")
        return Token(value, f"file {path} (${AUTH_TOKEN_PATH_ENV})")
    path = (home or Path.home()) / ".ray" / "auth_token"
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return Token(value, f"file {path}") if value else None


def redact(text: str, token: Token | None) -> str:
    """``text`` with the token and any URL password replaced, safe to print or log."""
    if token is not None and token.value:
        text = text.replace(token.value, "***")

    return redact_url_password(text)


MISSING_TOKEN_HELP = (
    "set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding the token, or put it in ~/.ray/auth_token "
    "(`ray get-auth-token` on the head node prints it)"
)


# --- address and probe --------------------------------------------------------------------------


def normalize_address(address: str | None) -> str:
    """``host:port`` or ``http(s)://host:port`` -> the dashboard's HTTP URL (no trailing slash)."""
    if not address:
        raise JobSpecError(
            "no cluster address: give --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS "
            "(or RAY_ADDRESS) to the head node's dashboard URL"
        )
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise JobSpecError(
            f"--address {address}: a Ray Client address; jobs are submitted to the dashboard, http://HEAD:8265"
        )
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise JobSpecError(f"--address {address}: expected http://HOST:PORT (the Ray dashboard, port 8265 by default)")
    return address


def _reason(exc: Exception) -> str:
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return m.group(1).strip() if m else type(exc).__name__


def probe(url: str, token: Token | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[dict[str, str], str]:
    """Check, in bounded time, that ``url`` is a Ray dashboard that accepts us.

    Returns the headers to send (``Authorization`` only if the cluster uses token auth) and the
    cluster's Ray version. Raises :class:`ClusterError` with what to check otherwise.
    """
    import requests

    shown = redact(url, token)

    def get(path: str, headers: dict[str, str]) -> requests.Response:
        try:
            return requests.get(url + path, headers=headers, timeout=(timeout_s, timeout_s))
        except requests.exceptions.Timeout:
            raise ClusterError(
                f"no answer from the Ray dashboard at {shown} within {timeout_s:g} s: check that the head node is up, "
                "that the address and dashboard port (8265 by default) are right and that a firewall lets you in "
                "(or forward the port: `ray dashboard jobs/cluster-gpu.yaml`)"
            ) from None
        except requests.exceptions.RequestException as e:
            raise ClusterError(
                f"cannot reach the Ray dashboard at {shown}: {_reason(e)}; check that the head node is up and "
                "the address and dashboard port (8265 by default) are right"
            ) from None

    r = get("/api/authentication_mode", {})
    mode = "disabled"
    if r.status_code == 200:
        try:
            mode = r.json().get("authentication_mode", "disabled")
        except ValueError:
            raise ClusterError(
                f"{shown} answered, but not as a Ray dashboard (is it the dashboard port, "
                "8265 by default, rather than the GCS port 6379?)"
            ) from None
    headers: dict[str, str] = {}
    if mode == "token":
        if token is None:
            raise ClusterError(
                f"the Ray cluster at {shown} requires an authentication token and none was found: " + MISSING_TOKEN_HELP
            )
        headers = {"Authorization": f"Bearer {token.value}"}
    r = get("/api/version", headers)
    if r.status_code == 401:
        raise ClusterError(f"the Ray cluster at {shown} requires an authentication token: " + MISSING_TOKEN_HELP)
    if r.status_code == 403:
        raise ClusterError(
            f"the Ray cluster at {shown} rejected the token from {token.source if token else '?'}; "
            "use the cluster's token (`ray get-auth-token` on the head node prints it)"
        )
    try:
        version = r.json()["ray_version"] if r.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        version = None
    if version is None:
        body = redact(r.text[:200], token)
        raise ClusterError(f"{shown} is not a Ray dashboard (GET /api/version: HTTP {r.status_code} {body!r})")
    return headers, version


@contextlib.contextmanager
def _without_address_env() -> Iterator[None]:
    """JobSubmissionClient lets RAY_API_SERVER_ADDRESS/RAY_ADDRESS override its address argument."""
    saved = {k: os.environ.pop(k) for k in ADDRESS_ENVS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class JobClient:
    """A connected ``JobSubmissionClient`` whose errors come out as redacted :class:`ClusterError`."""

    def __init__(
        self, address: str | None, timeout_s: float = DEFAULT_TIMEOUT_S, environ: Mapping[str, str] = os.environ
    ) -> None:
        from ray.job_submission import JobSubmissionClient

        self.url = normalize_address(address)
        self.token = find_token(environ)
        headers, self.cluster_ray_version = probe(self.url, self.token, timeout_s)
        with _without_address_env(), self.errors():
            self.client = JobSubmissionClient(self.url, headers=headers)

    @property
    def shown_url(self) -> str:
        return redact(self.url, self.token)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except (ClusterError, JobSpecError):
            raise
        except Exception as e:  # requests, aiohttp and Ray raise a zoo of types; all mean "the cluster said no"
            # Ray's job SDK raises RuntimeError("Request failed with status code N: BODY."). 404 (no such
            # job) and 400 (e.g. a submission id already taken) are the caller's input, not the cluster.
            refused = re.match(r"Request failed with status code (400|404): (.*)", str(e), re.S)
            if refused:
                lines = [ln.strip() for ln in refused.group(2).strip().rstrip(".").splitlines() if ln.strip()]
                reason = lines[-1] if lines else f"HTTP {refused.group(1)}"  # a 400 carries a traceback
                raise JobSpecError(redact(f"Ray cluster at {self.url}: {reason}", self.token)) from None
            raise ClusterError(redact(f"Ray cluster at {self.url}: {type(e).__name__}: {e}", self.token)) from None

    def submit(
        self,
        entrypoint: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str],
        submission_id: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
    ) -> str:
        with self.errors():
            return self.client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                metadata=metadata,
                submission_id=submission_id,
                entrypoint_num_cpus=num_cpus,
                entrypoint_num_gpus=num_gpus,
            )

    def info(self, job_id: str) -> Any:
        with self.errors():
            return self.client.get_job_info(job_id)

    def status(self, job_id: str) -> str:
        with self.errors():
            return str(self.client.get_job_status(job_id))

    def logs(self, job_id: str) -> str:
        with self.errors():
            return redact(self.client.get_job_logs(job_id), self.token)

    def stop(self, job_id: str) -> bool:
        with self.errors():
            return bool(self.client.stop_job(job_id))

    def list(self) -> list[Any]:
        with self.errors():
            return sorted(self.client.list_jobs(), key=lambda j: j.start_time or 0)

    def follow(self, job_id: str, write: Callable[[str], None], poll_s: float = 1.0) -> str:
        """Stream the job's log through ``write`` until the job ends; returns its final status."""

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(redact(chunk, self.token))

        try:
            asyncio.run(tail())
        except Exception as e:  # a dropped stream is not the job's failure: keep waiting for its status
            write(
                redact(
                    f"\n[fusionpipe] log stream interrupted ({type(e).__name__}: {e}); waiting for the job to end\n",
                    self.token,
                )
            )
        return self.wait(job_id, poll_s)

    def wait(self, job_id: str, poll_s: float = 1.0) -> str:
        """Poll until the job is in a terminal state (the status can trail the log stream's end)."""
        while (status := self.status(job_id)) not in TERMINAL:
            time.sleep(poll_s)
        return status


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


# --- what to run, and where ----------------------------------------------------------------------


def build_entrypoint(command: list[str]) -> str:
    """``fusionpipe X ...`` -> ``python -m pipelines.cli X ...``.

    Run as a module from the job's working_dir, the uploaded code is what runs, not whichever
    fusionpipe version happens to be installed on the cluster image.
    """
    if not command:
        raise JobSpecError("no command to run: put it after `--`, e.g. `-- fusionpipe train --config configs/x.yaml`")
    if command[0] != "fusionpipe":
        raise JobSpecError(
            f"only fusionpipe commands are submitted; got {command[0]!r} (write `-- fusionpipe train ...`)"
        )
    if len(command) < 2:
        raise JobSpecError("`fusionpipe` needs a subcommand, e.g. `fusionpipe train --config configs/x.yaml`")
    return shlex.join(["python", "-m", "pipelines.cli", *command[1:]])


def option_values(command: list[str], name: str) -> list[str]:
    """Values of ``--name V`` / ``--name=V`` in a command line."""
    out: list[str] = []
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            out.append(command[i + 1])
        elif arg.startswith(name + "="):
            out.append(arg[len(name) + 1 :])
    return out


def read_rayignore(root: Path | None = None) -> list[str]:
    root = root or project_root()
    path = root / ".rayignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def excludes(root: Path | None = None) -> list[str]:
    """The runtime_env ``excludes``: ``.rayignore``'s lines, then :data:`ALWAYS_EXCLUDE` and
    :data:`CREDENTIAL_PATTERNS` last, so that no ``!pattern`` in .rayignore brings them back (in
    .gitignore syntax the last matching line wins)."""
    root = root or project_root()
    ours = [*ALWAYS_EXCLUDE, *CREDENTIAL_PATTERNS]
    return [line for line in dict.fromkeys(read_rayignore(root)) if line not in ours] + ours


@dataclass(frozen=True)
class Upload:
    """What a job's ``working_dir`` upload holds: ``files`` as (relative path, bytes), sorted."""

    root: Path
    files: list[tuple[str, int]]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def upload_plan(root: Path | None = None) -> Upload:
    """Every file ``fusionpipe submit`` uploads from ``root``, as Ray's job client will pack it: the
    runtime_env :func:`excludes`, Ray's default excludes, and each ``.gitignore``/``.rayignore`` in the
    tree (:func:`pipelines.compat.ray_working_dir_files`)."""
    root = (root or project_root()).absolute()
    return Upload(root, [(rel, (root / rel).stat().st_size) for rel in ray_working_dir_files(root, excludes(root))])


def _credential_spec() -> Any:
    from pathspec import PathSpec

    return PathSpec.from_lines("gitignore", CREDENTIAL_PATTERNS)


def secret_files(upload: Upload) -> list[tuple[str, str]]:
    """The files of ``upload`` that look like credentials, as (relative path, why): a link to a file
    the credential patterns name (the pattern matched the link's name, not its target), or content
    that :data:`SECRET_CONTENT` matches."""
    spec = _credential_spec()
    root = upload.root.resolve()
    found: list[tuple[str, str]] = []
    for rel, _ in upload.files:
        path = upload.root / rel
        target = path.resolve()
        if target != root / rel:  # a link, or under one: Ray packs what it points to
            try:
                named = target.relative_to(root).as_posix()
            except ValueError:
                named = target.as_posix().lstrip("/")
            if spec.match_file(named):
                found.append((rel, f"a link to {target}"))
                continue
        try:
            data = path.read_bytes()
        except OSError as e:
            raise JobSpecError(f"{path}: cannot be read to check it before uploading it: {e.strerror}") from None
        for pattern, what in SECRET_CONTENT:
            if pattern.search(data):
                found.append((rel, f"holds {what}"))
                break
    return found


def check_upload(upload: Upload) -> None:
    """Refuse an upload with a file that looks like credentials (:func:`secret_files`), naming each one
    and how to leave it out."""
    found = secret_files(upload)
    if not found:
        return
    listed = "; ".join(f"{rel} ({why})" for rel, why in found)
    lines = "".join(f"\n  /{rel}" for rel, _ in found)
    raise JobSpecError(
        f"refusing to upload {len(found)} file(s) from {upload.root} that look like credentials: {listed}. "
        "A job's working directory is stored on the cluster, readable by every job there; keep secrets on "
        "the nodes (instance role, mounted secret). If the job does not need them, add to "
        f"{upload.root / '.rayignore'}:{lines}"
    )


def is_uploaded(path: Path, root: Path | None = None) -> bool:
    """Whether ``path`` (inside ``root``) is in the job's upload (:func:`upload_plan`)."""
    root = (root or project_root()).resolve()
    rel = path.resolve().relative_to(root).as_posix()
    return rel in ray_working_dir_files(root, excludes(root))


def parse_env(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """``["K=V", ...]`` -> (env, warnings); refuses Ray auth/address variables."""
    env: dict[str, str] = {}
    warnings: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise JobSpecError(f"--env {key if sep else item!r}: expected KEY=VALUE with KEY a variable name")
        if key in REFUSED_ENV:
            raise JobSpecError(
                f"--env {key}: not passed through a job; the cluster's nodes have their own Ray "
                "token and address (and a job's environment is shown in the Ray dashboard)"
            )
        if SECRET_LIKE.search(key):
            warnings.append(
                f"--env {key}: a job's environment is visible to anyone who can open the Ray dashboard; "
                "prefer credentials provided on the nodes (instance role, mounted secret)"
            )
        env[key] = value
    return env, warnings


def build_runtime_env(
    env: dict[str, str],
    mlflow_uri: str | None = None,
    environ: Mapping[str, str] = os.environ,
    working_dir: Path | None = None,
) -> dict[str, Any]:
    """The job's runtime_env: the repository (minus excludes) and its environment variables.

    ``MLFLOW_TRACKING_URI`` comes from ``mlflow_uri``, else from the submitting shell unless that is
    a local store (a sqlite file on this machine means nothing on the cluster). ``env`` wins. The git
    commit and dirty flag of ``working_dir`` travel as ``FUSIONPIPE_GIT_*`` (the upload has no .git).
    """
    working_dir = working_dir or project_root()
    env_vars = dict(BASE_ENV)
    # The upload has no .git: the job's MLflow runs get the commit (and dirty flag) from these.
    git = git_info(working_dir)
    if git:
        env_vars.update({GIT_COMMIT_ENV: git["git.commit"], GIT_DIRTY_ENV: git["git.dirty"]})
    env_vars.update({k: environ[k] for k in FORWARDED_ENV if environ.get(k)})
    if "MLFLOW_TRACKING_URI" in env_vars and is_local_store(env_vars["MLFLOW_TRACKING_URI"]):
        del env_vars["MLFLOW_TRACKING_URI"]
    if mlflow_uri:
        env_vars["MLFLOW_TRACKING_URI"] = mlflow_uri
    env_vars.update(env)
    return {"working_dir": str(working_dir), "excludes": excludes(working_dir), "env_vars": env_vars}


def check_config(config: Path, command: list[str], working_dir: Path | None = None) -> list[str]:
    """Validate ``config`` (with the command's ``--set``s) here, and make the command use it.

    Returns the command with ``--config`` added when it had none (``train`` when it was empty).
    The path in the command is relative to ``working_dir``: that is where the job runs.
    """
    working_dir = working_dir or project_root()
    command = list(command) or ["fusionpipe", "train"]
    cfg = load_config(config, option_values(command, "--set"))  # raises ConfigError listing every problem
    check_pretrained(cfg.model.pretrained, working_dir)
    path = config.resolve()
    try:
        rel = path.relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise JobSpecError(
            f"--config {config}: not inside the uploaded working directory {working_dir}, so the "
            "job cannot read it; keep configs in the repository (e.g. configs/)"
        ) from None
    if not is_uploaded(path, working_dir):
        raise JobSpecError(
            f"--config {config}: excluded from the upload (by .rayignore, .gitignore or a credential pattern), "
            "so the job cannot read it"
        )
    given = option_values(command, "--config")
    if not given:
        return [*command, "--config", rel]
    if any((working_dir / g).resolve() != path for g in given):
        raise JobSpecError(f"--config {config} differs from the command's --config {given[0]}; give one")
    return command


def check_pretrained(pretrained: str | None, working_dir: Path) -> None:
    """A relative ``model.pretrained`` is read in the job's copy of the repository: refuse one the upload
    leaves out (``weights/`` always is), before the job starts and fails on a worker."""
    if not pretrained or Path(os.path.expanduser(pretrained)).is_absolute():
        return
    path = working_dir / pretrained
    if not path.is_file() or not is_uploaded(path, working_dir):
        raise JobSpecError(
            f"model.pretrained {pretrained!r}: a relative path is read in the job's uploaded copy of the repository, "
            "and this file is not uploaded (weights/ never is: ImageNet files are large). Put it on storage every "
            "node mounts and give its absolute path: --set model.pretrained=/mnt/shared/weights/<file> (docs/cluster.md)"
        )


def job_metadata(command: list[str]) -> dict[str, str]:
    # Shown in the dashboard, and informational only: without the credentials of any URI in it.
    meta = {"fusionpipe.command": redact_url_password(shlex.join(command))[:1000]}
    meta.update(git_info())
    return meta
