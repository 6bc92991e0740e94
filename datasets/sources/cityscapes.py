"""``cityscapes``: Cityscapes fine annotations (Cordts et al., CVPR 2016) in the official layout.

Layout (as unpacked from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip)::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png      RGB
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       label ids 0..33
    root/disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png          16-bit (only with depth)
    root/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json               calibration (only with depth)

Splits ``train`` and ``val``, each one that is present (the test split has no public labels).
Label ids become the 19 train ids with the official table below (255 = ignore); an id that is
not in the table is an error naming the label file.

Depth (option ``depth``, off by default): disparity PNG value ``p > 0`` is ``d = (p - 1) / 256``
pixels; depth = ``baseline × fx / d`` metres with ``baseline`` and ``fx`` from the frame's camera
JSON (``extrinsic.baseline``, ``intrinsic.fx``); ``p = 0`` or ``p = 1`` (no disparity) is missing.
``meta.intrinsics`` is then ``[fx, fy, u0, v0]`` of that JSON and ``meta.depth_scale`` 0.001.
Depth beyond 65.535 m does not fit the shard's 16-bit millimetres and is stored as missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from datasets.codec import DEPTH_SCALE
from datasets.sources import _common as c
from datasets.sources._segbench import PairSource, lookup_table
from datasets.sources.base import SourceError

# The 19 evaluation classes in train-id order 0..18.
CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
# label id -> train id, from the `labels` table of cityscapesScripts
# (github.com/mcordts/cityscapesScripts, cityscapesscripts/helpers/labels.py); 255 = ignored in training
# and evaluation. Ids 0..33 are every id a gtFine labelIds PNG holds ('license plate' has id -1 and
# is never written to one).
CITYSCAPES_ID_TO_TRAIN_ID = {
    0: 255,  # unlabeled
    1: 255,  # ego vehicle
    2: 255,  # rectification border
    3: 255,  # out of roi
    4: 255,  # static
    5: 255,  # dynamic
    6: 255,  # ground
    7: 0,  # road
    8: 1,  # sidewalk
    9: 255,  # parking
    10: 255,  # rail track
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,  # pole
    18: 255,  # polegroup
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
_SPLITS = ("train", "val")
_IMAGE_RE = re.compile(r"^(?P<stem>[A-Za-z0-9\-]+_\d+_\d+)_leftImg8bit\.png$")


class CityscapesSource(PairSource):
    name = "cityscapes"
    classes = list(CITYSCAPES_CLASSES)
    _lut = lookup_table(CITYSCAPES_ID_TO_TRAIN_ID)
    _table = "the Cityscapes label ids 0..33 (cityscapesScripts labels.py)"

    def __init__(self, root: str, depth: bool = False) -> None:
        super().__init__()
        self.root = c.require_dir(Path(root), "cityscapes option root")
        self.depth = bool(depth)
        self._args = {"root": str(root), "depth": self.depth}
        if not (self.root / "leftImg8bit").is_dir() or not (self.root / "gtFine").is_dir():
            raise SourceError(
                f"cityscapes: {self.root} is not the Cityscapes layout: expected "
                f"{self.root / 'leftImg8bit'}/<split>/<city>/*_leftImg8bit.png and "
                f"{self.root / 'gtFine'}/<split>/<city>/*_gtFine_labelIds.png"
            )
        self.members = ["rgb", "semseg"] + (["depth"] if self.depth else [])
        for split in _SPLITS:
            if (self.root / "leftImg8bit" / split).is_dir():
                self._set_split(split, self._index(split), f"cityscapes {split}")
        if not self._pairs:
            raise SourceError(
                f"cityscapes: {self.root / 'leftImg8bit'} holds neither train/ nor val/ "
                "(expected leftImg8bit/<split>/<city>/*_leftImg8bit.png)"
            )

    def _index(self, split: str) -> list[tuple[str, Path, Path]]:
        image_dir = self.root / "leftImg8bit" / split
        label_dir = c.require_dir(self.root / "gtFine" / split, f"cityscapes split {split!r}")
        out = []
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image in sorted(p for p in city.iterdir() if p.is_file()):
                m = _IMAGE_RE.match(image.name)
                if not m:
                    raise SourceError(
                        f"{image}: not a Cityscapes image name (expected <city>_<seq>_<frame>_leftImg8bit.png)"
                    )
                stem = m["stem"]
                needed = [label_dir / city.name / f"{stem}_gtFine_labelIds.png"]
                if self.depth:
                    needed += [self._disparity(split, city.name, stem), self._camera(split, city.name, stem)]
                for f in needed:
                    if not f.is_file():
                        raise SourceError(f"cityscapes: image {image} has no {f}")
                out.append((stem, image, needed[0]))
        if not out:
            raise SourceError(f"cityscapes: {image_dir} holds no <city>/*_leftImg8bit.png image")
        return out

    def _disparity(self, split: str, city: str, stem: str) -> Path:
        return self.root / "disparity" / split / city / f"{stem}_disparity.png"

    def _camera(self, split: str, city: str, stem: str) -> Path:
        return self.root / "camera" / split / city / f"{stem}_camera.json"

    def extra(self, split: str, stem: str, hw: tuple[int, int], meta: dict[str, Any]) -> dict[str, Any]:
        if not self.depth:
            return {}
        city = stem.split("_")[0]
        cam_path = self._camera(split, city, stem)
        fx, fy, u0, v0, baseline = read_camera(cam_path)
        disp_path = self._disparity(split, city, stem)
        raw, mode = c.read_png(disp_path)
        if mode not in ("I;16", "I;16B", "I;16L", "I") or raw.ndim != 2:
            raise SourceError(f"{disp_path}: disparity PNG must be 16-bit single-channel, got mode {mode}")
        c.check_hw(raw, hw, disp_path)
        meta["intrinsics"] = [fx, fy, u0, v0]
        meta["depth_scale"] = DEPTH_SCALE
        return {"depth": depth_from_disparity(raw, fx, baseline)}


def depth_from_disparity(raw: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """Cityscapes disparity PNG values -> float32 metres: ``baseline × fx / ((p - 1) / 256)``, 0 = missing."""
    d = (raw.astype(np.float64) - 1.0) / 256.0
    ok = (raw > 1) & (d > 0)
    depth = np.zeros(raw.shape, dtype=np.float64)
    depth[ok] = baseline * fx / d[ok]
    return depth.astype(np.float32)


def read_camera(path: Path) -> tuple[float, float, float, float, float]:
    """``(fx, fy, u0, v0, baseline)`` of a Cityscapes camera JSON; a missing or bad field is an error naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: not a readable camera JSON: {e}") from e
    values = []
    for section, field in (
        ("intrinsic", "fx"),
        ("intrinsic", "fy"),
        ("intrinsic", "u0"),
        ("intrinsic", "v0"),
        ("extrinsic", "baseline"),
    ):
        v = data.get(section, {}).get(field) if isinstance(data, dict) and isinstance(data.get(section), dict) else None
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
            raise SourceError(f"{path}: field {section}.{field} must be a finite number, got {v!r}")
        values.append(float(v))
    if values[0] <= 0 or values[4] <= 0:
        raise SourceError(f"{path}: intrinsic.fx and extrinsic.baseline must be > 0, got {values[0]}, {values[4]}")
    return values[0], values[1], values[2], values[3], values[4]
