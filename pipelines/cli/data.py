"""``fusionpipe data build|verify|inspect``.

The components are imported inside each command, not at the top: they load torch, Ray or MLflow
(seconds), and ``fusionpipe --help`` or a bad option must answer at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipelines.cli.output import emit, fail


@click.group()
def data() -> None:
    """Build, verify and inspect shard datasets."""


@data.group()
def build() -> None:
    """Build a shard dataset from a SOURCE (synthetic, nyud-mt, nyud-cen, nyud-mat, folder, cityscapes, ade20k, pascal-context,
    pascal-mt, sunrgbd)."""


_plugin = click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="import MODULE first (repeatable): it registers shard members for new tasks, as a config's plugins list does",
)


def _import_plugins(plugins: tuple[str, ...], as_json: bool) -> None:
    """Import the ``--plugin`` modules, or exit with the error that names the one that failed."""
    from pipelines.config import import_plugins

    try:
        import_plugins(list(plugins))
    except ValueError as e:
        fail(str(e), as_json, code=2)


_PROGRESS_EVERY = "fusionpipe.progress_every"


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = _plugin(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="print one JSON object (the manifest summary)")(fn)
    fn = click.option(
        "--progress-every",
        type=click.FloatRange(min=0, min_open=True),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        expose_value=False,  # every build command has it; _write reads it from the context
        callback=lambda ctx, _param, value: ctx.meta.__setitem__(_PROGRESS_EVERY, value),
        help="when stderr is not a terminal (no progress bar): one progress line every SECONDS",
    )(fn)
    fn = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="processes that load and encode samples; one writer keeps the shards in order, same bytes for any N",
    )(fn)
    fn = click.option(
        "--shard-size", type=click.IntRange(min=1), default=256, show_default=True, help="samples per tar shard"
    )(fn)
    fn = click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="dataset directory to write (replaced atomically)",
    )(fn)
    return fn


def _write(
    source_factory: Callable[[], Any],
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...] = (),
) -> None:
    from datasets.manifest import manifest_digest
    from datasets.sources.base import SourceError
    from datasets.writer import write_dataset

    _import_plugins(plugins, as_json)
    try:
        source = source_factory()
        manifest = write_dataset(
            source,
            out,
            shard_size=shard_size,
            workers=workers,
            log_every=click.get_current_context().meta.get(_PROGRESS_EVERY, 10.0),
        )
    except (SourceError, ValueError, FileNotFoundError, FileExistsError) as e:  # the input or the output path
        fail(str(e), as_json, code=2)
        return
    splits = {k: v["num_samples"] for k, v in manifest["splits"].items()}
    shards = sum(len(v["shards"]) for v in manifest["splits"].values())
    summary = {
        "ok": True,
        "out": str(out),
        "source": manifest["source"],
        "splits": splits,
        "shards": shards,
        "manifest_digest": manifest_digest(out),
    }
    emit(
        summary,
        as_json,
        f"wrote {out}: {splits} in {shards} shard(s); manifest digest {summary['manifest_digest'][:16]}",
    )


@build.command("synthetic")
@_common
@click.option("--num-train", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--num-val", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--height", type=click.IntRange(16, 4096), default=240, show_default=True)
@click.option("--width", type=click.IntRange(16, 4096), default=320, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def build_synthetic(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    num_train: int,
    num_val: int,
    height: int,
    width: int,
    seed: int,
) -> None:
    """Procedural indoor RGB-D scenes with exact semseg, depth, normals and edges."""
    from datasets.sources.synthetic import SyntheticSource

    _write(
        lambda: SyntheticSource(num_train=num_train, num_val=num_val, height=height, width=width, seed=seed),
        out,
        shard_size,
        workers,
        as_json,
        plugins,
    )


@data.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def verify(root: Path, as_json: bool) -> None:
    """Check every shard against the manifest (size, tar structure, keys, sample count, sha256); exit 0
    iff all match, 1 if any does not, 2 if the manifest itself is missing or malformed."""
    from datasets.manifest import ManifestError
    from datasets.shards import verify as verify_ds

    try:
        result = verify_ds(root)
    except ManifestError as e:
        fail(str(e), as_json, code=2)
        return
    human = (
        f"ok: {result.checked} shard(s) match {root / 'manifest.json'}"
        if result.ok
        else f"FAILED: first bad: {result.problems[0]}\n" + "\n".join(f"  {p}" for p in result.problems)
    )
    emit(result.to_dict(), as_json, human)
    if not result.ok:
        raise SystemExit(1)


@data.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--split", default=None, help="only this split")
@click.option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write a PNG grid of the first samples: a row per sample with its key, a column per member, "
    "a class legend and one depth colour bar in metres",
)
@click.option("--grid-samples", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--max-samples", type=click.IntRange(min=1), default=None, help="statistics over at most N samples per split"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@_plugin
def inspect(
    root: Path,
    split: str | None,
    grid: Path | None,
    grid_samples: int,
    max_samples: int | None,
    as_json: bool,
    plugins: tuple[str, ...],
) -> None:
    """Counts, class histogram, depth range; optionally a picture grid. Exit 2 on a malformed manifest,
    a bad shard or member, or an unknown split."""
    from datasets.inspect import draw_split_grid, inspect_dataset
    from datasets.manifest import ManifestError
    from datasets.shards import ShardReadError

    _import_plugins(plugins, as_json)
    try:
        report = inspect_dataset(root, split=split, max_samples=max_samples)
        if grid is not None:
            first = split or next(iter(report["splits"]), None)
            if first is None:
                raise ValueError(f"{root}: the manifest lists no split to draw")
            draw_split_grid(root, first, grid_samples, grid)
            report["grid"] = str(grid)
    except (ManifestError, ShardReadError, ValueError) as e:  # a bad member (ShardFormatError) is a ValueError
        fail(str(e), as_json, code=2)
        return
    lines = [f"{report['name']} ({report['source']}), manifest digest {report['manifest_digest'][:16]}"]
    for name, s in report["splits"].items():
        lines.append(f"  {name}: {s['num_samples']} samples in {s['num_shards']} shard(s)")
        if "depth" in s:
            d = s["depth"]
            lines.append(
                f"    depth {d['min_m']}..{d['max_m']} m (mean {d['mean_m']}), missing {d['missing_fraction']:.2%}"
            )
        if "class_pixels" in s:
            total = sum(s["class_pixels"].values()) or 1
            top = sorted(s["class_pixels"].items(), key=lambda kv: -kv[1])
            lines.append("    classes: " + ", ".join(f"{c} {n / total:.1%}" for c, n in top if n))
    if grid is not None:
        lines.append(f"  grid: {grid}")
    emit(report, as_json, "\n".join(lines))


_root = click.option(
    "--root", type=click.Path(exists=True, file_okay=False), required=True, help="dataset folder on disk"
)
_intrinsics = click.option(
    "--intrinsics",
    default=None,
    metavar="FX,FY,CX,CY",
    help="camera intrinsics in pixels at the stored size (default: NYUDv2's, scaled)",
)


@build.command("nyud-mt")
@_common
@_root
@_intrinsics
@click.option(
    "--normals-flip", default="z", show_default=True, help="axes of the stored normals to negate (subset of xyz)"
)
@click.option(
    "--check-normals/--no-check-normals",
    default=True,
    show_default=True,
    help="compare stored normals with normals from depth and stop on a flipped axis",
)
def build_nyud_mt(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
    intrinsics: str | None,
    normals_flip: str,
    check_normals: bool,
) -> None:
    """NYUD_MT layout (MTI-Net's official code): images/, segmentation/, depth/, normals/, edge/, gt_sets/."""
    from datasets.sources.nyud_mt import NyudMtSource

    _write(
        lambda: NyudMtSource(root=root, intrinsics=intrinsics, normals_flip=normals_flip, check_normals=check_normals),
        out,
        shard_size,
        workers,
        as_json,
        plugins,
    )


@build.command("nyud-cen")
@_common
@_root
@_intrinsics
@click.option("--train-list", default=None, help="split list (default ROOT/train.txt)")
@click.option("--val-list", default=None, help="split list (default ROOT/val.txt)")
@click.option("--depth-unit", type=float, default=0.0002, show_default=True, help="metres per depth PNG unit (1/5000)")
@click.option("--edges/--no-edges", default=True, show_default=True, help="derive edge.png from the masks")
def build_nyud_cen(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
    intrinsics: str | None,
    train_list: str | None,
    val_list: str | None,
    depth_unit: float,
    edges: bool,
) -> None:
    """CEN's layout: rgb/, depth/, masks/ PNGs listed in train.txt / val.txt."""
    from datasets.sources.nyud_cen import NyudCenSource

    _write(
        lambda: NyudCenSource(
            root=root,
            train_list=train_list,
            val_list=val_list,
            depth_unit=depth_unit,
            edges=edges,
            intrinsics=intrinsics,
        ),
        out,
        shard_size,
        workers,
        as_json,
        plugins,
    )


@build.command("nyud-mat")
@_common
@_intrinsics
@click.option("--mat", type=click.Path(exists=True, dir_okay=False), required=True, help="nyu_depth_v2_labeled.mat")
@click.option("--splits-mat", type=click.Path(exists=True, dir_okay=False), required=True, help="splits.mat")
@click.option(
    "--label-map",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML/JSON with classes and mapping raw id -> class id (894 -> 40 or 13)",
)
@click.option("--raw-depth/--no-raw-depth", default=False, show_default=True, help="use rawDepths (with holes)")
@click.option(
    "--normals-step",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="pixel step of the central differences for normals from depth",
)
def build_nyud_mat(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    intrinsics: str | None,
    mat: str,
    splits_mat: str,
    label_map: str | None,
    raw_depth: bool,
    normals_step: int,
) -> None:
    """The official labeled release (MATLAB v7.3) with a label mapping; normals and edges derived."""
    from datasets.sources.nyud_mat import NyudMatSource

    _write(
        lambda: NyudMatSource(
            mat=mat,
            splits_mat=splits_mat,
            label_map=label_map,
            raw_depth=raw_depth,
            normals_step=normals_step,
            intrinsics=intrinsics,
        ),
        out,
        shard_size,
        workers,
        as_json,
        plugins,
    )


@build.command("folder")
@_common
@_root
@_intrinsics
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML with class names (required when semseg/ exists)",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="hash-based validation share when ROOT/splits/ is absent",
)
def build_folder(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
    intrinsics: str | None,
    classes: str | None,
    val_fraction: float,
) -> None:
    """images/ plus optional depth/, semseg/, normals/, edge/ matched by file stem."""
    from datasets.sources.folder import FolderSource

    _write(
        lambda: FolderSource(root=root, classes=classes, val_fraction=val_fraction, intrinsics=intrinsics),
        out,
        shard_size,
        workers,
        as_json,
        plugins,
    )


