"""``nyud-mt``: the NYUD_MT release used by ASTMT and MTI-Net (Vandenhende et al., ECCV 2020).

Layout (as read by ``data/nyud.py`` of SimonVandenhende/Multi-Task-Learning-PyTorch)::

    root/images/<stem>.jpg           RGB
    root/segmentation/<stem>.png     class ids, 0 = void, 1..40 = the 40 NYUD classes
    root/depth/<stem>.npy            float metres
    root/normals/<stem>.npy          H×W×3 float in [-1, 1]
    root/edge/<stem>.npy             H×W, > 0 = edge
    root/gt_sets/{train,val}.txt     one stem per line

Only ``images`` and ``gt_sets`` are required; each task folder present becomes a member.

Conversions (same as the official loader unless said): semseg ``0 -> 255`` and ``id -> id - 1``
(40 classes, 0..39); depth passes through (NaN/negative -> missing); edge ``> 0 -> 1``; normals
are renormalised and the axes named in ``normals_flip`` are negated (default ``"z"``: the NYU
toolbox stores z towards the camera, our frame has z forward). The official loader resizes a
map whose size differs from its image; here that is an error naming the file, because a silent
resize of labels hides a broken download.

When depth is present, every sample's converted normals are compared axis by axis with normals
computed from its depth (:func:`datasets.geometry.normals_from_depth`); a clearly negative
agreement on an axis means the ``normals_flip`` convention is wrong for this copy of the data
and is an error naming the file and axis, instead of shards with silently mirrored normals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.geometry import axis_agreement, normals_from_depth
from datasets.sources import _common as c
from datasets.sources.base import Source, SourceError

# (folder, member, file extension) in member order.
_TASKS = (
    ("depth", "depth", ".npy"),
    ("segmentation", "semseg", ".png"),
    ("normals", "normals", ".npy"),
    ("edge", "edge", ".npy"),
)
_SPLITS = ("train", "val")
# Agreement below this on an axis is taken as proof that the axis is flipped; random noise
# between two correct normal maps stays well above it.
_FLIPPED_BELOW = -0.2
# The normals check reads every _CHECK_STRIDE-th pixel of maps at least _CHECK_STRIDE_FROM pixels on each side.
_CHECK_STRIDE, _CHECK_STRIDE_FROM = 2, 96


class NyudMtSource(Source):
    name = "nyud-mt"
    classes = list(c.NYUD40_CLASSES)

    def __init__(
        self,
        root: str,
        intrinsics: Sequence[float] | str | None = None,
        normals_flip: str = "z",
        check_normals: bool = True,
    ) -> None:
        self.root = Path(root)
        self._root_arg = str(root)
        c.require_dir(self.root, "nyud-mt option root")
        self.image_dir = c.require_dir(self.root / "images", "nyud-mt")
        if set(normals_flip) - set("xyz") or len(set(normals_flip)) != len(normals_flip):
            raise SourceError(
                f"nyud-mt option normals_flip must name distinct axes from 'xyz' (or be empty), got {normals_flip!r}"
            )
        self.normals_flip = normals_flip
        self.check_normals = check_normals
        self.intrinsics = c.parse_intrinsics(intrinsics)
        self.tasks = [
            (self.root / folder, member, ext) for folder, member, ext in _TASKS if (self.root / folder).is_dir()
        ]
        self.members = ["rgb"] + [member for _, member, _ in self.tasks]
        self._keys: dict[str, dict[str, str]] = {}
        for split in _SPLITS:
            path = self.root / "gt_sets" / f"{split}.txt"
            if path.is_file():
                self._keys[split] = self._index(split, path)
        if not self._keys:
            raise SourceError(
                f"nyud-mt: no split list found; expected {self.root / 'gt_sets' / 'train.txt'} and/or val.txt"
            )
        c.check_disjoint(
            {split: list(keys.values()) for split, keys in self._keys.items()}, f"nyud-mt: {self.root / 'gt_sets'}"
        )

    def _index(self, split: str, path: Path) -> dict[str, str]:
        stems = c.read_lines(path, f"nyud-mt split {split!r}")
        keys = c.keys_for(stems, str(path))
        for stem in stems:
            for folder, ext in [(self.image_dir, ".jpg")] + [(d, e) for d, _, e in self.tasks]:
                f = folder / f"{stem}{ext}"
                if not f.is_file():
                    raise SourceError(f"{path}: stem {stem!r} is listed but {f} does not exist")
        return keys

    def params(self) -> dict[str, Any]:
        return {
            "root": self._root_arg,
            "intrinsics": self.intrinsics,
            "normals_flip": self.normals_flip,
            "check_normals": self.check_normals,
        }

    def splits(self) -> list[str]:
        return list(self._keys)

    def keys(self, split: str) -> list[str]:
        if split not in self._keys:
            raise SourceError(f"nyud-mt: unknown split {split!r}; have {list(self._keys)}")
        return list(self._keys[split])

    def load(self, split: str, key: str) -> dict[str, Any]:
        stem = self._keys[split][key]
        rgb = c.read_rgb(self.image_dir / f"{stem}.jpg")
        hw = rgb.shape[:2]
        intr = c.intrinsics_for(hw, self.intrinsics)
        sample: dict[str, Any] = {"rgb": rgb}
        for folder, member, ext in self.tasks:
            path = folder / f"{stem}{ext}"
            sample[member] = c.check_hw(self._read(member, path), hw, path)
        if "normals" in sample and "depth" in sample and self.check_normals:
            self._check_normals(sample["normals"], sample["depth"], intr, self.root / "normals" / f"{stem}.npy")
        sample["meta"] = c.base_meta(key, stem, self.name, split, intr)
        return sample

    def _read(self, member: str, path: Path) -> np.ndarray:
        if member == "semseg":
            raw = c.read_label_png(path)
            n = len(self.classes)
            if (raw > n).any():  # checked before the shift, which would make a raw 256 the ignore value
                vals = sorted(int(v) for v in np.unique(raw[raw > n])[:5])
                raise SourceError(f"{path}: raw label values {vals} are above {n} (0 is void, 1..{n} the classes)")
            # Official loader: 0 (void) -> 256 then everything -1, so void -> 255 and 1..40 -> 0..39.
            shifted = np.where(raw == 0, 256, raw) - 1
            return c.check_class_ids(shifted, len(self.classes), 255, path)
        if member == "depth":
            return c.clean_depth(c.read_npy(path, 2, "depth"))
        if member == "edge":
            return (c.read_npy(path, 2, "edge") > 0).astype(np.uint8)
        arr = c.read_npy(path, 3, "normals")
        if arr.shape[-1] != 3:
            raise SourceError(f"{path}: normals must be H×W×3, got shape {arr.shape}")
        n = c.unit_normals(arr)
        for axis in self.normals_flip:
            n[..., "xyz".index(axis)] *= -1.0
        return n

    def _check_normals(self, normals: np.ndarray, depth: np.ndarray, intr: list[float], path: Path) -> None:
        # On a large map every second pixel in each direction: the sign of an axis's agreement does not
        # depend on the sampling, and the check then costs a quarter (it dominated a build's CPU time).
        s = _CHECK_STRIDE if min(depth.shape) >= _CHECK_STRIDE_FROM else 1
        sub = [v / s for v in intr]  # pixel (i, j) of the subsampled map is (s·i, s·j): u' = u / s
        agree = axis_agreement(normals[::s, ::s], normals_from_depth(depth[::s, ::s], sub))
        flipped = [axis for axis, a in zip("xyz", agree, strict=True) if np.isfinite(a) and a < _FLIPPED_BELOW]
        if flipped:
            raise SourceError(
                f"{path}: after normals_flip={self.normals_flip!r} the normals disagree with the depth map on axis "
                f"{', '.join(flipped)} (agreement {', '.join(f'{a:+.2f}' for a in agree)} for x, y, z); this copy uses "
                "another sign convention: set normals_flip accordingly, or check_normals=False to skip the check"
            )
