"""The built-in synthetic RGB-D indoor source (``fusionpipe data build synthetic``).

Each sample is rendered on demand by :func:`render` from (seed, split, index) alone, so the
source needs no files and a dataset of any size is reproducible bit for bit. How scenes are
built, shaded and degraded is described in docs/synthetic.md and in the modules of
:mod:`datasets.synthetic`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datasets.sources.base import Source, SourceError, check_key
from datasets.synthetic.raycast import intrinsics
from datasets.synthetic.render import GENERATOR_VERSION, MAX_SIZE, MIN_SIZE, SPLIT_CODES, edge_thickness, render
from datasets.synthetic.scene import CLASSES

__all__ = ["SyntheticSource", "render", "intrinsics", "CLASSES", "GENERATOR_VERSION"]


def _int_option(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SourceError(f"synthetic: option {name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SourceError(f"synthetic: option {name} must be {bounds}, got {value}")
    return int(value)


class SyntheticSource(Source):
    """``num_train`` + ``num_val`` procedurally rendered rooms at ``height`` x ``width``."""

    name = "synthetic"
    classes = list(CLASSES)
    members = ["rgb", "depth", "semseg", "normals", "edge"]

    def __init__(self, num_train: int = 1000, num_val: int = 200, height: int = 240, width: int = 320, seed: int = 0):
        self.num_train = _int_option("num_train", num_train, 0)
        self.num_val = _int_option("num_val", num_val, 0)
        if self.num_train + self.num_val == 0:
            raise SourceError("synthetic: options num_train and num_val are both 0; nothing to build")
        self.height = _int_option("height", height, MIN_SIZE, MAX_SIZE)
        self.width = _int_option("width", width, MIN_SIZE, MAX_SIZE)
        self.seed = _int_option("seed", seed, 0, 2**63 - 1)

    def params(self) -> dict[str, Any]:
        return {
            "num_train": self.num_train,
            "num_val": self.num_val,
            "height": self.height,
            "width": self.width,
            "seed": self.seed,
            "generator_version": GENERATOR_VERSION,
            "edge_thickness": edge_thickness(self.width),
        }

    def splits(self) -> list[str]:
        return ["train", "val"]

    def _count(self, split: str) -> int:
        if split not in SPLIT_CODES:
            raise SourceError(f"synthetic: unknown split {split!r}; splits are {self.splits()}")
        return self.num_train if split == "train" else self.num_val

    def keys(self, split: str) -> list[str]:
        return [f"{i:06d}" for i in range(self._count(split))]

    def load(self, split: str, key: str) -> dict[str, Any]:
        n = self._count(split)
        check_key(key, f"synthetic/{split}")
        if not key.isdigit() or key != f"{int(key):06d}" or int(key) >= n:
            raise SourceError(f"synthetic/{split}: no sample with key {key!r} (keys are 000000..{n - 1:06d})")
        return render(self.seed, split, int(key), self.height, self.width)
