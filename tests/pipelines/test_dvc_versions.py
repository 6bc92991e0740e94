"""Dataset versions end to end, in temporary git repositories: `dvc push`, then a fresh clone at any
revision gets byte-identical shards back with `dvc pull`; a config's ``data.rev`` reads the data of a
revision through DVC, and its MLflow tags name that revision's data."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from datasets.manifest import manifest_digest
from pipelines.config import ConfigError, load_config
from pipelines.track import data_versions
from pipelines.track.data_versions import DataRevError, data_version, resolve_data_rev
from tests import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (REPO_ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout"),
]

SHARDS = "data/shards/synthetic"
TINY = {"num_train": 4, "num_val": 2, "height": 16, "width": 16, "seed": 0, "shard_size": 2}
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def run(*cmd: str, cwd: Path) -> str:
    res = subprocess.run(list(cmd), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{' '.join(cmd)} failed in {cwd}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def dvc(*args: str, cwd: Path) -> str:
    return run(sys.executable, "-m", "dvc", *args, cwd=cwd)


def git(*args: str, cwd: Path) -> str:
    return run(
        "git",
        "-c",
        "user.name=fusionpipe-test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "commit.gpgsign=false",
        *args,
        cwd=cwd,
    ).strip()


def file_shas(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def build_version(project: Path, tag: str, **synthetic: int) -> dict[str, str]:
    """Set the data stage's params, `dvc repro data`, commit and tag, `dvc push`; the built files' sha256."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthetic"].update(synthetic)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", "data", cwd=project)
    git("commit", "-q", "-am", f"data {tag}", cwd=project)
    git("tag", tag, cwd=project)
    dvc("push", cwd=project)
    return file_shas(project / SHARDS)


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    """A project repo with data v1 and v2 (the working tree at v2), both pushed to the default remote."""
    base = tmp_path_factory.mktemp("dvc-versions")
    project = base / "project"
    git("clone", "-q", str(REPO_ROOT), str(project), cwd=base)
    shas = {"v1": build_version(project, "v1", **TINY), "v2": build_version(project, "v2", seed=1, num_train=6)}
    assert shas["v1"]["manifest.json"] != shas["v2"]["manifest.json"]
    # The committed default remote is a folder next to the clone (.dvc/config: ../../fusionpipe-dvc-remote).
    remote = base / "fusionpipe-dvc-remote"
    assert sum(1 for p in remote.rglob("*") if p.is_file()) >= len(shas["v1"]) + len(shas["v2"])
    return SimpleNamespace(base=base, project=project, remote=remote, shas=shas)


@pytest.mark.parametrize("tag", ["v1", "v2"])
def test_fresh_clone_pull_restores_each_version(versioned, tag):
    clone = versioned.base / f"clone-{tag}"
    git("clone", "-q", str(versioned.project), str(clone), cwd=versioned.base)
    git("checkout", "-q", tag, cwd=clone)
    shards = clone / SHARDS
    assert not shards.exists() and not (clone / ".dvc" / "cache").exists()
    dvc("pull", "dvc.yaml:data", cwd=clone)  # the data stage: a data version has no trained outputs
    assert file_shas(shards) == versioned.shas[tag]  # byte-identical to what was built at that revision
    verify = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "data", "verify", SHARDS, "--json"],
        cwd=clone,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and '"ok": true' in verify.stdout, verify.stdout + verify.stderr
    mtimes = {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()}
    assert "up to date" in dvc("status", "data", cwd=clone)
    assert "didn't change" in dvc("repro", "data", cwd=clone)
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()} == mtimes  # nothing re-ran


