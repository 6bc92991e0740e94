"""dvc.lock pins the data stage's code: every file dependency's hash is that of the file in the tree,
so `dvc status` after a checkout says the data is current (a stale hash would rebuild it, or hide that
the code changed)."""
import hashlib

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
