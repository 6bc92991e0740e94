"""jobs/cluster-gpu.yaml and jobs/rayjob.yaml parse, and agree with this project's versions."""

from __future__ import annotations

import re
import shlex

import ray
import tomllib
import yaml

from pipelines.cli.main import cli
from pipelines.config import load_config
from tests import REPO_ROOT

PY = "py311"  # the Python of the images; pyproject allows >= 3.10


def _load(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "jobs" / name).read_text())


def _dependency_names() -> list[str]:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in deps]


def test_cluster_launcher_config():
    c = _load("cluster-gpu.yaml")
    assert c["provider"]["type"] == "aws" and c["cluster_name"]
    assert c["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{PY}-gpu"
    types = c["available_node_types"]
    assert c["head_node_type"] in types and types[c["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != c["head_node_type"]]
    assert workers and all(w["node_config"]["InstanceType"].startswith(("g", "p")) for w in workers), "GPU instances"
    assert c["max_workers"] >= max(w["max_workers"] for w in workers)
    setup = " ".join(c["setup_commands"]).lower()
    missing = [d for d in _dependency_names() if d != "ray" and f'"{d}' not in setup]
    assert not missing, f"setup_commands lacks {missing} from pyproject.toml"
    for cmds in (c["head_start_ray_commands"], c["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in cmd and "ray start" in cmd for cmd in cmds)
    assert "--dashboard-host=127.0.0.1" in " ".join(c["head_start_ray_commands"])
    assert c["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert any("/mnt/shared" in cmd and "mount" in cmd for cmd in c["initialization_commands"])


def test_kuberay_rayjob_manifest():
    j = _load("rayjob.yaml")
    assert j["apiVersion"] == "ray.io/v1" and j["kind"] == "RayJob"
    spec = j["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].endswith(f":{ray.__version__}-{PY}-gpu")
    group = cluster["workerGroupSpecs"][0]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"] == head["image"] and worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://")

    # The entrypoint is a valid `fusionpipe train` whose config validates with its --set overrides,
    # with as many Ray Train workers as the worker group has GPUs.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "pipelines.cli", "train"]
    ctx = cli.make_context("fusionpipe", argv[3:], resilient_parsing=True)
    sub = cli.get_command(ctx, "train").make_context("train", argv[4:])
    cfg = load_config(REPO_ROOT / sub.params["config"], list(sub.params["overrides"]))
    assert cfg.train.use_gpu and cfg.train.workers == group["replicas"] * int(
        worker["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert cfg.checkpoint.storage_path.startswith("/mnt/shared") and cfg.data.shards.startswith("/mnt/shared")
    mounts = {m["mountPath"] for m in worker["volumeMounts"]} & {m["mountPath"] for m in head["volumeMounts"]}
    assert "/mnt/shared" in mounts
