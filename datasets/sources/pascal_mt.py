"""``pascal-mt``: PASCAL-Context multi-task (PASCAL_MT), the benchmark of ASTMT and MTI-Net.

Layout of ``PASCAL_MT.tgz`` as read by ``data/pascal_context.py`` of
SimonVandenhende/Multi-Task-Learning-PyTorch (the "official loader" below)::

    root/JPEGImages/<id>.jpg                   RGB
    root/ImageSets/Context/{train,val}.txt     one image id per line
    root/semseg/VOC12/<id>.png                 21 classes (0 = background), 255 = ignore; looked up first
    root/semseg/pascal-context/<id>.png        the same, for images without a VOC12 mask
    root/human_parts/<id>.mat                  PASCAL-Part annotation (struct ``anno``)
    root/sal_distill/<id>.png                  8-bit distilled saliency
    root/normals_distill/<id>.png              8-bit RGB distilled surface normals
    root/pascal-context/trainval/<id>.mat      ``LabelMap``: the 459-class PASCAL-Context labels

``JPEGImages`` and at least one split list are required. Each task whose files are present becomes a
member: ``semseg`` (``semseg/``), ``parts`` (``human_parts/``), ``sal`` (``sal_distill/``),
``normals`` (``normals_distill/`` and ``pascal-context/trainval/``), ``edge`` (``pascal-context/trainval/``).
PASCAL has no depth: no ``depth`` member and no intrinsics in ``meta.json``.

Every conversion follows the official loader (the file is named at each); where that loader resizes a
map whose size differs from its image, this converter stops with an error naming the file instead.
``.mat`` files are read with :func:`scipy.io.loadmat` (MATLAB 5 format, no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from datasets.codec import DEPTH_SCALE
from datasets.sources import _common as c
from datasets.sources.base import Source, SourceError

# data/pascal_context.py, VOC_CATEGORY_NAMES: the 21 semseg classes, id = index.
PASCAL_MT_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]

# data/pascal_context.py, human_parts_category = 15: the PASCAL-Part class id of "person".
HUMAN_CATEGORY = 15
# data/pascal_context.py, HUMAN_PART[6] (the default num_human_parts=6): PASCAL-Part part name ->
# part id; 0 is background, so the task has 7 classes.
HUMAN_PARTS_6 = {
    "hair": 1,
    "head": 1,
    "lear": 1,
    "lebrow": 1,
    "leye": 1,
    "lfoot": 6,
    "lhand": 4,
    "llarm": 4,
    "llleg": 6,
    "luarm": 3,
    "luleg": 5,
    "mouth": 1,
    "neck": 2,
    "nose": 1,
    "rear": 1,
    "rebrow": 1,
    "reye": 1,
    "rfoot": 6,
    "rhand": 4,
    "rlarm": 4,
    "rlleg": 6,
    "ruarm": 3,
    "ruleg": 5,
    "torso": 2,
}
# Names for the 7 part ids above (the official code leaves them unnamed).
PART_CLASSES = ["background", "head", "torso", "upper arm", "lower arm and hand", "upper leg", "lower leg and foot"]

# data/pascal_context.py, normals_valid_classes: the PASCAL-Context ids (data/db_info/context_classes.json)
# of every class whose name is also an NYUDv2 class (data/db_info/nyu_classes.json), 'unknown' excluded,
# plus 'tvmonitor' (427). Distilled normals are kept on these classes only; elsewhere they are missing.
NORMALS_VALID_CONTEXT_IDS = frozenset(
    [
        3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55,
        56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115,
        122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195,
        197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251,
        252, 255, 260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295,
        304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368,
        370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423,
        427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
    ]
)  # fmt: skip

_SPLITS = ("train", "val")
# The thinning tables below are built once, at import.


def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """The two sub-iteration deletion tables of Lam, Lee & Suen (1992), as ``skimage.morphology.thin``
    builds them. Bit i of a neighbourhood code is neighbour x_{i+1}: E, NE, N, NW, W, SW, S, SE."""

    def bits(n: int) -> list[bool]:
        return [bool(n >> i & 1) for i in range(8)]

    def g1(b: list[bool]) -> bool:  # exactly one 0 -> 1 transition around the pixel
        return sum(1 for i in (0, 2, 4, 6) if not b[i] and (b[i + 1] or b[(i + 2) % 8])) == 1

    def g2(b: list[bool]) -> bool:
        n1 = sum(1 for k in (1, 3, 5, 7) if b[k] or b[k - 1])
        n2 = sum(1 for k in (1, 3, 5, 7) if b[k] or b[(k + 1) % 8])
        return min(n1, n2) in (2, 3)

    def g3(b: list[bool]) -> bool:
        return not ((b[1] or b[2] or not b[7]) and b[0])

    def g3p(b: list[bool]) -> bool:
        return not ((b[5] or b[6] or not b[3]) and b[4])

    first = np.array([g1(bits(n)) and g2(bits(n)) and g3(bits(n)) for n in range(256)])
    second = np.array([g1(bits(n)) and g2(bits(n)) and g3p(bits(n)) for n in range(256)])
    return first, second


_THIN_LUTS = _thin_luts()


# (row offset, column offset, weight) of each neighbour in a pixel's 8-bit neighbourhood code (skimage's mask
# [[NW 8, N 4, NE 2], [W 16, -, E 1], [SW 32, S 64, SE 128]]).
_NEIGHBOURS = ((0, 1, 1), (-1, 1, 2), (-1, 0, 4), (-1, -1, 8), (0, -1, 16), (1, -1, 32), (1, 0, 64), (1, 1, 128))


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning of a binary map to one-pixel lines, as ``skimage.morphology.thin``
    (the official loader's ``thin``): both sub-iterations repeated until no pixel changes.

    Each sub-iteration computes the neighbourhood codes of the set pixels from the map as it was before
    it, then deletes those its table marks, all at once, as skimage does; the codes are gathered for the
    set pixels only (an edge map is mostly empty), outside the map counts as 0.
    """
    # C order, so that ``flat`` is a view of ``skel`` (loadmat gives Fortran-ordered arrays)
    skel = np.ascontiguousarray(np.pad(np.asarray(mask, dtype=bool), 1), dtype=np.uint8)
    flat = skel.reshape(-1)
    width = skel.shape[1]
    offsets = [(dr * width + dc, np.uint8(weight)) for dr, dc, weight in _NEIGHBOURS]
    idx = np.flatnonzero(flat)
    changed = True
    while changed:
        changed = False
        for lut in _THIN_LUTS:
            idx = idx[flat[idx] == 1]
            codes = np.zeros(idx.size, dtype=np.uint8)
            for offset, weight in offsets:
                codes |= flat[idx + offset] * weight
            delete = idx[lut[codes]]
            if delete.size:
                flat[delete] = 0
                changed = True
    return skel[1:-1, 1:-1].astype(bool)


