"""What every dataset source provides to the shard writer.

A source is a deterministic, random-access view of a dataset: ``keys(split)`` lists sample keys
in a fixed order and ``load(split, key)`` returns one sample dict in the in-memory format of
:mod:`datasets.codec` (``meta`` included). The writer only ever calls these, so a source never
deals with tars, manifests or atomic renames.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

from datasets.errors import SourceError

# SourceError is defined in datasets.errors (the synthetic generator raises it too) and offered here,
# next to the Source interface every source implements.
__all__ = ["Source", "SourceError", "check_key"]

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class Source(ABC):
    #: registry name, e.g. "synthetic", "nyud-mt"
    name: str = ""
    #: class names; index = class id in semseg.png
    classes: list[str] = []
    #: members every sample carries, e.g. ["rgb", "depth", "semseg", "normals", "edge"]
    members: list[str] = []
    ignore_index: int = 255

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of how this dataset is built (goes into the manifest)."""

    @abstractmethod
    def splits(self) -> list[str]:
        """Split names in writing order, e.g. ["train", "val"]."""

    @abstractmethod
    def keys(self, split: str) -> list[str]:
        """Sample keys of a split in a fixed order. Keys match ``[A-Za-z0-9_-]+`` (no dots)."""

    @abstractmethod
    def load(self, split: str, key: str) -> dict[str, Any]:
        """One sample in the :mod:`datasets.codec` in-memory format, including ``meta``."""


def check_key(key: str, where: str) -> str:
    """WebDataset splits member names at the first dot, so keys must not contain one."""
    if not _KEY_RE.match(key):
        raise SourceError(f"{where}: sample key {key!r} must match [A-Za-z0-9_-]+ (no dots or slashes)")
    return key
