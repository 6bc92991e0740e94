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


def read_keyed_samples(root: Path, split: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` samples of ``split`` with their keys (the tar keys ``data verify`` names)."""
    m = load_manifest(root)
    check_split(root, m, split)
    out: list[tuple[str, dict[str, Any]]] = []
    for shard in m["splits"][split]["shards"]:
        for key, members in iter_shard(root / shard["path"], shard):
            out.append((key, decode_sample(members, f"{shard['path']} key {key!r}")))
            if len(out) == count:
                return out
    return out


def read_samples(root: Path, split: str, count: int) -> list[dict[str, Any]]:
    return [sample for _, sample in read_keyed_samples(root, split, count)]


def grid_columns(samples: list[dict[str, Any]]) -> list[str]:
    """The members drawn, in order: rgb, depth, semseg, normals, edge, then any other member the
    samples carry (parts, sal, registered ones); only those some sample has."""
    present = {k for s in samples for k in s if k in MEMBERS}
    return [c for c in COLUMNS if c in present] + [m for m in MEMBERS if m in present and m not in COLUMNS]


def _scale_limits(samples: list[dict[str, Any]], column: str) -> tuple[float, float]:
    """The valid (> 0) value range of a ``scalar16`` member over every sample: one scale for the column."""
    valid = [s[column][s[column] > 0] for s in samples if column in s]
    valid = [v for v in valid if v.size]
    if not valid:
        return 0.0, 1.0
    lo, hi = min(float(v.min()) for v in valid), max(float(v.max()) for v in valid)
    return (lo, hi) if hi > lo else (lo, lo + 1e-3)


def grid_figure(
    samples: list[dict[str, Any]],
    keys: list[str] | None = None,
    classes: list[str] | None = None,
    ignore_index: int = 255,
) -> Any:
    """A matplotlib figure with one row per sample, labelled with its key, and a column per member
    (:func:`grid_columns`), each drawn by its kind. ``depth`` (and any other ``scalar16`` member) uses
    one colour scale for every row, from the smallest to the largest valid value of the drawn samples,
    with a colour bar in metres below the column; missing pixels are black. ``semseg`` uses the fixed
    palette, and a legend below names each class present in the drawn samples by its manifest name
    (``classes``), with ``ignore`` for ``ignore_index``. Each panel's label (``Artist.get_label``) is
    ``"<key>/<member>"``."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not samples:
        raise ValueError("no samples to draw")
    keys = list(keys) if keys is not None else [f"sample {i}" for i in range(len(samples))]
    if len(keys) != len(samples):
        raise ValueError(f"{len(keys)} keys for {len(samples)} samples")
    columns = grid_columns(samples)
    h, w = next(s[c] for s in samples for c in columns if c in s).shape[:2]
    panel_w = 1.8
    fig = Figure(figsize=(panel_w * len(columns) + 0.6, panel_w * h / w * len(samples) + 1.6), layout="constrained")
    axes = fig.subplots(len(samples), len(columns), squeeze=False)
    turbo = colormaps["turbo"].with_extremes(bad="black")
    norms = {c: Normalize(*_scale_limits(samples, c)) for c in columns if MEMBERS[c].kind == "scalar16"}
    mappables: dict[str, Any] = {}
    for r, (key, sample) in enumerate(zip(keys, samples, strict=True)):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.set_label(f"{key}/{name}")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize="small")
            if c == 0:
                ax.set_ylabel(key, fontsize="small")
            if name not in sample:
                ax.imshow(np.full((h, w, 3), 40, np.uint8))
            elif name in norms:
                v = sample[name]
                mappables[name] = ax.imshow(np.ma.masked_where(v <= 0, v), cmap=turbo, norm=norms[name])
            else:
                ax.imshow(_panel(sample, name, (h, w)), interpolation="nearest")
    for name, mappable in mappables.items():
        label = "depth (m)" if name == "depth" else name
        fig.colorbar(mappable, ax=[row[columns.index(name)] for row in axes], location="bottom", label=label)
    if "semseg" in columns:
        ids = sorted({int(i) for s in samples if "semseg" in s for i in np.unique(s["semseg"])})
        names = list(classes or [])
        colours = colorize_semseg(np.array(ids, np.uint8))
        handles = [
            Patch(
                facecolor=colours[n] / 255 if i != ignore_index else "black",
                edgecolor="grey",
                label="ignore" if i == ignore_index else (names[i] if i < len(names) else f"class {i}"),
            )
            for n, i in enumerate(ids)
        ]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 6),
            fontsize="small",
            title="semseg classes",
            title_fontsize="small",
        )
    return fig


def draw_grid(
    samples: list[dict[str, Any]],
    path: str | os.PathLike[str],
    keys: list[str] | None = None,
    classes: list[str] | None = None,
    ignore_index: int = 255,
) -> None:
    """Write :func:`grid_figure` as a PNG, through a temporary file renamed into place."""
    fig = grid_figure(samples, keys, classes, ignore_index)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def draw_split_grid(root: str | os.PathLike[str], split: str, count: int, path: str | os.PathLike[str]) -> None:
    """The grid of the first ``count`` samples of ``split``, with their keys and the manifest's class names."""
    root = Path(root)
    m = load_manifest(root)
    keyed = read_keyed_samples(root, split, count)
    if not keyed:
        raise ValueError(f"{root}: split {split!r} has no samples to draw")
    draw_grid([s for _, s in keyed], path, [k for k, _ in keyed], m["classes"], m["ignore_index"])


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