def laplacian_nonzero(labels: np.ndarray) -> np.ndarray:
    """``abs(cv2.Laplacian(labels, cv2.CV_64F)) > 0``: the 4-neighbour Laplacian (OpenCV's kernel for
    ksize=1) with OpenCV's default border, BORDER_REFLECT_101 (numpy's ``reflect``)."""
    lab = np.pad(labels.astype(np.int32), 1, mode="reflect")  # 16-bit ids: the sums fit in 32 bits
    lap = lab[:-2, 1:-1] + lab[2:, 1:-1] + lab[1:-1, :-2] + lab[1:-1, 2:] - 4 * lab[1:-1, 1:-1]
    return lap != 0


def context_edges(label_map: np.ndarray) -> np.ndarray:
    """data/pascal_context.py, ``_load_edge``: ``thin(abs(Laplacian(LabelMap)) > 0)``, as uint8 {0, 1}."""
    return thin(laplacian_nonzero(label_map)).astype(np.uint8)


def saliency(raw: np.ndarray) -> np.ndarray:
    """data/pascal_context.py, ``_load_sal_distilled``: ``raw / 255 > 0.5`` is salient, stored as 255
    (the ``sal`` member: 255 = salient, 0 = not). For integer pixels that is ``raw >= 128``."""
    return np.where(raw >= 128, 255, 0).astype(np.uint8)


# 0..20 and 255 (ignore): the values a semseg PNG may hold.
_SEMSEG_VALUES = np.zeros(256, dtype=bool)
_SEMSEG_VALUES[: len(PASCAL_MT_CLASSES)] = True
_SEMSEG_VALUES[255] = True


