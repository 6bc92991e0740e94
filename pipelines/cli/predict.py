"""``fusionpipe predict``: a trained model's outputs on a folder of images or a shard split (docs/predict.md).

The work is in :mod:`pipelines.analysis.predict`, imported inside the command (it loads torch and MLflow).
"""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.output import emit, fail, tracking_store_errors


@click.command()
@click.option(
    "--model",
    "model_ref",
    required=True,
    help="checkpoint directory, MLflow run id (its best checkpoint), models:/NAME/VERSION or models:/NAME@ALIAS",
)
@click.option("--images", type=click.Path(path_type=Path), default=None, help="folder of *.png / *.jpg images")
@click.option(
    "--depth-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="folder of depth PNGs named like the images (16-bit, millimetres)  [default: <stem>.depth.png beside each image]",
)
@click.option("--shards", type=click.Path(path_type=Path), default=None, help="a dataset (manifest.json + shards)")
@click.option("--split", default="val", show_default=True, help="the split of --shards")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="predict at most this many samples")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="output folder")
@click.option("--tracking-uri", default=None, help="MLflow store of a run id or models:/ URI  [default: the project's]")
@click.option(
    "--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu, cuda or cuda:N"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@tracking_store_errors
def predict(
    model_ref: str,
    images: Path | None,
    depth_dir: Path | None,
    shards: Path | None,
    split: str,
    limit: int | None,
    out: Path,
    tracking_uri: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Run a trained model on images or a shard split; write coloured per-task outputs and a grid."""
    from pipelines.analysis.predict import run_predict
    from pipelines.checkpoints import CheckpointError
    from pipelines.config import ConfigError, resolve_tracking_uri

    try:
        result = run_predict(
            model_ref,
            out,
            resolve_tracking_uri(tracking_uri),
            images=images,
            depth_dir=depth_dir,
            shards=shards,
            split=split,
            limit=limit,
            device=device,
        )
    except (ConfigError, CheckpointError) as e:
        fail(str(e), as_json, code=2)
        return
    human = (
        f"{result['model_name']} ({result['model']}) on {result['input']}: {result['num_samples']} sample(s), "
        f"tasks {', '.join(result['tasks'])}\n  written to {result['out']}"
    )
    emit(result, as_json, human)
