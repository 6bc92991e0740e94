"""One Ray cluster and one tiny synthetic dataset for every pipeline test in the session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_shards(tmp_path_factory) -> Path:
    """The smoke dataset of configs/smoke.yaml, smaller than `make smoke-data` builds (16/8 samples at
    64x80 in 4-sample shards: two train shards and one val shard per rank)."""
    from datasets.sources.synthetic import SyntheticSource
    from datasets.writer import write_dataset

    out = tmp_path_factory.mktemp("data") / "smoke"
    write_dataset(
        SyntheticSource(num_train=16, num_val=8, height=64, width=80, seed=3), out, shard_size=4, progress=False
    )
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from pipelines.train.driver import start_local_ray

    # As the commands start it: the dashboard serves the state API that Train V2 uses to free the
    # resources of a stopped Tune trial. While it is up, nothing in the session may fork this process
    # (multiprocessing's fork start method, mp.Manager()): a forked copy breaks the driver's connection
    # to Ray, and the next training waits forever. Use the spawn start method.
    start_local_ray(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def tiny_config(tmp_path, smoke_shards):
    """configs/smoke.yaml (2 workers, 2 epochs, tiny MTI-Net, all four tasks) on the session's smoke
    shards, tracked in a per-test sqlite store; ``make(*overrides)`` adds ``--set`` overrides."""
    from pipelines.config import load_config
    from tests import REPO_ROOT

    def make(*overrides: str):
        return load_config(
            REPO_ROOT / "configs" / "smoke.yaml",
            [
                f"data.shards={smoke_shards}",
                "tracking.experiment=test",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                f"checkpoint.storage_path={tmp_path}/ray",
                *overrides,
            ],
        )

    return make