@build.command("cityscapes")
@_common
@_root
@click.option(
    "--depth/--no-depth",
    default=False,
    show_default=True,
    help="add depth.png from disparity/ and camera/ (depth = baseline × fx / disparity)",
)
def build_cityscapes(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
    depth: bool,
) -> None:
    """Cityscapes fine labels: leftImg8bit/ and gtFine/ (label ids -> the 19 train ids)."""
    from datasets.sources.cityscapes import CityscapesSource

    _write(lambda: CityscapesSource(root=root, depth=depth), out, shard_size, workers, as_json, plugins)


@build.command("ade20k")
@_common
@_root
def build_ade20k(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
) -> None:
    """ADE20K SceneParsing (ADEChallengeData2016): images/ and annotations/, 150 classes."""
    from datasets.sources.ade20k import Ade20kSource

    _write(lambda: Ade20kSource(root=root), out, shard_size, workers, as_json, plugins)


@build.command("pascal-context")
@_common
@_root
@click.option(
    "--labels",
    default="SegmentationClassContext",
    show_default=True,
    help="folder of 59-class label PNGs under VOC2010/",
)
def build_pascal_context(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
    labels: str,
) -> None:
    """PASCAL-Context 59: VOC2010 JPEGImages/, 59-class label PNGs and ImageSets/SegmentationContext/."""
    from datasets.sources.pascal_context import PascalContextSource

    _write(lambda: PascalContextSource(root=root, labels=labels), out, shard_size, workers, as_json, plugins)


