"""``folder``: a plain folder of images and per-task maps matched by file stem.

Layout::

    root/images/<stem>.{png,jpg,jpeg}     RGB (required)
    root/depth/<stem>.{png,npy}           16-bit PNG in millimetres, or .npy float metres; 0 = missing
    root/semseg/<stem>.png                class ids (8- or 16-bit, single channel)
    root/normals/<stem>.{png,npy}         PNG in the shard encoding (n = c/255*2-1, (0,0,0) = missing)
                                          or .npy H×W×3 float, camera frame x right, y down, z forward
    root/edge/<stem>.png                  single channel, > 0 = edge
    root/<member>/<stem>.{png,npy}        any other member of datasets.codec.MEMBERS (parts, sal, or one
                                          added with register_member), read by its kind: labels and
                                          gray single channel with values 0..255 (8- or 16-bit PNG),
                                          binary > 0 = on,
                                          scalar16 a 16-bit PNG in its stored units or .npy floats,
                                          rgb an RGB image, normals as above
    root/splits/{train,val}.txt           optional, one stem per line

Every folder present is a member, and then every image needs a file there. ``semseg`` needs
the ``classes`` option: a YAML (or JSON) file ``{classes: [names], ignore_index: 255}``; pixels
equal to ``ignore_index`` become 255, any other id outside the class list is an error.

Without ``root/splits`` the split is deterministic and independent of the file system order: a
stem goes to ``val`` when the first 16 hex digits of its sha256, read as a fraction of 2**64,
are below ``val_fraction``; keys are listed in sorted stem order. Adding images never moves an
existing image to the other split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.codec import MEMBERS, decode_normals
from datasets.sources import _common as c
from datasets.sources.base import Source, SourceError

_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
# (folder, member, accepted extensions) in member order.
_OPTIONAL = (("depth", (".png", ".npy")), ("semseg", (".png",)), ("normals", (".png", ".npy")), ("edge", (".png",)))


def hash_fraction(stem: str) -> float:
    """A stem -> a number in [0, 1), fixed for all time (it decides the stem's split)."""
    return int(hashlib.sha256(stem.encode()).hexdigest()[:16], 16) / 2.0**64


class FolderSource(Source):
    name = "folder"

    def __init__(
        self,
        root: str,
        classes: str | None = None,
        val_fraction: float = 0.1,
        intrinsics: Sequence[float] | str | None = None,
    ) -> None:
        self.root = c.require_dir(Path(root), "folder option root")
        images = c.find_by_stem(c.require_dir(self.root / "images", "folder"), _IMAGE_EXTS)
        if not images:
            raise SourceError(f"folder: {self.root / 'images'} holds no .png/.jpg/.jpeg image")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise SourceError(f"folder option val_fraction must be in [0, 1), got {val_fraction!r}")
        self.val_fraction = float(val_fraction)
        self.intrinsics = c.parse_intrinsics(intrinsics)
        self._args: dict[str, Any] = {"root": str(root), "classes": classes}
        self._files: dict[str, dict[str, Path]] = {"rgb": images}
        for folder, exts in _OPTIONAL:
            if (self.root / folder).is_dir():
                self._files[folder] = c.find_by_stem(self.root / folder, exts)
        for name, member in MEMBERS.items():  # parts, sal and registered members, in registration order
            if name not in self._files and (self.root / name).is_dir():
                exts = {"rgb": _IMAGE_EXTS, "scalar16": (".png", ".npy"), "normals": (".png", ".npy")}.get(
                    member.kind, (".png",)
                )
                self._files[name] = c.find_by_stem(self.root / name, exts)
        self.members = list(self._files)
        self._label_ignore = 255
        self.classes = []
        if classes is not None:
            self._read_classes(Path(classes))
        elif "semseg" in self._files:
            raise SourceError(
                f"folder: {self.root / 'semseg'} exists, so option classes (a YAML with class names) is required"
            )
        for member, files in self._files.items():
            missing = sorted(set(images) - set(files))
            if missing:
                raise SourceError(
                    f"folder: stem {missing[0]!r} has an image but no file in {self.root / member} "
                    f"({len(missing)} stems missing there, {len(files)} present)"
                )
        self._keys = {
            split: c.keys_for(stems, f"folder split {split!r}") for split, stems in self._split_stems(images).items()
        }

    def _read_classes(self, path: Path) -> None:
        data = c.read_mapping_file(path, "folder option classes")
        self.classes = c.class_names(data, path)
        ignore = data.get("ignore_index", 255)
        if isinstance(ignore, bool) or not isinstance(ignore, int) or ignore < len(self.classes):
            raise SourceError(
                f"{path}: key 'ignore_index' must be an integer >= the number of classes ({len(self.classes)}), got {ignore!r}"
            )
        self._label_ignore = ignore
        self._args["classes_sha256"] = c.sha256_of(path)

    def _split_stems(self, images: dict[str, Path]) -> dict[str, list[str]]:
        split_dir = self.root / "splits"
        if split_dir.is_dir():
            out = {}
            for split in ("train", "val"):
                path = split_dir / f"{split}.txt"
                if path.is_file():
                    stems = c.read_lines(path, f"folder split {split!r}")
                    unknown = [s for s in stems if s not in images]
                    if unknown:
                        raise SourceError(
                            f"{path}: stem {unknown[0]!r} is listed but has no image in {self.root / 'images'}"
                        )
                    out[split] = stems
            if not out:
                raise SourceError(f"folder: {split_dir} exists but holds neither train.txt nor val.txt")
            c.check_disjoint(out, f"folder: {split_dir}")
            return out
        stems = sorted(images)
        val = [s for s in stems if hash_fraction(s) < self.val_fraction]
        train = [s for s in stems if hash_fraction(s) >= self.val_fraction]
        return {split: lst for split, lst in (("train", train), ("val", val)) if lst}

    def params(self) -> dict[str, Any]:
        return self._args | {"val_fraction": self.val_fraction, "intrinsics": self.intrinsics}

    def splits(self) -> list[str]:
        return list(self._keys)

    def keys(self, split: str) -> list[str]:
        if split not in self._keys:
            raise SourceError(f"folder: unknown split {split!r}; have {list(self._keys)}")
        return list(self._keys[split])

    def load(self, split: str, key: str) -> dict[str, Any]:
        stem = self._keys[split][key]
        rgb = c.read_rgb(self._files["rgb"][stem])
        hw = rgb.shape[:2]
        sample: dict[str, Any] = {"rgb": rgb}
        for member in self.members[1:]:
            path = self._files[member][stem]
            sample[member] = c.check_hw(self._read(member, path), hw, path)
        sample["meta"] = c.base_meta(key, stem, self.name, split, c.intrinsics_for(hw, self.intrinsics))
        return sample

    def _read(self, member: str, path: Path) -> np.ndarray:
        """One map, read the way its kind is stored (datasets.codec.Member)."""
        kind = MEMBERS[member].kind
        npy = path.suffix.lower() == ".npy"
        if member == "semseg":
            return c.check_class_ids(c.read_label_png(path), len(self.classes), self._label_ignore, path)
        if kind == "scalar16":
            if npy:
                return c.clean_depth(c.read_npy(path, 2, member))
            return c.read_depth_png16(path, MEMBERS[member].scale, member)  # type: ignore[arg-type]
        if kind == "rgb":
            return c.read_rgb(path)
        if kind == "normals":
            if npy:
                arr = c.read_npy(path, 3, member)
                if arr.shape[-1] != 3:
                    raise SourceError(f"{path}: {member} must be H×W×3, got shape {arr.shape}")
                return c.unit_normals(arr)
            arr, mode = c.read_png(path)
            if mode != "RGB":
                raise SourceError(f"{path}: {member} PNG must be 8-bit RGB in the shard encoding, got mode {mode}")
            return decode_normals(arr)
        labels = c.read_label_png(path)
        if kind == "binary":
            return (labels > 0).astype(np.uint8)
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise SourceError(
                f"{path}: {member} ({kind}) values must fit 8 bits (0..255), got {labels.min()}..{labels.max()}"
            )
        return labels.astype(np.uint8)
