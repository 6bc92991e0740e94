"""Helpers shared by the real-dataset converters (nyud-mt, nyud-cen, nyud-mat, folder).

File reading with errors that name the file, split-list reading, key sanitising, class/label-map
files, and the NYUDv2 constants (40-class names, Kinect RGB intrinsics).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from datasets.codec import DEPTH_SCALE
from datasets.sources.base import SourceError, check_key

# The 40-class NYUDv2 set of Gupta et al. (CVPR 2013), in id order 0..39 (raw file ids 1..40).
NYUD40_CLASSES = [
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
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refridgerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
]
# NYUDv2 RGB camera (the toolbox's camera_params.m), valid at 640×480.
NYUD_INTRINSICS = (518.857901, 519.469611, 325.582449, 253.736166)
NYUD_SIZE = (480, 640)  # H, W
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise SourceError(f"{what}: folder {path} does not exist")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SourceError(f"{what}: file {path} does not exist")
    return path


def sanitize_key(stem: str) -> str:
    """A file stem -> a shard key matching ``[A-Za-z0-9_-]+``, deterministically.

    A stem that is already a valid key is used unchanged. Otherwise every other character
    (dots, slashes, spaces, ...) becomes ``_`` and ``-`` plus the first 8 hex digits of the
    stem's sha256 are appended, so stems that differ only in those characters (``a.b``, ``a/b``)
    still get distinct keys.
    """
    if stem and not _BAD_KEY_CHARS.search(stem):
        return stem
    digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
    return check_key(f"{_BAD_KEY_CHARS.sub('_', stem)}-{digest}", f"stem {stem!r}")


def keys_for(stems: Sequence[str], where: str) -> dict[str, str]:
    """Ordered ``{key: stem}``; two stems with the same key (a duplicate line) is an error."""
    out: dict[str, str] = {}
    for stem in stems:
        key = sanitize_key(stem)
        if key in out:
            raise SourceError(f"{where}: stem {stem!r} is listed twice (or maps to the same key as {out[key]!r})")
        out[key] = stem
    return out


def check_disjoint(splits: dict[str, Sequence[Any]], where: str, what: str = "stem") -> None:
    """Each sample in one split: one listed in two would be validated on what it trained on."""
    first: dict[Any, str] = {}
    for split, items in splits.items():
        for item in items:
            if first.setdefault(item, split) != split:
                raise SourceError(
                    f"{where}: {what} {item!r} is in split {first[item]!r} and in split {split!r}; "
                    "each sample must belong to one split"
                )


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file (a split list)."""
    require_file(path, what)
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise SourceError(f"{what}: split list {path} is empty")
    return lines


@contextlib.contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Pillow's errors while reading ``path`` as a SourceError naming it.

    An image with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb: a small file
    that decodes to gigabytes) is refused here, both where Pillow only warns (up to twice the limit,
    ``DecompressionBombWarning``, made an error in this block) and where it raises
    (``DecompressionBombError``). The warning filter is process-wide for the block; the writer's workers
    are processes, not threads.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SourceError(
            f"{path}: image refused as a possible decompression bomb: {e} (PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS})"
        ) from None
    except OSError as e:
        raise SourceError(f"{path}: not a readable image: {e}") from e