def read_semseg(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """data/pascal_context.py, ``_load_semseg``: the PNG's values are the class ids, 255 = ignore; any other
    value is an error naming the file. An 8-bit PNG is checked with a 256-entry table."""
    raw, mode = c.read_png(path)
    if raw.ndim != 2:
        raise SourceError(f"{path}: label image must be single-channel, got mode {mode} with shape {raw.shape}")
    c.check_hw(raw, hw, path)
    if raw.dtype == np.uint8 and _SEMSEG_VALUES[raw].all():
        return raw
    return c.check_class_ids(raw.astype(np.int64), len(PASCAL_MT_CLASSES), 255, path)


# 2 c / 255 - 1 for every 8-bit value c, computed in float32 as the formula would be on each pixel.
_NORMALS_DECODE = (2.0 * np.arange(256, dtype=np.float32) / 255.0 - 1.0).astype(np.float32)


def distilled_normals(raw: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """data/pascal_context.py, ``_load_normals_distilled``: ``2 * c / 255 - 1``, kept where the context
    class is in NORMALS_VALID_CONTEXT_IDS, zero (missing) elsewhere. Not renormalised: the shard's
    8-bit encoding of these vectors gives back the distributed bytes exactly."""
    lut = np.zeros(max(int(label_map.max(initial=0)), max(NORMALS_VALID_CONTEXT_IDS)) + 1, dtype=bool)
    lut[sorted(NORMALS_VALID_CONTEXT_IDS)] = True
    valid = lut[np.maximum(label_map, 0)]  # a look-up table: np.isin over 170 ids is several times slower
    return np.where(valid[..., None], _NORMALS_DECODE[raw], np.float32(0.0))


def _load_mat(path: Path, key: str) -> Any:
    try:
        data = scipy.io.loadmat(str(path))
    except (
        MatReadError,
        OSError,
        ValueError,
        TypeError,
        NotImplementedError,
    ) as e:  # a v7.3 (HDF5) file is NotImplementedError
        raise SourceError(f"{path}: not a readable MATLAB .mat file: {e}") from e
    if key not in data:
        raise SourceError(f"{path}: .mat file has no variable {key!r} (has {sorted(k for k in data if k[0] != '_')})")
    return data[key]


def human_parts(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """data/pascal_context.py, ``_load_human_parts`` with ``num_human_parts=6`` and ``area_thres=0``, then
    data/custom_transforms.py, ``AddIgnoreRegions``.

    ``anno[0][0][1][0]`` lists the objects (``class``, ``class_ind``, ``mask``, ``parts``); for every
    object of class 15 (person) that has parts, each part's mask is painted with its id from
    HUMAN_PARTS_6, later parts over earlier ones. A map with no part pixels (no person, or no person
    with parts) is all 255 = ignore, as ``AddIgnoreRegions`` makes it.
    """
    anno = _load_mat(path, "anno")
    try:
        objects = anno[0][0][1][0]
    except (IndexError, TypeError, KeyError) as e:
        raise SourceError(f"{path}: 'anno' is not a PASCAL-Part annotation (anno[0][0][1][0] = objects): {e}") from e
    target = np.zeros(hw, dtype=np.uint8)
    for i, obj in enumerate(objects):
        try:
            category = int(np.asarray(obj[1]).reshape(-1)[0])
            parts = obj[3]
        except (IndexError, TypeError, ValueError) as e:
            raise SourceError(f"{path}: object {i} lacks class_ind or parts: {e}") from e
        if category != HUMAN_CATEGORY or len(parts) == 0:
            continue
        for j, part in enumerate(parts[0]):
            name = str(np.asarray(part[0]).reshape(-1)[0])
            if name not in HUMAN_PARTS_6:
                raise SourceError(
                    f"{path}: object {i} part {j}: unknown human part {name!r} (known: {', '.join(sorted(HUMAN_PARTS_6))})"
                )
            mask = np.asarray(part[1])
            if mask.shape != hw:
                raise SourceError(
                    f"{path}: object {i} part {name!r}: mask size {mask.shape} differs from its image's {hw} (H, W)"
                )
            target[mask.astype(bool)] = HUMAN_PARTS_6[name]
    if not target.any():
        target[:] = 255
    return target


class PascalMtSource(Source):
    name = "pascal-mt"
    classes = list(PASCAL_MT_CLASSES)

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._root_arg = str(root)
        c.require_dir(self.root, "pascal-mt option root")
        for sub in ("JPEGImages", "ImageSets/Context"):
            if not (self.root / sub).is_dir():
                raise SourceError(
                    f"pascal-mt: {self.root / sub} does not exist; {self.root} is not in the PASCAL_MT layout "
                    "(JPEGImages/, ImageSets/Context/{train,val}.txt, semseg/, human_parts/, sal_distill/, "
                    "normals_distill/, pascal-context/trainval/; docs/converters.md)"
                )
        self.image_dir = self.root / "JPEGImages"
        self.context_dir = self.root / "pascal-context" / "trainval"
        has_context = self.context_dir.is_dir()
        have = {
            "semseg": (self.root / "semseg").is_dir(),
            "parts": (self.root / "human_parts").is_dir(),
            "sal": (self.root / "sal_distill").is_dir(),
            "normals": (self.root / "normals_distill").is_dir() and has_context,
            "edge": has_context,
        }
        self.tasks = [t for t in ("semseg", "parts", "sal", "normals", "edge") if have[t]]
        self.members = ["rgb", *self.tasks]
        self._keys: dict[str, dict[str, str]] = {}
        for split in _SPLITS:
            path = self.root / "ImageSets" / "Context" / f"{split}.txt"
            if path.is_file():
                self._keys[split] = self._index(split, path)
        if not self._keys:
            raise SourceError(
                f"pascal-mt: no split list found; expected {self.root / 'ImageSets' / 'Context' / 'train.txt'} "
                "and/or val.txt"
            )
        c.check_disjoint(
            {s: list(k.values()) for s, k in self._keys.items()}, f"pascal-mt: {self.root}/ImageSets/Context"
        )

    def _files(self, stem: str) -> dict[str, Path]:
        files = {"rgb": self.image_dir / f"{stem}.jpg"}
        if "semseg" in self.tasks:
            # data/pascal_context.py, _get_semseg_fname: VOC12 first, then pascal-context.
            voc = self.root / "semseg" / "VOC12" / f"{stem}.png"
            files["semseg"] = voc if voc.is_file() else self.root / "semseg" / "pascal-context" / f"{stem}.png"
        if "parts" in self.tasks:
            files["parts"] = self.root / "human_parts" / f"{stem}.mat"
        if "sal" in self.tasks:
            files["sal"] = self.root / "sal_distill" / f"{stem}.png"
        if "normals" in self.tasks:
            files["normals"] = self.root / "normals_distill" / f"{stem}.png"
        if "normals" in self.tasks or "edge" in self.tasks:
            files["context"] = self.context_dir / f"{stem}.mat"
        return files

    def _index(self, split: str, path: Path) -> dict[str, str]:
        stems = c.read_lines(path, f"pascal-mt split {split!r}")
        keys = c.keys_for(stems, str(path))
        for i, stem in enumerate(stems, start=1):
            for f in self._files(stem).values():
                if not f.is_file():
                    raise SourceError(f"{path}:{i}: image {stem!r} is listed but {f} does not exist")
        return keys

    def params(self) -> dict[str, Any]:
        return {
            "root": self._root_arg,
            "tasks": list(self.tasks),
            "modalities": ["rgb"],
            "num_parts": len(PART_CLASSES),
        }

    def splits(self) -> list[str]:
        return list(self._keys)

    def keys(self, split: str) -> list[str]:
        if split not in self._keys:
            raise SourceError(f"pascal-mt: unknown split {split!r}; have {list(self._keys)}")
        return list(self._keys[split])

    def load(self, split: str, key: str) -> dict[str, Any]:
        stem = self._keys[split][key]
        files = self._files(stem)
        rgb = c.read_rgb(files["rgb"])
        hw = rgb.shape[:2]
        sample: dict[str, Any] = {"rgb": rgb}
        label_map = None
        if "context" in files:
            label_map = _load_mat(files["context"], "LabelMap")
            if not np.issubdtype(np.asarray(label_map).dtype, np.integer) or np.asarray(label_map).ndim != 2:
                raise SourceError(
                    f"{files['context']}: LabelMap must be a 2-D integer array, got {np.asarray(label_map).dtype} {np.shape(label_map)}"
                )
            label_map = c.check_hw(np.asarray(label_map), hw, files["context"])
        if "semseg" in self.tasks:
            sample["semseg"] = read_semseg(files["semseg"], hw)
        if "parts" in self.tasks:
            sample["parts"] = human_parts(files["parts"], hw)
        if "sal" in self.tasks:
            sample["sal"] = saliency(c.check_hw(c.read_label_png(files["sal"]), hw, files["sal"]))
        if "normals" in self.tasks:
            raw, mode = c.read_png(files["normals"])
            if raw.ndim != 3 or raw.shape[2] != 3 or raw.dtype != np.uint8:
                raise SourceError(f"{files['normals']}: distilled normals must be an 8-bit RGB PNG, got mode {mode}")
            assert label_map is not None
            sample["normals"] = distilled_normals(c.check_hw(raw, hw, files["normals"]), label_map)
        if "edge" in self.tasks:
            assert label_map is not None
            sample["edge"] = context_edges(label_map)
        sample["meta"] = {"id": key, "stem": stem, "source": self.name, "split": split, "depth_scale": DEPTH_SCALE}
        return sample