def test_data_rev_reads_that_revisions_data(versioned):
    project = versioned.project
    commit = git("rev-parse", "v1^{commit}", cwd=project)
    cfg = load_config(None, ["data.rev=v1"])
    resolved = resolve_data_rev(cfg, project)
    target = project.resolve() / "data" / "revs" / commit[:12] / SHARDS
    assert Path(resolved.data.shards) == target and resolved.data.rev == "v1"
    assert cfg.data.shards == SHARDS  # the caller's config is left alone
    assert file_shas(target) == versioned.shas["v1"]
    assert manifest_digest(target) != manifest_digest(project / SHARDS)  # not the working tree's (v2) data

    tags = data_version(resolved.data.shards, resolved.data.rev, project)
    v1_md5 = yaml.safe_load(git("show", "v1:dvc.lock", cwd=project))["stages"]["data"]["outs"][0]["md5"]
    head_md5 = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["data"]["outs"][0]["md5"]
    assert v1_md5 != head_md5
    assert tags["data.git_rev"] == commit and tags["data.dvc_md5"] == v1_md5
    assert tags["data.manifest_digest"] == versioned.shas["v1"]["manifest.json"]
    assert data_version(project / SHARDS, repo=project)["data.dvc_md5"] == head_md5

    # The second call reuses the verified copy; resolving the resolved config changes nothing.
    before = (target / "manifest.json").stat()
    assert resolve_data_rev(cfg, project).data.shards == str(target)
    assert resolve_data_rev(resolved, project).data.shards == str(target)
    after = (target / "manifest.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # A damaged copy fails verification and is replaced by a good one.
    shard = target / "train" / "shard-000000.tar"
    shard.write_bytes(b"\0" + shard.read_bytes()[1:])
    resolve_data_rev(cfg, project)
    assert file_shas(target) == versioned.shas["v1"]


def test_data_rev_errors_name_the_rev_and_path(versioned, tmp_path):
    project = versioned.project
    with pytest.raises(DataRevError, match=r"data.rev 'no-such-tag': no such commit"):
        resolve_data_rev(load_config(None, ["data.rev=no-such-tag"]), project)
    with pytest.raises(DataRevError, match=r"'v1'.*datasets is not tracked by DVC"):
        resolve_data_rev(load_config(None, ["data.rev=v1", "data.shards=datasets"]), project)
    with pytest.raises(DataRevError, match=r"'v1'.*data/shards/other does not exist"):
        resolve_data_rev(load_config(None, ["data.rev=v1", "data.shards=data/shards/other"]), project)
    with pytest.raises(DataRevError, match="outside the repository"):
        resolve_data_rev(load_config(None, ["data.rev=v1", f"data.shards={tmp_path}"]), project)
    with pytest.raises(DataRevError, match="not a git checkout"):
        resolve_data_rev(load_config(None, ["data.rev=v1"]), tmp_path)

    # A fresh clone has no DVC cache: the data comes from the remote, or the error says how to get it there.
    clone = versioned.base / "clone-rev"
    git("clone", "-q", str(project), str(clone), cwd=versioned.base)
    (tmp_path / "empty-remote").mkdir()
    dvc("remote", "modify", "--local", "local", "url", str(tmp_path / "empty-remote"), cwd=clone)
    with pytest.raises(DataRevError, match=r"data.rev 'v1' \(commit [0-9a-f]{12}\).*dvc push") as e:
        resolve_data_rev(load_config(None, ["data.rev=v1"]), clone)
    assert SHARDS in str(e.value)
    assert not [p for p in (clone / "data" / "revs").rglob("*") if p.is_file()]  # nothing half-written
    (clone / ".dvc" / "config.local").unlink()
    resolved = resolve_data_rev(load_config(None, ["data.rev=v1"]), clone)
    assert file_shas(Path(resolved.data.shards)) == versioned.shas["v1"]


def test_rev_that_git_would_read_as_an_option_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.rev.*'--all' is not a git revision"):
        load_config(None, ["data.rev=--all"])
    assert load_config(None, []).data.rev is None


def test_revs_cache_is_ignored_by_git_and_dvc():
    assert (
        subprocess.run(
            ["git", "check-ignore", "-q", "data/revs/0123456789ab/data/shards/x/manifest.json"], cwd=REPO_ROOT
        ).returncode
        == 0
    )
    assert "data/revs/" in (REPO_ROOT / ".dvcignore").read_text().splitlines()


class _Stop(Exception):
    pass


def test_train_and_tune_resolve_data_rev_before_validating(versioned, monkeypatch, tmp_path):
    from pipelines.train import driver as train
    from pipelines.tune import driver as tune

    real = data_versions.resolve_data_rev
    for module in (train, tune):
        monkeypatch.setattr(module, "resolve_data_rev", lambda cfg: real(cfg, versioned.project))
    commit = git("rev-parse", "v1^{commit}", cwd=versioned.project)
    expected = str(versioned.project.resolve() / "data" / "revs" / commit[:12] / SHARDS)
    seen = {}

    def capture(what):
        def stop(arg, *rest):
            seen[what] = arg
            raise _Stop

        return stop

    monkeypatch.setattr(train, "validate_experiment", capture("train"))
    with pytest.raises(_Stop):
        train.run_training(load_config(None, ["data.rev=v1"]))
    assert (seen["train"].data.shards, seen["train"].data.rev) == (expected, "v1")

    monkeypatch.setattr(tune, "load_sweep", lambda path: SimpleNamespace())
    monkeypatch.setattr(tune, "validate_sweep", capture("tune"))  # gets the base config as a dict
    (tmp_path / "base.yaml").write_text("data: {rev: v1}\n")
    with pytest.raises(_Stop):
        tune.run_tune(tmp_path / "base.yaml", tmp_path / "sweep.yaml")
    assert (seen["tune"]["data"]["shards"], seen["tune"]["data"]["rev"]) == (expected, "v1")