@build.command("pascal-mt")
@_common
@_root
def build_pascal_mt(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
) -> None:
    """PASCAL_MT (MTI-Net's PASCAL-Context multi-task set): semseg (21), human parts (7), saliency, normals, edges."""
    from datasets.sources.pascal_mt import PascalMtSource

    _write(lambda: PascalMtSource(root=root), out, shard_size, workers, as_json, plugins)


@build.command("sunrgbd")
@_common
@_root
@_intrinsics
@click.option("--train-list", default=None, help="split list (default ROOT/train.txt)")
@click.option("--test-list", default=None, help="split list (default ROOT/test.txt)")
@click.option(
    "--label-base",
    type=click.IntRange(0, 1),
    default=0,
    show_default=True,
    help="0: mask ids 0..36 and 255 = ignore (CEN); 1: 0 = void and 1..37 (the SUN RGB-D toolbox)",
)
@click.option(
    "--depth-encoding",
    type=click.Choice(["sunrgbd", "linear"]),
    default="sunrgbd",
    show_default=True,
    help="sunrgbd: the toolbox's PNGs (value rotated by 3 bits, millimetres); linear: value × --depth-unit",
)
@click.option(
    "--depth-unit", type=float, default=0.001, show_default=True, help="metres per PNG unit (linear encoding)"
)
@click.option("--edges/--no-edges", default=False, show_default=True, help="derive edge.png from the masks")
def build_sunrgbd(
    out: Path,
    shard_size: int,
    workers: int,
    as_json: bool,
    plugins: tuple[str, ...],
    root: str,
    intrinsics: str | None,
    train_list: str | None,
    test_list: str | None,
    label_base: int,
    depth_encoding: str,
    depth_unit: float,
    edges: bool,
) -> None:
    """SUN RGB-D 37 classes in CEN's layout: rgb/, depth/, masks/ listed in train.txt / test.txt."""
    from datasets.sources.sunrgbd import SunrgbdSource

    _write(
        lambda: SunrgbdSource(
            root=root,
            train_list=train_list,
            test_list=test_list,
            label_base=label_base,
            depth_encoding=depth_encoding,
            depth_unit=depth_unit,
            edges=edges,
            intrinsics=intrinsics,
        ),
        out,
        shard_size,
        workers,
        as_json,
        plugins,
    )
