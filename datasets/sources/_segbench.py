"""What the semantic-segmentation benchmark converters share (cityscapes, ade20k, pascal-context).

Each of these datasets is a set of (image, label image) pairs per split, with a fixed table that
turns a raw label value into a class id (or 255 = ignore). :class:`PairSource` holds the pairs and
applies the table; a converter only finds the pairs in its official layout and names the table.
A raw value the table does not know is an error naming the label file, never a silent ignore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datasets.sources import _common as c
from datasets.sources.base import Source, SourceError

#: Marks a raw label value that is not in the dataset's table (an error when it occurs).
UNKNOWN = -1


def lookup_table(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """``{raw value: class id or 255}`` -> an array indexed by raw value, :data:`UNKNOWN` elsewhere."""
    lut = np.full(size, UNKNOWN, dtype=np.int64)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


def reduce_zero_label_table(num_classes: int) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: raw 0 (background / other) -> 255, raw k -> k - 1 for
    k in 1..num_classes, raw 255 stays 255 (ignore); any other raw value is unknown."""
    return lookup_table({0: 255, 255: 255} | {k: k - 1 for k in range(1, num_classes + 1)})


def map_labels(raw: np.ndarray, lut: np.ndarray, path: Path, table: str) -> np.ndarray:
    """Raw label values -> uint8 class ids through ``lut``; an unknown value is an error naming ``path``."""
    if raw.size and (raw.min() < 0 or raw.max() >= lut.size):
        raise SourceError(f"{path}: label values {int(raw.min())}..{int(raw.max())} are outside {table}")
    out = lut[raw]
    bad = out == UNKNOWN
    if bad.any():
        vals = sorted(int(v) for v in np.unique(raw[bad])[:5])
        raise SourceError(f"{path}: label values {vals} are not in {table}")
    return out.astype(np.uint8)


class PairSource(Source):
    """Samples from ``{split: {key: (stem, image path, label path)}}`` and a label table.

    Subclasses set ``name``, ``classes``, ``_lut`` and ``_table`` (the table's name for errors), fill
    ``_pairs`` and ``_args`` in ``__init__``, and may add members in :meth:`extra`.
    """

    members = ["rgb", "semseg"]
    _lut: np.ndarray
    _table: str = ""

    def __init__(self) -> None:
        self._pairs: dict[str, dict[str, tuple[str, Path, Path]]] = {}
        self._args: dict[str, Any] = {}

    def _set_split(self, split: str, stems_paths: list[tuple[str, Path, Path]], where: str) -> None:
        keys = c.keys_for([s for s, _, _ in stems_paths], where)
        self._pairs[split] = dict(zip(keys, stems_paths, strict=True))

    def params(self) -> dict[str, Any]:
        return dict(self._args)

    def splits(self) -> list[str]:
        return list(self._pairs)

    def keys(self, split: str) -> list[str]:
        if split not in self._pairs:
            raise SourceError(f"{self.name}: unknown split {split!r}; have {list(self._pairs)}")
        return list(self._pairs[split])

    def load(self, split: str, key: str) -> dict[str, Any]:
        stem, image_path, label_path = self._pairs[split][key]
        rgb = c.read_rgb(image_path)
        hw = rgb.shape[:2]
        raw = c.check_hw(c.read_label_png(label_path), hw, label_path)
        sample: dict[str, Any] = {"rgb": rgb, "semseg": map_labels(raw, self._lut, label_path, self._table)}
        meta = {"id": key, "stem": stem, "source": self.name, "split": split}
        sample.update(self.extra(split, stem, hw, meta))
        sample["meta"] = meta
        return sample

    def extra(self, split: str, stem: str, hw: tuple[int, int], meta: dict[str, Any]) -> dict[str, Any]:
        """More members of a sample (and entries of its ``meta``); none by default."""
        return {}
