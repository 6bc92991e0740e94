"""``data.rev``: train on a dataset as it was at a git revision of this repository, resolved through DVC.

A config naming ``data.rev`` (a tag, branch or commit) reads ``data.shards`` as that commit's dvc.lock
pins it, not as the working tree holds it now. The shards come through ``dvc.api.DVCFileSystem`` (the
local DVC cache first, else the default remote) into ``data/revs/<commit[:12]>/<shards path>``: a cache
keyed by commit, since a commit's data never changes. A copy is checked against its manifest in a
temporary folder before it is renamed into place, so a half-written or corrupt copy is never used;
a cached copy is checked again before each reuse.

The returned config keeps ``data.rev`` and points ``data.shards`` into the cache, so resolving it a
second time (a Tune trial re-entering ``run_training``) finds the same folder and does nothing else.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from datasets.manifest import ManifestError, manifest_digest, verify
from pipelines.config import ConfigError, ExperimentConfig, _abs, project_root

log = logging.getLogger(__name__)
REVS_DIR = Path("data") / "revs"
_COMMIT_DIR = re.compile(r"[0-9a-f]{12}")


class DataRevError(ConfigError):
    """``data.rev`` cannot be resolved; the message names the revision, the path and what to do."""


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as e:
        raise DataRevError("data.rev needs git, which is not installed (or not on PATH)") from e


def resolve_commit(rev: str, repo: Path | None = None) -> str:
    """The full commit hash that ``rev`` names in ``repo``."""
    repo = repo or project_root()
    if rev.startswith("-"):
        raise DataRevError(f"data.rev {rev!r}: not a git revision")
    res = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if res.returncode == 0 and res.stdout.strip():
        return res.stdout.strip()
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise DataRevError(f"data.rev {rev!r}: {repo} is not a git checkout; data.rev needs the repository's history")
    raise DataRevError(
        f"data.rev {rev!r}: no such commit, tag or branch in {repo} "
        "(`git fetch --tags` if it was made elsewhere; `git log --oneline` lists commits)"
    )


def tracked_path(shards: str | os.PathLike[str], repo: Path | None = None) -> str:
    """``data.shards`` as a repo-relative POSIX path, the name DVC tracks it under.

    A path already inside ``data/revs/<commit>/`` maps back to the path it is a copy of, which makes
    resolution idempotent and lets a sweep vary ``data.rev`` over an already resolved base config.
    """
    repo = repo or project_root()
    root = repo.resolve()
    path = Path(_abs(str(shards), root)).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise DataRevError(
            f"data.shards {str(shards)!r} is outside the repository {root}; data.rev reads a path "
            "that DVC tracks in this repository"
        ) from None
    parts = rel.parts
    n = len(REVS_DIR.parts)
    if parts[:n] == REVS_DIR.parts and len(parts) > n + 1 and _COMMIT_DIR.fullmatch(parts[n]):
        parts = parts[n + 1 :]
    if not parts:
        raise DataRevError(f"data.shards {str(shards)!r} names the repository root, not a dataset directory")
    return Path(*parts).as_posix()


def rev_dir(commit: str, repo: Path | None = None) -> Path:
    """Where the data of ``commit`` is materialized (ignored by git and DVC)."""
    repo = repo or project_root()
    return repo.resolve() / REVS_DIR / commit[:12]


def dvc_hash_at(rel: str, commit: str, repo: Path | None = None) -> str | None:
    """The md5 that dvc.lock *at ``commit``* records for ``rel`` (None if that commit has no lock or out)."""
    repo = repo or project_root()
    res = _git(repo, "show", f"{commit}:dvc.lock")
    return lock_out_md5(res.stdout, rel) if res.returncode == 0 else None


def _verified(path: Path) -> bool:
    try:
        return verify(path).ok
    except ManifestError:
        return False


def _missing_data(rev: str, commit: str, rel: str, err: BaseException) -> DataRevError:
    return DataRevError(
        f"data.rev {rev!r} (commit {commit[:12]}): the data of {rel} is in neither this repository's DVC cache "
        f"nor its DVC remote ({type(err).__name__}: {err}). Where it was built, run `git checkout {commit[:12]} && "
        "dvc repro data && dvc push`; here, check `dvc remote list` and `dvc fetch -A` (every commit's data)"
    )


def _install(src: Path, target: Path) -> None:
    """Rename ``src`` to ``target``, replacing a copy that failed verification; a racing writer's good copy wins."""
    if target.exists() and not _verified(target):
        aside = target.with_name(f".{target.name}.stale-{os.getpid()}")
        os.replace(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(src, target)
    except OSError:
        if not _verified(target):
            raise


def materialize(rev: str, commit: str, rel: str, repo: Path | None = None) -> Path:
    """Copy ``rel`` as it is at ``commit`` into the revision cache, verify it, and return its path."""
    repo = repo or project_root()
    from dvc.api import DVCFileSystem

    target = rev_dir(commit, repo) / rel
    where = f"data.rev {rev!r} (commit {commit[:12]}): {rel}"
    fs = DVCFileSystem(str(repo.resolve()), rev=commit)
    try:
        try:
            info = fs.info(rel)
        except FileNotFoundError:
            raise DataRevError(f"{where} does not exist at that revision") from None
        except Exception as e:  # a sub-path of an output whose directory listing is not available
            raise _missing_data(rev, commit, rel, e) from e
        if not info.get("dvc_info"):
            raise DataRevError(
                f"{where} is not tracked by DVC at that revision (no dvc.lock output or .dvc file "
                "names it), so its bytes are not pinned"
            )
        if info.get("type") != "directory":
            raise DataRevError(f"{where} is a file; data.shards must name a dataset directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            try:
                fs.get(rel, str(tmp / "shards"), recursive=True)
            except Exception as e:
                raise _missing_data(rev, commit, rel, e) from e
            try:
                result = verify(tmp / "shards")
            except ManifestError as e:
                raise DataRevError(f"{where}: {e}") from e
            if not result.ok:
                raise DataRevError(f"{where}: the copy does not match its manifest: {'; '.join(result.problems)}")
            _install(tmp / "shards", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        fs.close()
    return target


def resolve_data_rev(cfg: ExperimentConfig, repo: Path | None = None) -> ExperimentConfig:
    """A copy of ``cfg`` whose ``data.shards`` holds the data as of ``data.rev`` (``cfg`` itself without one)."""
    repo = repo or project_root()
    rev = cfg.data.rev
    if rev is None:
        return cfg
    commit = resolve_commit(rev, repo)
    rel = tracked_path(cfg.data.shards, repo)
    target = rev_dir(commit, repo) / rel
    if _verified(target):
        log.info("data.rev %s: reusing %s (commit %s)", rev, target, commit[:12])
    else:
        log.info("data.rev %s: reading %s at commit %s through DVC into %s", rev, rel, commit[:12], target)
        materialize(rev, commit, rel, repo)
    out = cfg.model_copy(deep=True)
    out.data.shards = str(target)
    return out


def dvc_hash(shards: str | os.PathLike[str], repo: Path | None = None) -> str | None:
    """The md5 that dvc.lock records for the output directory ``shards``, if DVC tracks it."""
    repo = repo or project_root()
    lock = repo / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        rel = Path(shards).resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return None
    return lock_out_md5(lock.read_text(), rel)


def lock_out_md5(lock_text: str, rel: str) -> str | None:
    """The md5 a dvc.lock (its text) records for the output at repo-relative path ``rel``."""
    data = yaml.safe_load(lock_text) or {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs", []) or []:
            if out.get("path") == rel:
                return out.get("md5")
    return None


def data_version(shards: str | os.PathLike[str], rev: str | None = None, repo: Path | None = None) -> dict[str, str]:
    """Tags that name the data a run saw. With ``rev`` (``data.rev``, shards already resolved by
    pipelines.track.data_versions) the DVC hash is the one in dvc.lock at that commit, not the working tree's,
    and ``data.git_rev`` records the commit."""
    repo = repo or project_root()
    tags = {"data.path": str(shards), "data.manifest_digest": manifest_digest(shards)}
    if rev is None:
        h = dvc_hash(shards, repo)
    else:
        commit = resolve_commit(rev, repo)
        tags["data.git_rev"] = commit
        h = dvc_hash_at(tracked_path(shards, repo), commit, repo)
    if h:
        tags["data.dvc_md5"] = h
    return tags


#: What `dvc exp run` tells the commands of a stage (dvc.env, DVC 3): the experiment's name and the
#: commit it branches from. Tagged on the MLflow run so `dvc exp show` and the MLflow UI match row to row.
DVC_EXPERIMENT_ENV = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}


def dvc_experiment_tags() -> dict[str, str]:
    """``{"dvc.exp_name": ..., "dvc.exp_baseline_rev": ...}`` when running inside ``dvc exp run``, else ``{}``."""
    return {tag: os.environ[env] for env, tag in DVC_EXPERIMENT_ENV.items() if os.environ.get(env)}
