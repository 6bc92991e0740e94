"""``nyud-mat``: the official labelled NYU Depth V2 release (Silberman et al., ECCV 2012).

Inputs: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read with h5py) and ``splits.mat``
(MATLAB v5, read with scipy) holding 1-based ``trainNdxs`` (795 frames) and ``testNdxs`` (654),
written here as splits ``train`` and ``val``. MATLAB stores arrays column-major, so h5py sees
every array with its axes reversed::

    images     N×3×W×H uint8     -> image i = images[i].transpose(2, 1, 0)  (H×W×3)
    depths     N×W×H   float     -> depths[i].T, metres (in-painted; rawDepths has the holes)
    labels     N×W×H   uint16    -> labels[i].T, 0 = unlabelled, 1..894 = raw NYU classes
    instances  N×W×H   uint8     -> instances[i].T, instance number within its class

Conversions:

* semseg (only with ``label_map``): a YAML/JSON file ``{classes: [names], mapping: {raw: id}}``
  maps the 894 raw classes to e.g. the 40 of Gupta et al. or the 13 of Couprie et al.; raw 0 and
  unmapped raw ids become 255. Such mappings are published separately from the dataset, so the
  file is the user's and its sha256 goes into the manifest params.
* normals: not in the release; computed from depth with
  :func:`datasets.geometry.normals_from_depth` (central differences, oriented towards the
  camera, missing at holes and depth discontinuities). The NYU toolbox fits planes over a
  window instead; ``normals_step`` widens the difference baseline for smoother normals.
* edge: :func:`datasets.labels.edges_from_labels` on raw labels and instances (boundaries
  between classes and between instances, none next to unlabelled pixels), as NYUD_MT's edge
  ground truth marks semantic and instance boundaries.

Keys are the 1-based frame index as 4 digits (``0001``..``1449``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from datasets.geometry import normals_from_depth
from datasets.labels import edges_from_labels
from datasets.sources import _common as c
from datasets.sources.base import Source, SourceError

NYU_RAW_CLASSES = 894
_SPLIT_KEYS = (("train", "trainNdxs"), ("val", "testNdxs"))


def load_label_map(path: Path) -> tuple[list[str], np.ndarray]:
    """A label-map file -> (class names, lookup table of length 895 from raw id to class id/255)."""
    data = c.read_mapping_file(path, "nyud-mat option label_map")
    classes = c.class_names(data, path)
    mapping = data.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise SourceError(f"{path}: key 'mapping' must be a non-empty mapping {{raw_id: class_id}}")
    lut = np.full(NYU_RAW_CLASSES + 1, 255, dtype=np.uint8)
    for raw, cid in mapping.items():
        try:
            raw_id = int(raw)
        except (TypeError, ValueError):
            raise SourceError(f"{path}: key 'mapping' entry {raw!r} is not an integer raw class id") from None
        if not 1 <= raw_id <= NYU_RAW_CLASSES:
            raise SourceError(f"{path}: key 'mapping' entry {raw!r}: raw class id out of range 1..{NYU_RAW_CLASSES}")
        if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < len(classes):
            raise SourceError(
                f"{path}: key 'mapping' entry {raw!r} maps to {cid!r}, not a class id in 0..{len(classes) - 1} "
                f"({len(classes)} classes)"
            )
        lut[raw_id] = cid
    return classes, lut


def _split_indices(path: Path, num_frames: int) -> dict[str, list[int]]:
    c.require_file(path, "nyud-mat option splits_mat")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # noqa: BLE001 - scipy's parser fails on foreign bytes with almost any exception type
        raise SourceError(
            f"{path}: option splits_mat is not a readable MATLAB v5 .mat file ({type(e).__name__}: {e}); "
            "give the NYUDv2 release's splits.mat, which holds trainNdxs and testNdxs"
        ) from None
    out: dict[str, list[int]] = {}
    for split, name in _SPLIT_KEYS:
        if name not in mat:
            raise SourceError(f"{path}: variable {name!r} is missing")
        idx = np.asarray(mat[name]).ravel()
        if idx.dtype.kind not in "iuf" or idx.size == 0 or not np.all(np.equal(np.mod(idx, 1), 0)):
            raise SourceError(f"{path}: variable {name!r} must hold integer frame indices")
        idx = idx.astype(np.int64)
        bad = idx[(idx < 1) | (idx > num_frames)]
        if bad.size:
            raise SourceError(
                f"{path}: variable {name!r} has indices {bad[:5].tolist()} outside 1..{num_frames} (1-based)"
            )
        if len(set(idx.tolist())) != idx.size:
            raise SourceError(f"{path}: variable {name!r} lists a frame twice")
        out[split] = idx.tolist()
    c.check_disjoint(out, str(path), what="frame")
    return out


class NyudMatSource(Source):
    name = "nyud-mat"

    def __init__(
        self,
        mat: str,
        splits_mat: str,
        label_map: str | None = None,
        raw_depth: bool = False,
        normals_step: int = 1,
        intrinsics: Sequence[float] | str | None = None,
    ) -> None:
        self.mat = c.require_file(Path(mat), "nyud-mat option mat")
        self.depth_key = "rawDepths" if raw_depth else "depths"
        if int(normals_step) < 1:
            raise SourceError(f"nyud-mat option normals_step must be >= 1, got {normals_step!r}")
        self.normals_step = int(normals_step)
        self.intrinsics = c.parse_intrinsics(intrinsics)
        self._args: dict[str, Any] = {"mat": str(mat), "splits_mat": str(splits_mat), "label_map": label_map}
        if label_map is not None:
            self.classes, self._lut = load_label_map(Path(label_map))
            self._args["label_map_sha256"] = c.sha256_of(Path(label_map))
        else:
            self.classes, self._lut = [], None
        self.members = ["rgb", "depth"] + (["semseg"] if self._lut is not None else []) + ["normals", "edge"]
        num = self._check_layout()
        self._keys = {
            split: {f"{i:04d}": i for i in idx} for split, idx in _split_indices(Path(splits_mat), num).items()
        }

    def _check_layout(self) -> int:
        """Frame count, after checking every dataset this source reads exists with matching shapes."""
        try:
            f = h5py.File(self.mat, "r")
        except OSError as e:
            raise SourceError(f"{self.mat}: not an HDF5 (MATLAB v7.3) file: {e}") from e
        with f:
            shapes = {}
            for key, ndim in (("images", 4), (self.depth_key, 3), ("labels", 3), ("instances", 3)):
                if key not in f:
                    raise SourceError(f"{self.mat}: dataset {key!r} is missing")
                shapes[key] = f[key].shape
                if len(shapes[key]) != ndim:
                    raise SourceError(
                        f"{self.mat}: dataset {key!r} has shape {shapes[key]}, expected {ndim} dimensions"
                    )
        n, ch, w, h = shapes["images"]
        if ch != 3:
            raise SourceError(f"{self.mat}: dataset 'images' has shape {shapes['images']}, expected N×3×W×H")
        for key, shape in shapes.items():
            if key != "images" and shape != (n, w, h):
                raise SourceError(f"{self.mat}: dataset {key!r} has shape {shape}, expected {(n, w, h)} like 'images'")
        return n

    def params(self) -> dict[str, Any]:
        return self._args | {
            "raw_depth": self.depth_key == "rawDepths",
            "normals_step": self.normals_step,
            "intrinsics": self.intrinsics,
        }

    def splits(self) -> list[str]:
        return list(self._keys)

    def keys(self, split: str) -> list[str]:
        if split not in self._keys:
            raise SourceError(f"nyud-mat: unknown split {split!r}; have {list(self._keys)}")
        return list(self._keys[split])

    def load(self, split: str, key: str) -> dict[str, Any]:
        index = self._keys[split][key]
        # Opened per sample: an h5py handle cannot cross into writer worker processes.
        with h5py.File(self.mat, "r") as f:
            rgb = np.ascontiguousarray(np.asarray(f["images"][index - 1], dtype=np.uint8).transpose(2, 1, 0))
            depth = c.clean_depth(np.asarray(f[self.depth_key][index - 1]).T)
            labels = np.asarray(f["labels"][index - 1]).T.astype(np.int64)
            instances = np.asarray(f["instances"][index - 1]).T.astype(np.int64)
        hw = rgb.shape[:2]
        intr = c.intrinsics_for(hw, self.intrinsics)
        sample: dict[str, Any] = {"rgb": rgb, "depth": depth}
        if self._lut is not None:
            if labels.max(initial=0) > NYU_RAW_CLASSES:
                raise SourceError(f"{self.mat}: frame {index} has raw label {int(labels.max())} > {NYU_RAW_CLASSES}")
            sample["semseg"] = self._lut[labels]
        sample["normals"] = normals_from_depth(depth, intr, step=self.normals_step)
        sample["edge"] = edges_from_labels(labels, instances, ignore_index=0)
        sample["meta"] = c.base_meta(key, str(index), self.name, split, intr) | {"index": index}
        return sample