def read_rgb(path: Path) -> np.ndarray:
    with _image_errors(path), Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_png(path: Path) -> tuple[np.ndarray, str]:
    """The raw pixel array of a PNG and its PIL mode (no conversion)."""
    with _image_errors(path), Image.open(path) as img:
        img.load()
        return np.asarray(img).copy(), img.mode


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel label PNG (8- or 16-bit) as an integer array; palette PNGs keep indices."""
    arr, mode = read_png(path)
    if arr.ndim != 2:
        raise SourceError(f"{path}: label image must be single-channel, got mode {mode} with shape {arr.shape}")
    return arr.astype(np.int64)


def read_depth_png16(path: Path, unit_m: float, what: str = "depth") -> np.ndarray:
    """A 16-bit depth PNG -> float32 metres (value × ``unit_m``; 0 stays missing)."""
    arr, mode = read_png(path)
    if mode not in ("I;16", "I;16B", "I;16L", "I") or arr.ndim != 2:
        raise SourceError(f"{path}: {what} PNG must be 16-bit single-channel, got mode {mode}")
    return (arr.astype(np.float64) * unit_m).astype(np.float32)


def read_npy(path: Path, ndim: int, what: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: not a readable .npy array ({what}): {e}") from e
    if arr.ndim != ndim:
        raise SourceError(f"{path}: {what} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def clean_depth(depth: np.ndarray) -> np.ndarray:
    """Float metres with NaN/inf/negative values marked missing (0)."""
    d = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    d[d < 0] = 0.0
    return d


def unit_normals(n: np.ndarray) -> np.ndarray:
    """Renormalise H×W×3 normals; near-zero or non-finite vectors become (0,0,0) = missing."""
    n = np.nan_to_num(n.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    ok = norm > 1e-6
    return np.where(ok, n / np.where(ok, norm, 1.0), 0.0).astype(np.float32)


def check_hw(arr: np.ndarray, hw: tuple[int, int], path: Path) -> np.ndarray:
    if arr.shape[:2] != hw:
        raise SourceError(f"{path}: size {arr.shape[:2]} differs from its image's {hw} (H, W)")
    return arr


def check_class_ids(labels: np.ndarray, num_classes: int, ignore: int, path: Path) -> np.ndarray:
    """Class ids -> uint8 with ``ignore`` mapped to 255; an id outside 0..num_classes-1 is an error."""
    bad = (labels != ignore) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        vals = sorted(int(v) for v in np.unique(labels[bad])[:5])
        raise SourceError(f"{path}: label values {vals} are outside 0..{num_classes - 1} (ignore value {ignore})")
    out = np.where(labels == ignore, 255, labels)
    return out.astype(np.uint8)


def parse_intrinsics(value: Sequence[float] | str | None) -> list[float] | None:
    """The ``intrinsics`` option: None, 4 numbers, or the CLI form ``"fx,fy,cx,cy"``."""
    if value is None:
        return None
    try:
        vals = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError) as e:
        raise SourceError(f"option intrinsics must be 4 numbers fx,fy,cx,cy, got {value!r}") from e
    if len(vals) != 4 or vals[0] <= 0 or vals[1] <= 0:
        raise SourceError(f"option intrinsics must be 4 numbers [fx, fy, cx, cy] with fx, fy > 0, got {value!r}")
    return vals


def intrinsics_for(hw: tuple[int, int], override: list[float] | None) -> list[float]:
    """``override`` (from :func:`parse_intrinsics`) if given, else NYUDv2's scaled to H×W.

    Scaling assumes the image is a resized 640×480 frame; a *cropped* frame (e.g. the
    white-border crop some NYUD releases apply) needs an explicit override with cx, cy shifted
    by the crop offset.
    """
    if override is not None:
        return list(override)
    h, w = hw
    sx, sy = w / NYUD_SIZE[1], h / NYUD_SIZE[0]
    fx, fy, cx, cy = NYUD_INTRINSICS
    # Rounded so meta.json shows readable numbers; 1e-6 px is far below calibration accuracy.
    return [round(v, 6) for v in (fx * sx, fy * sy, cx * sx, cy * sy)]


def base_meta(key: str, stem: str, source: str, split: str, intrinsics: list[float]) -> dict[str, Any]:
    return {
        "id": key,
        "stem": stem,
        "source": source,
        "split": split,
        "intrinsics": [float(v) for v in intrinsics],
        "depth_scale": DEPTH_SCALE,
    }


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_mapping_file(path: Path, what: str) -> dict[str, Any]:
    """A YAML or JSON file (chosen by extension; YAML otherwise) holding a mapping at top level."""
    require_file(path, what)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SourceError(
            f"{what}: {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {e}"
        ) from e
    if not isinstance(data, dict):
        raise SourceError(f"{what}: {path} must hold a mapping with a 'classes' key, got {type(data).__name__}")
    return data


def class_names(data: dict[str, Any], path: Path) -> list[str]:
    names = data.get("classes")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SourceError(f"{path}: key 'classes' must be a non-empty list of class names")
    if len(names) > 255:
        raise SourceError(f"{path}: key 'classes' has {len(names)} names; at most 255 fit beside ignore id 255")
    return names


def find_by_stem(folder: Path, exts: Iterable[str]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``exts``; two files per stem is an error."""
    exts = tuple(e.lower() for e in exts)
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in out:
                raise SourceError(f"{folder}: stem {p.stem!r} has two files: {out[p.stem].name} and {p.name}")
            out[p.stem] = p
    return out
