"""``fusionpipe data inspect``: counts, class histogram, depth range, and a picture grid.

Shards are read through :func:`datasets.shards.iter_shard` with their manifest entries and every
member is decoded, so what inspect reads passes the loader's checks (size, keys, PNG CRCs and
formats, and, for each shard read to its end, sample count and sha256); a bad shard is a
:class:`~datasets.shards.ShardReadError`, a bad member a :class:`~datasets.codec.ShardFormatError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datasets.codec import MEMBERS, decode_sample
from datasets.manifest import ManifestError, load_manifest, manifest_digest
from datasets.shards import iter_shard

# A fixed, well-separated palette (class id -> colour); 255 (ignore) is black.
_PALETTE = np.array(
    [
        [174, 199, 232],
        [152, 223, 138],
        [31, 119, 180],
        [255, 187, 120],
        [188, 189, 34],
        [140, 86, 75],
        [255, 152, 150],
        [214, 39, 40],
        [197, 176, 213],
        [148, 103, 189],
        [196, 156, 148],
        [23, 190, 207],
        [247, 182, 210],
        [219, 219, 141],
        [255, 127, 14],
        [158, 218, 229],
        [44, 160, 44],
        [112, 128, 144],
        [227, 119, 194],
        [82, 84, 163],
    ],
    dtype=np.uint8,
)
COLUMNS = ("rgb", "depth", "semseg", "normals", "edge")


def colorize_semseg(semseg: np.ndarray) -> np.ndarray:
    pal = np.zeros((256, 3), np.uint8)
    for i in range(255):
        pal[i] = _PALETTE[i % len(_PALETTE)] if i < len(_PALETTE) else (_PALETTE[i % len(_PALETTE)] // 2 + 64)
    return pal[semseg]


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    from matplotlib import colormaps

    valid = depth > 0
    hi = max_depth or (float(depth[valid].max()) if valid.any() else 1.0)
    lut = (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    idx = np.clip(depth / max(hi, 1e-6) * 255, 0, 255).astype(np.uint8)
    out = lut[idx]
    out[~valid] = 0
    return out


def colorize_normals(n: np.ndarray) -> np.ndarray:
    out = np.clip((n + 1) * 0.5 * 255, 0, 255).astype(np.uint8)
    out[~np.any(n != 0, axis=-1)] = 0
    return out


def _panel(sample: dict[str, Any], column: str, shape: tuple[int, int]) -> np.ndarray:
    """One map as an RGB picture, drawn by its member's kind (datasets.codec.Member)."""
    if column not in sample:
        return np.full((*shape, 3), 40, np.uint8)
    v = sample[column]
    kind = MEMBERS[column].kind
    if kind == "rgb":
        return v
    if kind == "scalar16":
        return colorize_depth(v)
    if kind == "labels":
        return colorize_semseg(v)
    if kind == "normals":
        return colorize_normals(v)
    if kind == "gray":
        return np.repeat(v[..., None], 3, axis=-1)
    return np.repeat((v > 0).astype(np.uint8)[..., None] * 255, 3, axis=-1)


def check_split(root: Path, manifest: dict[str, Any], split: str | None) -> None:
    if split is not None and split not in manifest["splits"]:
        raise ManifestError(f"{root}: no split {split!r}; splits: {', '.join(manifest['splits'])}")


def read_samples(root: Path, split: str, count: int) -> list[dict[str, Any]]:
    m = load_manifest(root)
    check_split(root, m, split)
    out: list[dict[str, Any]] = []
    for shard in m["splits"][split]["shards"]:
        for key, members in iter_shard(root / shard["path"], shard):
            out.append(decode_sample(members, f"{shard['path']} key {key!r}"))
            if len(out) == count:
                return out
    return out


def draw_grid(samples: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """One row per sample: RGB, depth, semseg, normals, edge side by side, then any other member the
    samples carry (parts, sal, registered ones), with a header."""
    if not samples:
        raise ValueError("no samples to draw")
    present = {k for s in samples for k in s}
    columns = COLUMNS + tuple(m for m in MEMBERS if m in present and m not in COLUMNS)
    h, w = samples[0]["rgb"].shape[:2] if "rgb" in samples[0] else next(iter(samples[0].values())).shape[:2]
    header = 16
    grid = Image.new("RGB", (w * len(columns), header + h * len(samples)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((c * w + 4, 2), name, fill=(0, 0, 0))
    for r, s in enumerate(samples):
        for c, name in enumerate(columns):
            grid.paste(Image.fromarray(_panel(s, name, (h, w))), (c * w, header + r * h))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    grid.save(tmp)
    os.replace(tmp, path)


def inspect_dataset(
    root: str | os.PathLike[str], split: str | None = None, max_samples: int | None = None
) -> dict[str, Any]:
    """Per split: sample count, class pixel histogram, depth range (valid pixels) and missing fraction."""
    root = Path(root)
    m = load_manifest(root)
    check_split(root, m, split)
    report: dict[str, Any] = {
        "name": m["name"],
        "source": m["source"],
        "manifest_digest": manifest_digest(root),
        "classes": m["classes"],
        "members": m["members"],
        "splits": {},
    }
    for name, info in m["splits"].items():
        if split is not None and name != split:
            continue
        hist = np.zeros(256, np.int64)
        dmin, dmax, dsum, dvalid, dtotal, seen = np.inf, 0.0, 0.0, 0, 0, 0
        for shard in info["shards"]:
            for key, members in iter_shard(root / shard["path"], shard):
                if max_samples is not None and seen >= max_samples:
                    break
                s = decode_sample(members, f"{shard['path']} key {key!r}")
                seen += 1
                if "semseg" in s:
                    hist += np.bincount(s["semseg"].ravel(), minlength=256)
                if "depth" in s:
                    d = s["depth"]
                    v = d[d > 0]
                    dtotal += d.size
                    dvalid += v.size
                    if v.size:
                        dmin, dmax, dsum = min(dmin, float(v.min())), max(dmax, float(v.max())), dsum + float(v.sum())
        entry: dict[str, Any] = {
            "num_samples": info["num_samples"],
            "num_shards": len(info["shards"]),
            "inspected": seen,
        }
        if hist.any():
            entry["class_pixels"] = {c: int(hist[i]) for i, c in enumerate(m["classes"])}
            entry["ignore_pixels"] = int(hist[m["ignore_index"]])
        if dtotal:
            entry["depth"] = {
                "min_m": round(dmin, 4) if dvalid else None,
                "max_m": round(dmax, 4),
                "mean_m": round(dsum / dvalid, 4) if dvalid else None,
                "missing_fraction": round(1 - dvalid / dtotal, 5),
            }
        report["splits"][name] = entry
    return report
