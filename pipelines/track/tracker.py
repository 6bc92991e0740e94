"""MLflow tracking: one writer (rank 0 or the driver), batched requests, reproducibility tags.

Conventions (docs/training-internals.md, "The MLflow record"): the default store is
``sqlite:///<project root>/mlflow.db`` (absolute, so every local worker writes the same file); params are
the flattened config; tags carry the git commit and dirty flag, the data version (manifest digest,
DVC hash and, for ``data.rev``, the data's git commit), the hash of each config plugin's code and the
Ray job id; metrics are logged per
epoch with ``step = epoch``.

Metrics ride through an outage of the tracking store (:meth:`Tracker.log_metrics`): a batch the store
does not take stays buffered, in order, and is sent again with the next epoch's and at the end of the
run (:meth:`Tracker.flush`), for at most ``tracking.max_outage_s`` seconds of one outage.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pipelines.compat import ray_job_submission_id
from pipelines.config import ConfigError, project_root
from pipelines.track.redact import redact_url_password, redact_value

PARAM_MAX = 6000  # MLflow's limit on a param value
BATCH_METRICS = 1000  # MLflow's limit per log_batch request
GIT_COMMIT_ENV, GIT_DIRTY_ENV = "FUSIONPIPE_GIT_COMMIT", "FUSIONPIPE_GIT_DIRTY"

log = logging.getLogger(__name__)

# MLflow's own retries of one HTTP request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7 with backoff
# factor 2) sleep about four minutes against a server that is down. For the buffered metric batches and
# the previews the tracker does the waiting itself, between epochs: MLflow tries a request twice at
# once, and a server that accepts but never answers costs at most ATTEMPT_TIMEOUT_S (unless
# MLFLOW_HTTP_REQUEST_TIMEOUT is set). MLflow reads these variables at every request.
ATTEMPT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
ATTEMPT_TIMEOUT_S = 30
RETRY_INTERVAL_MAX_S = 10.0  # the longest wait between two tries of the end-of-run flush
# MLflow error codes of a store that is down, overloaded or timing out (a request MLflow could not send,
# or a 5xx/429 after its retries, is INTERNAL_ERROR); any other code is the request's fault and is
# raised at once.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",
        "IO_ERROR",
        "SERVICE_UNDER_MAINTENANCE",
        "WORKSPACE_TEMPORARILY_UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "REQUEST_LIMIT_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "COULD_NOT_ACQUIRE_LOCK",
    }
)


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def check_store_for_cluster(uri: str, num_nodes: int) -> None:
    """A local store cannot be shared by workers on several machines: refuse early, say what to do."""
    if num_nodes > 1 and is_local_store(uri):
        raise ConfigError(
            f"tracking URI {uri!r} is a local store but the Ray cluster has {num_nodes} nodes; workers on other "
            "nodes cannot write it. Start a server on an address the other nodes reach (`mlflow server "
            "--backend-store-uri sqlite:///mlflow.db --host HOST --port 5000`) and set tracking.uri (or "
            "MLFLOW_TRACKING_URI) to http://HOST:5000"
        )


def git_info(repo: Path | None = None) -> dict[str, str]:
    repo = repo or project_root()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if not commit:
        # A submitted job runs in an uploaded copy without .git: `fusionpipe submit` passes the commit.
        if os.environ.get(GIT_COMMIT_ENV):
            return {"git.commit": os.environ[GIT_COMMIT_ENV], "git.dirty": os.environ.get(GIT_DIRTY_ENV, "unknown")}
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def source_tags(command: str, git: dict[str, str], repo: Path | None = None) -> dict[str, str]:
    """The tags MLflow's own UI reads for a run's source and user, which ``mlflow.start_run`` sets and
    ``MlflowClient.create_run`` does not: ``mlflow.source.name`` (the fusionpipe command that made the
    run), ``mlflow.source.type`` (``JOB`` for a Ray job, else ``LOCAL``), ``mlflow.source.git.commit`` (the
    ``git.commit`` of ``git``), ``mlflow.source.git.branch`` and ``mlflow.source.git.repoURL`` (the
    ``origin`` remote, credentials hidden) where git knows them, and ``mlflow.user`` (which MLflow also
    stores as the run's user)."""
    repo = repo or project_root()
    tags = {"mlflow.source.name": command, "mlflow.source.type": "JOB" if ray_job_submission_id() else "LOCAL"}
    if git.get("git.commit"):
        tags["mlflow.source.git.commit"] = git["git.commit"]

    def git_out(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    branch = git_out("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":  # HEAD: a detached checkout has no branch
        tags["mlflow.source.git.branch"] = branch
    remote = git_out("remote", "get-url", "origin")
    if remote:
        tags["mlflow.source.git.repoURL"] = redact_url_password(remote)
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        pass
    return tags


def plugin_tags(names: list[str], repo: Path | None = None) -> dict[str, str]:
    """Tags that name the code of a config's plugins: ``plugin.<module>.sha256`` and ``plugin.<module>.path``.

    A plugin outside the repository is not covered by ``git.commit``, and an untracked one inside it not
    by ``git.dirty``; its hash is. The hash is over the module's source file, or for a package over every
    ``.py`` file under it (relative path and bytes, in sorted order). The modules must be imported already
    (the config's validation imported them). A module without a source file (an extension, a namespace
    package) gets ``sha256`` ``unknown``.
    """
    repo = repo or project_root()
    import hashlib
    import sys

    tags: dict[str, str] = {}
    for name in names:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if module is None or not file or not file.endswith(".py"):
            tags[f"plugin.{name}.sha256"] = "unknown"
            continue
        path = Path(file).resolve()
        h = hashlib.sha256()
        if hasattr(module, "__path__"):  # a package: all of its Python sources
            root = path.parent
            for f in sorted(root.rglob("*.py")):
                if "__pycache__" in f.parts:
                    continue
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
            shown = root
        else:
            h.update(path.read_bytes())
            shown = path
        try:
            shown = shown.relative_to(repo.resolve())
        except ValueError:
            pass
        tags[f"plugin.{name}.sha256"] = h.hexdigest()
        tags[f"plugin.{name}.path"] = shown.as_posix()
    return tags


def changed_plugins(logged: dict[str, str], now: dict[str, str]) -> list[str]:
    """Plugins whose code (``plugin.<module>.sha256``) differs between a run's tags and ``now``, sorted;
    a plugin added or removed since counts as changed."""

    def hashes(tags: dict[str, str]) -> dict[str, str]:
        return {
            k[len("plugin.") : -len(".sha256")]: v
            for k, v in tags.items()
            if k.startswith("plugin.") and k.endswith(".sha256")
        }

    a, b = hashes(logged), hashes(now)
    return sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))


def ray_job_tags() -> dict[str, str]:
    tags: dict[str, str] = {}
    sub = ray_job_submission_id()
    if sub:
        tags["ray.submission_id"] = sub
    try:
        import ray

        if ray.is_initialized():
            tags["ray.job_id"] = ray.get_runtime_context().get_job_id()
    except ImportError:
        pass
    return tags


class TrackingStoreError(RuntimeError):
    """A training worker could not reach or write the MLflow tracking store; the message has its URI's
    password hidden (the worker's own exception text names the URI, and Ray prints and forwards it)."""


def store_error(e: BaseException) -> BaseException | None:
    """The MLflow tracking-store error behind ``e``: ``e`` itself, or one of a Ray Train worker group's
    failures; None when ``e`` has nothing to do with the store."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    if isinstance(e, (MlflowException, RequestException, TrackingStoreError)):
        return e
    for failure in (getattr(e, "worker_failures", None) or {}).values():
        found = store_error(failure) if isinstance(failure, BaseException) else None
        if found is not None:
            return found
    cause = getattr(e, "cause", None)  # a RayTaskError wraps the worker's exception
    return store_error(cause) if isinstance(cause, BaseException) and cause is not e else None


def run_not_found(e: Exception) -> bool:
    """Whether an MLflow error means "no such run" (the caller's input), not a store that failed:
    only then may a caller turn it into its own "unknown run" error (exit 2); anything else is the
    store's, for :func:`pipelines.cli.output.tracking_store_errors` (exit 3)."""
    return getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` says the tracking store cannot be reached right now (a refused connection, a
    timeout, a 5xx or 429 after MLflow's retries), so the same request may succeed later; a request the
    store refused for its content or credentials is not."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    if isinstance(e, RequestException):
        return True
    return isinstance(e, MlflowException) and getattr(e, "error_code", None) in TRANSIENT_ERROR_CODES


@contextlib.contextmanager
def _quick_attempt() -> Iterator[None]:
    """MLflow tries the requests made inside twice at once instead of backing off for minutes
    (:data:`ATTEMPT_ENV`), and urllib3 does not log its retry (the tracker's own warning says what
    happened); the environment and the log level are restored after."""
    names = [*ATTEMPT_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT"]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(ATTEMPT_ENV)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(ATTEMPT_TIMEOUT_S))
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _short(e: BaseException, limit: int = 300) -> str:
    text = redact_url_password(f"{type(e).__name__}: {e}".replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Tracker:
    """A thin, batching wrapper over ``MlflowClient`` bound to one run.

    :meth:`log_metrics` never loses a metric to a store that is briefly away: the batch is buffered and
    sent again, in order, by every later :meth:`log_metrics` and by :meth:`flush`. One outage may last
    ``max_outage_s`` seconds (from the first failed request); a request that fails after that raises
    :class:`TrackingStoreError`. Rank 0 is the only writer of a run's metrics, from one thread.
    """

    def __init__(
        self,
        uri: str,
        run_id: str,
        *,
        max_outage_s: float = 600.0,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
        self.client = client
        self.uri, self.run_id = uri, run_id
        self.max_outage_s = max_outage_s
        self._clock, self._sleep = clock, sleep
        self._pending: list[Any] = []  # mlflow.entities.Metric, in the order they were logged
        self._down_since: float | None = None  # the clock at the first failed request of this outage
        self._last_error = ""

    @classmethod
    def create_run(cls, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> Tracker:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=run_name, tags=redact_value(tags))
        return cls(uri, run.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param_value(v)) for k, v in sorted(params.items()) if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer ``metrics`` at ``step`` (timestamped now) and send everything buffered, in order, in
        ``log_batch`` requests of at most :data:`BATCH_METRICS`. A store that cannot be reached keeps
        them buffered for the next call; see :meth:`flush`."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._pending += [Metric(_metric_key(k), float(v), ts, step) for k, v in sorted(metrics.items())]
        self.flush()

    @property
    def store_down(self) -> bool:
        """Whether the last request to the store failed and metrics wait for it."""
        return self._down_since is not None

    def unlogged(self) -> list[list[Any]]:
        """The buffered metrics as ``[key, value, timestamp, step]`` lists (a NaN value is ``None``), in
        order: what a checkpoint keeps so a resumed worker can send them (:meth:`requeue`)."""
        return [[m.key, None if math.isnan(m.value) else m.value, m.timestamp, m.step] for m in self._pending]

    def requeue(self, entries: Iterable[list[Any]], skip_steps: Iterable[int] = ()) -> None:
        """Buffer metrics that :meth:`unlogged` returned in an earlier process, except those at
        ``skip_steps`` (steps the store already holds), and try to send them."""
        from mlflow.entities import Metric

        skip = set(skip_steps)
        back = [
            Metric(str(k), math.nan if v is None else float(v), int(ts), int(step))
            for k, v, ts, step in entries
            if int(step) not in skip
        ]
        if back:
            log.warning(
                f"{len(back)} metrics of step(s) {sorted({m.step for m in back})} that the MLflow tracking store "
                "had not taken when the checkpoint was written are sent now"
            )
            self._pending[:0] = back
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Send the buffered metrics. Without ``wait``, one try: a store that cannot be reached keeps
        them buffered (a warning when the outage starts, another when it ends saying how many were sent).
        With ``wait`` (the end of a run), try again every few seconds until the store takes them.
        Either way, a failure more than ``max_outage_s`` seconds into one outage raises
        :class:`TrackingStoreError` (URI password hidden); a request the store refuses for another reason
        than being unreachable raises at once."""
        interval = 1.0
        announced = False
        while self._pending:
            try:
                self._send()
            except Exception as e:
                if not is_transient(e):
                    raise
                self._failed(e)
                if not wait:
                    return
                remaining = self._down_since + self.max_outage_s - self._clock()  # type: ignore[operator]
                if not announced:
                    log.warning(
                        f"waiting up to {max(0.0, remaining):.0f} s more for the MLflow tracking store to take "
                        f"{len(self._pending)} buffered metrics before the run ends"
                    )
                    announced = True
                self._sleep(max(0.0, min(interval, remaining)))
                interval = min(2 * interval, RETRY_INTERVAL_MAX_S)

    def _send(self) -> None:
        sent = 0
        with _quick_attempt():
            while self._pending:
                chunk = self._pending[:BATCH_METRICS]
                self.client.log_batch(self.run_id, metrics=chunk)
                del self._pending[: len(chunk)]
                sent += len(chunk)
        if self._down_since is not None:
            log.warning(
                f"MLflow tracking store {redact_url_password(self.uri)} is reachable again after "
                f"{self._clock() - self._down_since:.0f} s: sent {sent} buffered metrics"
            )
            self._down_since = None

    def _failed(self, e: BaseException) -> None:
        now = self._clock()
        self._last_error = _short(e)
        if self._down_since is None:
            self._down_since = now
            log.warning(
                f"MLflow tracking store {redact_url_password(self.uri)} cannot be reached ({self._last_error}); "
                f"training goes on and the metrics are buffered, retried every epoch and at the end of the "
                f"run for up to {self.max_outage_s:g} s (tracking.max_outage_s)"
            )
        if now - self._down_since >= self.max_outage_s:
            steps = sorted({m.step for m in self._pending})
            raise TrackingStoreError(
                f"{redact_url_password(self.uri)} unreachable for "
                f"{now - self._down_since:.0f} s (tracking.max_outage_s: {self.max_outage_s:g}); "
                f"{len(self._pending)} metrics of step(s) {steps} not logged; last error: {self._last_error}"
            )

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        # A tag naming a place (a checkpoint URI) never carries its credentials.
        tags = {k: redact_url_password(str(v)) for k, v in tags.items()}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in sorted(tags.items())])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_optional_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> bool:
        """:meth:`log_artifact` for what a run can do without (a preview image): skipped, with a warning,
        while the store is down or when the upload fails because it cannot be reached; whether it was
        logged."""
        if self.store_down:
            log.warning(f"{Path(path).name} not logged: the MLflow tracking store cannot be reached")
            return False
        try:
            with _quick_attempt():
                self.log_artifact(path, artifact_path)
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning(f"{Path(path).name} not logged: {_short(e)}")
            return False
        return True

    def log_artifacts(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, _metric_key(key))}


def _metric_key(k: str) -> str:
    # MLflow keys allow '/', '.', '-', '_', ' ' and alphanumerics; anything else becomes '_'.
    return "".join(c if c.isalnum() or c in "/._- " else "_" for c in k)


def config_changes(logged: dict[str, str], flat: dict[str, Any]) -> dict[str, list[str | None]]:
    """``{key: [logged value, new value]}`` for each flattened config key whose param value (as
    :meth:`Tracker.log_params` writes it) differs from the run's logged param; a key on one side only
    counts, with ``None`` on the other."""
    now = {k: _param_value(v) for k, v in flat.items()}
    return {k: [logged.get(k), now.get(k)] for k in sorted(logged.keys() | now.keys()) if logged.get(k) != now.get(k)}


def changes_tag(changes: dict[str, Any], limit: int) -> str:
    """``changes`` as a JSON object of at most ``limit`` characters: whole entries are left out from the
    end until it fits, and ``"...": N`` says how many were."""
    keys = sorted(changes)
    for keep in range(len(keys), -1, -1):
        shown: dict[str, Any] = {k: changes[k] for k in keys[:keep]}
        if keep < len(keys):
            shown["..."] = len(keys) - keep
        text = json.dumps(shown, sort_keys=True)
        if len(text) <= limit:
            return text
    return json.dumps({"...": len(keys)})


def redacted_config(cfg: Any) -> dict[str, Any]:
    """``cfg.model_dump(mode="json")`` with the credentials of every URI-valued field hidden
    (``tracking.uri``, ``checkpoint.storage_path``, any other): what may be stored in an artifact or file
    (the run itself keeps the real values in memory)."""
    return redact_value(cfg.model_dump(mode="json"))


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    s = redact_url_password(s)  # e.g. tracking.uri given as http://user:password@host
    return s if len(s) <= PARAM_MAX else s[: PARAM_MAX - 3] + "..."
