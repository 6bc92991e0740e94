"""One Ray cluster and one tiny synthetic dataset for every pipeline test in the session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_shards(tmp_path_factory) -> Path:
    from datasets.sources.synthetic import SyntheticSource
    from datasets.writer import write_dataset

    out = tmp_path_factory.mktemp("data") / "smoke"
    write_dataset(SyntheticSource(num_train=16, num_val=8, height=64, width=80, seed=3), out, shard_size=4,
                  progress=False)
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from pipelines.train import start_local_ray

    # As the commands start it: the dashboard serves the state API that Train V2 uses to free the
    # resources of a stopped Tune trial.
    start_local_ray(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def tiny_config(tmp_path, smoke_shards):
    """A 2-worker, 2-epoch tiny MTI-Net on the smoke shards, tracked in a per-test sqlite store."""
    from pipelines.config import load_config

    def make(*overrides: str):
        return load_config(None, [
            f"data.shards={smoke_shards}", "data.tasks=[semseg, depth, normals, edge]", "data.loader_workers=0",
            "data.shuffle_buffer=4", "model.name=mtinet", "model.width=0.125", "train.epochs=2",
            "train.batch_size=2", "train.workers=2", "train.preview_every=1", "tracking.experiment=test",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint.storage_path={tmp_path}/ray",
            "checkpoint.keep=1", *overrides,
        ])

    return make
