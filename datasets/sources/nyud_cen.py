"""``nyud-cen``: the NYUDv2 RGB-D segmentation layout of CEN (Wang et al., NeurIPS 2020).

CEN (yikaiw/CEN, ``semantic_segmentation``) inherits Light-Weight RefineNet's data reader: a list
file per split whose lines are tab-separated paths relative to the data root, in the order
``rgb  mask  depth`` (``input_mask_idxs = [0, 2, 1]`` in its ``main.py``)::

    root/rgb/<stem>.png      RGB
    root/masks/<stem>.png    class ids 0..39, 255 = ignore
    root/depth/<stem>.png    16-bit depth, value × depth_unit = metres (CEN divides by 5000)
    train.txt / val.txt      "rgb/<stem>.png<TAB>masks/<stem>.png<TAB>depth/<stem>.png"

Lines may also be split on spaces, carry only ``rgb mask`` (depth is then
``root/depth/<rgb file name>``), or be a bare stem (all three paths follow the layout above).
The list files default to ``root/train.txt`` and ``root/val.txt``; CEN keeps them in its repo
under ``data/nyudv2/``, so both are options.

Conversions: mask values >= 40 become 255, as CEN's evaluation ignores every ``gt >= num_classes``;
depth is ``png value × depth_unit`` metres (0 = missing). Edges are not part of CEN's data: with
``edges=True`` they are derived from the mask with :func:`datasets.labels.edges_from_labels`
(semantic boundaries only, 2 px band, no edge next to ignore pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.labels import edges_from_labels
from datasets.sources import _common as c
from datasets.sources.base import Source, SourceError


class NyudCenSource(Source):
    name = "nyud-cen"
    classes = list(c.NYUD40_CLASSES)

    def __init__(
        self,
        root: str,
        train_list: str | None = None,
        val_list: str | None = None,
        depth_unit: float = 0.0002,
        edges: bool = True,
        intrinsics: Sequence[float] | str | None = None,
    ) -> None:
        self.root = c.require_dir(Path(root), "nyud-cen option root")
        if not depth_unit > 0:
            raise SourceError(f"nyud-cen option depth_unit must be > 0 metres, got {depth_unit!r}")
        self.depth_unit = float(depth_unit)
        self.edges = bool(edges)
        self.intrinsics = c.parse_intrinsics(intrinsics)
        self.members = ["rgb", "depth", "semseg"] + (["edge"] if self.edges else [])
        self._args = {"root": str(root), "train_list": train_list, "val_list": val_list}
        self._items: dict[str, dict[str, tuple[str, Path, Path, Path]]] = {}
        for split, given in (("train", train_list), ("val", val_list)):
            path = Path(given) if given is not None else self.root / f"{split}.txt"
            if given is None and not path.is_file():
                continue
            self._items[split] = self._index(path)
        if not self._items:
            raise SourceError(
                f"nyud-cen: no split list found; expected {self.root / 'train.txt'} and/or {self.root / 'val.txt'}"
            )
        c.check_disjoint(
            {split: [str(e[1].resolve()) for e in items.values()] for split, items in self._items.items()},
            "nyud-cen: the split lists",
            what="image",
        )

    def _paths(self, line: str, where: str) -> tuple[Path, Path, Path]:
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) == 1:
            stem = fields[0]
            return (
                self.root / "rgb" / f"{stem}.png",
                self.root / "masks" / f"{stem}.png",
                self.root / "depth" / f"{stem}.png",
            )
        if len(fields) == 2:
            rgb = self.root / fields[0]
            return rgb, self.root / fields[1], self.root / "depth" / rgb.name
        if len(fields) == 3:
            return self.root / fields[0], self.root / fields[1], self.root / fields[2]
        raise SourceError(f"{where}: expected 'rgb<TAB>mask<TAB>depth', 'rgb mask' or a stem, got {len(fields)} fields")

    def _index(self, path: Path) -> dict[str, tuple[str, Path, Path, Path]]:
        entries = []
        for i, line in enumerate(c.read_lines(path, "nyud-cen split list"), start=1):
            where = f"{path}:{i}"
            rgb, mask, depth = self._paths(line, where)
            for f in (rgb, mask, depth):
                if not f.is_file():
                    raise SourceError(f"{where}: listed file {f} does not exist")
            entries.append((rgb.stem, rgb, mask, depth))
        keys = c.keys_for([e[0] for e in entries], str(path))
        return dict(zip(keys, entries, strict=True))

    def params(self) -> dict[str, Any]:
        return self._args | {"depth_unit": self.depth_unit, "edges": self.edges, "intrinsics": self.intrinsics}

    def splits(self) -> list[str]:
        return list(self._items)

    def keys(self, split: str) -> list[str]:
        if split not in self._items:
            raise SourceError(f"nyud-cen: unknown split {split!r}; have {list(self._items)}")
        return list(self._items[split])

    def load(self, split: str, key: str) -> dict[str, Any]:
        stem, rgb_path, mask_path, depth_path = self._items[split][key]
        rgb = c.read_rgb(rgb_path)
        hw = rgb.shape[:2]
        mask = c.check_hw(c.read_label_png(mask_path), hw, mask_path)
        semseg = np.where(mask >= len(self.classes), 255, mask).astype(np.uint8)
        sample: dict[str, Any] = {
            "rgb": rgb,
            "depth": c.check_hw(c.read_depth_png16(depth_path, self.depth_unit), hw, depth_path),
            "semseg": semseg,
        }
        if self.edges:
            sample["edge"] = edges_from_labels(semseg)
        sample["meta"] = c.base_meta(key, stem, self.name, split, c.intrinsics_for(hw, self.intrinsics))
        return sample
