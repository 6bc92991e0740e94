"""Shared fixtures: a tiny deterministic in-memory source and datasets written from it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from datasets.sources.base import Source  # noqa: E402


class ToySource(Source):
    """Random but deterministic samples with every member; sample i of a split is reproducible."""

    name = "toy"
    classes = ["a", "b", "c", "d"]
    members = ["rgb", "depth", "semseg", "normals", "edge"]

    def __init__(self, num_train: int = 10, num_val: int = 6, height: int = 12, width: int = 16) -> None:
        self.counts = {"train": num_train, "val": num_val}
        self.h, self.w = height, width

    def params(self) -> dict[str, Any]:
        return {"counts": self.counts, "height": self.h, "width": self.w}

    def splits(self) -> list[str]:
        return ["train", "val"]

    def keys(self, split: str) -> list[str]:
        return [f"{split}{i:04d}" for i in range(self.counts[split])]

    def load(self, split: str, key: str) -> dict[str, Any]:
        i = int(key[len(split) :])
        rng = np.random.default_rng([1 if split == "train" else 2, i])
        h, w = self.h, self.w
        n = rng.normal(size=(h, w, 3)).astype(np.float32)
        n[..., 2] = -np.abs(n[..., 2]) - 0.5
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        depth = rng.uniform(0.5, 9.0, size=(h, w)).astype(np.float32)
        depth[0, :3] = 0.0
        semseg = rng.integers(0, len(self.classes), size=(h, w)).astype(np.uint8)
        semseg[-1, -1] = 255
        return {
            "rgb": rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8),
            "depth": depth,
            "semseg": semseg,
            "normals": n,
            "edge": (rng.random((h, w)) > 0.8).astype(np.uint8),
            "meta": {
                "id": f"{split}/{key}",
                "source": "toy",
                "split": split,
                "intrinsics": [10.0, 10.0, w / 2, h / 2],
                "depth_scale": 0.001,
            },
        }


@pytest.fixture
def toy_source() -> ToySource:
    return ToySource()


@pytest.fixture
def toy_dataset(tmp_path: Path, toy_source: ToySource) -> Path:
    from datasets.writer import write_dataset

    out = tmp_path / "toy"
    write_dataset(toy_source, out, shard_size=3, progress=False)
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors: threading only adds contention on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
