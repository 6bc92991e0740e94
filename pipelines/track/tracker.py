"""MLflow tracking: one writer (rank 0 or the driver), batched requests, reproducibility tags.

Conventions (docs/training-internals.md, "The MLflow record"): the default store is
``sqlite:///<project root>/mlflow.db`` (absolute, so every local worker writes the same file); params are
the flattened config; tags carry the git commit and dirty flag, the data version (manifest digest,
DVC hash and, for ``data.rev``, the data's git commit), the hash of each config plugin's code and the
Ray job id; metrics are logged per
epoch with ``step = epoch``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from pipelines.compat import ray_job_submission_id
from pipelines.config import ConfigError, project_root
from pipelines.track.redact import redact_url_password, redact_value

PARAM_MAX = 6000  # MLflow's limit on a param value
BATCH_METRICS = 1000  # MLflow's limit per log_batch request
GIT_COMMIT_ENV, GIT_DIRTY_ENV = "FUSIONPIPE_GIT_COMMIT", "FUSIONPIPE_GIT_DIRTY"


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


class Tracker:
    """A thin, batching wrapper over ``MlflowClient`` bound to one run."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.run_id = uri, run_id

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
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), ts, step) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=items[i : i + BATCH_METRICS])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        # A tag naming a place (a checkpoint URI) never carries its credentials.
        tags = {k: redact_url_password(str(v)) for k, v in tags.items()}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in sorted(tags.items())])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

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
