"""dvc.lock pins the data stage's code: every file dependency's hash is that of the file in the tree,
so `dvc status` after a checkout says the data is current (a stale hash would rebuild it, or hide that
the code changed)."""

import hashlib
from pathlib import Path

import yaml

from tests import REPO_ROOT


def test_the_data_stage_lock_matches_its_dependencies():
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["data"]
    locked = {d["path"]: d for d in yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())["stages"]["data"]["deps"]}
    assert sorted(locked) == sorted(stage["deps"]), "dvc.lock lists other dependencies than dvc.yaml"
    stale = []
    for path, dep in locked.items():
        p = REPO_ROOT / path
        if p.is_file():  # a directory's hash is DVC's listing hash: `dvc status data` checks those
            data = p.read_bytes()
            if (hashlib.md5(data).hexdigest(), len(data)) != (dep["md5"], dep["size"]):
                stale.append(path)
    assert not stale, f"dvc.lock is stale for {stale}: run `dvc commit data` (or update their md5 and size)"


def test_the_train_and_evaluate_stages_depend_on_all_the_code_they_run():
    """A change to any module that `fusionpipe train`/`evaluate` imports makes `dvc repro` rerun them."""
    import subprocess
    import sys

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    # A fresh interpreter: the modules the two commands load, not what other tests imported.
    code = (
        "import sys, pipelines.cli.run, pipelines.train.driver, pipelines.train.worker, "
        "pipelines.analysis.evaluate\n"
        "print('\\n'.join(getattr(m, '__file__', '') or '' for m in list(sys.modules.values())))"
    )
    files = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    packages = {"datasets", "fusion", "pipelines", "jobs", "plugins"}
    ours = {
        rel
        for rel in (
            Path(f).resolve().relative_to(REPO_ROOT) for f in files if Path(f).resolve().is_relative_to(REPO_ROOT)
        )
        if rel.parts[0] in packages
    }
    assert any(p.parts[0] == "pipelines" for p in ours) and any(p.parts[0] == "fusion" for p in ours)
    for name in ("train", "evaluate"):
        deps = [Path(d) for d in stages[name]["deps"]]
        missing = sorted(str(p) for p in ours if not any(p == d or d in p.parents for d in deps))
        assert not missing, f"dvc.yaml stage {name} does not depend on {missing}"
