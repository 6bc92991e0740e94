"""``sunrgbd``: SUN RGB-D 37-class RGB-D semantic segmentation in CEN's layout (Wang et al., NeurIPS 2020).

CEN (yikaiw/CEN, ``semantic_segmentation``) reads SUN RGB-D the way it reads NYUDv2: a list file per
split whose lines are tab-separated paths relative to the data root, ``rgb  mask  depth``
(``input_mask_idxs = [0, 2, 1]`` in its ``main.py``)::

    root/rgb/<NNNNNN>.jpg|png     RGB
    root/masks/<NNNNNN>.png       class ids 0..36, 255 = ignore (``--label-base 1``: 0 = void, 1..37)
    root/depth/<NNNNNN>.png       16-bit depth, as the SUN RGB-D toolbox stores it (``--depth-encoding``)
    train.txt / test.txt          "rgb/<N>.jpg<TAB>masks/<N>.png<TAB>depth/<N>.png"; 5285 / 5050 lines

Lines may also be split on spaces, carry only ``rgb mask`` (depth is then ``root/depth/<rgb stem>.png``)
or be a bare stem (``rgb/<stem>.jpg`` or ``.png``, ``masks/<stem>.png``, ``depth/<stem>.png``).
Masks numbered over the whole set (test 1..5050, then train 5051..10335) are found as CEN's
``utils/datasets.py`` finds them: a listed mask ``<N>.png`` that does not exist is read from
``<N + 5050>.png``.

Conversions: mask ids as given (``--label-base 1`` shifts 1..37 to 0..36 and 0 to 255); an id outside the
37 classes (other than the ignore value) is an error naming the file: CEN's evaluation ignores them
silently, which hides a mask in another label set. Depth ``--depth-encoding sunrgbd`` (default) undoes the
toolbox's storage (``read3dPoints.m``: ``bitor(bitshift(d, -3), bitshift(d, 16 - 3))``, millimetres),
``linear`` is ``value × --depth-unit`` metres; 0 = missing either way. A map whose size differs from its
image is an error (SUN RGB-D mixes sensors, so image sizes differ between samples but never within one).
SUN RGB-D's intrinsics differ by sensor and are not in this layout: ``meta.json`` carries them only when
``--intrinsics`` is given.

The raw SUN RGB-D release (``SUNRGBD/<sensor>/.../image/``, ``depth_bfx/``, labels in the MATLAB v7.3
``SUNRGBD2Dseg.mat``, splits in ``allsplit.mat`` with absolute paths of the authors' machine) is not read
here; a root in that layout is recognised and refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.codec import DEPTH_SCALE
from datasets.labels import edges_from_labels
from datasets.sources import _common as c
from datasets.sources.base import Source, SourceError

# The 37 classes of SUN RGB-D's segmentation benchmark (the toolbox's seg37list, id = index): the first
# 37 NYUDv2-40 classes of Gupta et al.
SUNRGBD37_CLASSES = [
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor_mat",
    "clothes",
    "ceiling",
    "books",
    "fridge",
    "tv",
    "paper",
    "towel",
    "shower_curtain",
    "box",
    "whiteboard",
    "person",
    "night_stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
]
# semantic_segmentation/utils/datasets.py of CEN: a training mask not found under its listed number is
# read from the number + 5050 (the masks are numbered over test then train).
CEN_MASK_OFFSET = 5050
DEPTH_ENCODINGS = ("sunrgbd", "linear")
_SPLITS = (("train", "train.txt"), ("test", "test.txt"))
# Entries of the raw SUN RGB-D release's top folder (one per sensor).
_RAW_SENSORS = ("kv1", "kv2", "realsense", "xtion")


def sunrgbd_depth(raw: np.ndarray) -> np.ndarray:
    """The SUN RGB-D toolbox's depth PNG -> metres: the 16-bit value rotated right by 3 bits is millimetres
    (``read3dPoints.m``: ``bitor(bitshift(depthVis, -3), bitshift(depthVis, 16 - 3))``, then ``/ 1000``)."""
    v = raw.astype(np.uint16)
    mm = (v >> np.uint16(3)) | (v << np.uint16(13))
    return (mm.astype(np.float64) / 1000.0).astype(np.float32)


class SunrgbdSource(Source):
    name = "sunrgbd"
    classes = list(SUNRGBD37_CLASSES)

    def __init__(
        self,
        root: str,
        train_list: str | None = None,
        test_list: str | None = None,
        label_base: int = 0,
        depth_encoding: str = "sunrgbd",
        depth_unit: float = 0.001,
        edges: bool = False,
        intrinsics: Sequence[float] | str | None = None,
    ) -> None:
        self.root = c.require_dir(Path(root), "sunrgbd option root")
        if label_base not in (0, 1):
            raise SourceError(
                f"sunrgbd option label_base must be 0 (ids 0..36) or 1 (0 = void, 1..37), got {label_base!r}"
            )
        if depth_encoding not in DEPTH_ENCODINGS:
            raise SourceError(
                f"sunrgbd option depth_encoding must be one of {', '.join(DEPTH_ENCODINGS)}, got {depth_encoding!r}"
            )
        if not depth_unit > 0:
            raise SourceError(f"sunrgbd option depth_unit must be > 0 metres, got {depth_unit!r}")
        self.label_base = label_base
        self.depth_encoding = depth_encoding
        self.depth_unit = float(depth_unit)
        self.edges = bool(edges)
        self.intrinsics = c.parse_intrinsics(intrinsics)
        self.members = ["rgb", "depth", "semseg"] + (["edge"] if self.edges else [])
        self._args = {"root": str(root), "train_list": train_list, "test_list": test_list}
        self._items: dict[str, dict[str, tuple[str, Path, Path, Path]]] = {}
        for (split, default), given in zip(_SPLITS, (train_list, test_list), strict=True):
            path = Path(given) if given is not None else self.root / default
            if given is None and not path.is_file():
                continue
            self._items[split] = self._index(path)
        if not self._items:
            raw = [s for s in _RAW_SENSORS if (self.root / s).is_dir() or (self.root / "SUNRGBD" / s).is_dir()]
            if raw:
                raise SourceError(
                    f"sunrgbd: {self.root} is the raw SUN RGB-D release (sensor folder {raw[0]!r}), which this converter "
                    "does not read; it reads CEN's layout (rgb/, depth/, masks/ with train.txt and test.txt; "
                    "docs/converters.md)"
                )
            raise SourceError(
                f"sunrgbd: {self.root} is not in CEN's layout: no split list found; expected "
                f"{self.root / 'train.txt'} and/or {self.root / 'test.txt'} (or --train-list / --test-list)"
            )
        c.check_disjoint(
            {split: [str(e[1].resolve()) for e in items.values()] for split, items in self._items.items()},
            "sunrgbd: the split lists",
            what="image",
        )

    def _paths(self, line: str, where: str) -> tuple[Path, Path, Path]:
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) == 1:
            stem = fields[0]
            rgb = self.root / "rgb" / f"{stem}.jpg"
            if not rgb.is_file():
                rgb = self.root / "rgb" / f"{stem}.png"
            return rgb, self.root / "masks" / f"{stem}.png", self.root / "depth" / f"{stem}.png"
        if len(fields) == 2:
            rgb = self.root / fields[0]
            return rgb, self.root / fields[1], self.root / "depth" / f"{rgb.stem}.png"
        if len(fields) == 3:
            return self.root / fields[0], self.root / fields[1], self.root / fields[2]
        raise SourceError(f"{where}: expected 'rgb<TAB>mask<TAB>depth', 'rgb mask' or a stem, got {len(fields)} fields")

    @staticmethod
    def _mask_path(mask: Path) -> Path:
        """The listed mask, or CEN's fallback: the same name numbered ``+ 5050``."""
        if mask.is_file() or not mask.stem.isdigit():
            return mask
        shifted = mask.with_name(f"{int(mask.stem) + CEN_MASK_OFFSET:0{len(mask.stem)}d}{mask.suffix}")
        return shifted if shifted.is_file() else mask

    def _index(self, path: Path) -> dict[str, tuple[str, Path, Path, Path]]:
        entries = []
        for i, line in enumerate(c.read_lines(path, "sunrgbd split list"), start=1):
            where = f"{path}:{i}"
            rgb, mask, depth = self._paths(line, where)
            mask = self._mask_path(mask)
            for f in (rgb, mask, depth):
                if not f.is_file():
                    raise SourceError(f"{where}: listed file {f} does not exist")
            entries.append((rgb.stem, rgb, mask, depth))
        keys = c.keys_for([e[0] for e in entries], str(path))
        return dict(zip(keys, entries, strict=True))

    def params(self) -> dict[str, Any]:
        return self._args | {
            "label_base": self.label_base,
            "depth_encoding": self.depth_encoding,
            "depth_unit": self.depth_unit if self.depth_encoding == "linear" else None,
            "edges": self.edges,
            "intrinsics": self.intrinsics,
            "tasks": ["semseg"] + (["edge"] if self.edges else []),
            "modalities": ["rgb", "depth"],
        }

    def splits(self) -> list[str]:
        return list(self._items)

    def keys(self, split: str) -> list[str]:
        if split not in self._items:
            raise SourceError(f"sunrgbd: unknown split {split!r}; have {list(self._items)}")
        return list(self._items[split])

    def _depth(self, path: Path) -> np.ndarray:
        if self.depth_encoding == "linear":
            return c.read_depth_png16(path, self.depth_unit)
        raw, mode = c.read_png(path)
        if mode not in ("I;16", "I;16B", "I;16L", "I") or raw.ndim != 2:
            raise SourceError(f"{path}: depth PNG must be 16-bit single-channel, got mode {mode}")
        return sunrgbd_depth(raw)

    def load(self, split: str, key: str) -> dict[str, Any]:
        stem, rgb_path, mask_path, depth_path = self._items[split][key]
        rgb = c.read_rgb(rgb_path)
        hw = rgb.shape[:2]
        mask = c.check_hw(c.read_label_png(mask_path), hw, mask_path)
        if self.label_base == 1:
            n = len(self.classes)
            if (mask > n).any():  # checked before the shift, which would make a raw 256 the ignore value
                vals = sorted(int(v) for v in np.unique(mask[mask > n])[:5])
                raise SourceError(f"{mask_path}: raw label values {vals} are above {n} (0 is void, 1..{n} the classes)")
            mask = np.where(mask == 0, 256, mask) - 1  # 0 = void -> 255, 1..37 -> 0..36
        semseg = c.check_class_ids(mask, len(self.classes), 255, mask_path)
        sample: dict[str, Any] = {
            "rgb": rgb,
            "depth": c.check_hw(self._depth(depth_path), hw, depth_path),
            "semseg": semseg,
        }
        if self.edges:
            sample["edge"] = edges_from_labels(semseg)
        meta: dict[str, Any] = {
            "id": key,
            "stem": stem,
            "source": self.name,
            "split": split,
            "depth_scale": DEPTH_SCALE,
        }
        if self.intrinsics is not None:
            meta["intrinsics"] = [float(v) for v in self.intrinsics]
        sample["meta"] = meta
        return sample
