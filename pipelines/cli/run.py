"""``fusionpipe train`` and ``fusionpipe evaluate``.

The components are imported inside each command, not at the top: they load torch, Ray or MLflow
(seconds), and ``fusionpipe --help`` or a bad option must answer at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from pipelines.cli.output import emit, fail, ray_is_up, shutdown_ray, stdout_to_stderr, tracking_store_errors


def _load(config: Path, overrides: tuple[str, ...], as_json: bool):
    from pipelines.config import ConfigError, load_config

    try:
        return load_config(config, list(overrides))
    except ConfigError as e:
        fail(str(e), as_json, code=2)


@click.command()
@click.option("--config", type=click.Path(path_type=Path), required=True, help="experiment YAML")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@click.option("--run-name", default=None, help="Ray/MLflow run name; re-use one to resume it")
@click.option("--summary", default=None, type=click.Path(dir_okay=False), help="also write the summary JSON here")
@click.option(
    "--history",
    default=None,
    type=click.Path(dir_okay=False),
    help="write every per-epoch metric as CSV here (for dvc plots)",
)
@click.option(
    "--best-checkpoint",
    "best_to",
    default=None,
    type=click.Path(file_okay=False),
    help="also copy the best checkpoint into this directory (the main job's DVC output outputs/best)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the run summary")
@tracking_store_errors
def train(
    config: Path,
    overrides: tuple[str, ...],
    run_name: str | None,
    summary: str | None,
    history: str | None,
    best_to: str | None,
    as_json: bool,
) -> None:
    """Train with Ray Train; prints the MLflow run id and the best checkpoint."""
    from pipelines.checkpoints import CheckpointError
    from pipelines.config import ConfigError
    from pipelines.track.run_record import write_outputs
    from pipelines.train.driver import run_training
    from pipelines.train.steps import NonFiniteLossError

    cfg = _load(config, overrides, as_json)
    summary_path = summary
    ray_was_up = ray_is_up()
    try:
        with stdout_to_stderr(as_json):  # Ray's and the workers' output must not corrupt the JSON
            try:
                summary = run_training(cfg, run_name=run_name)
                write_outputs(summary, summary_path, history, tracking_uri=cfg.resolved_paths().tracking.uri)
                if best_to:
                    from pipelines.storage import copy_checkpoint_to
                    from pipelines.track.redact import restore_secrets

                    storage = cfg.resolved_paths().checkpoint.storage_path
                    copy_checkpoint_to(restore_secrets(summary["best_checkpoint"], storage), Path(best_to))
            finally:
                shutdown_ray(ray_was_up)  # while stdout is still redirected: Ray flushes worker output
    except (ConfigError, CheckpointError) as e:
        fail(str(e), as_json, code=2)
        return
    except NonFiniteLossError as e:
        fail(f"{e}; the MLflow run is marked FAILED, the checkpoints of the epochs before it are kept", as_json, code=1)
        return
    except KeyboardInterrupt:
        fail("interrupted: MLflow run marked KILLED; re-run with the same --run-name to resume", as_json, code=130)
        return
    metric, value = next(iter(summary["best_metric"].items()))
    human = "\n".join(
        [
            f"run {summary['run_name']} ({'resumed, ' if summary['resumed'] else ''}{summary['epochs']} epochs)",
            f"  MLflow run id:    {summary['mlflow_run_id']} (experiment {summary['experiment']!r})",
            f"  best checkpoint:  {summary['best_checkpoint']} ({metric} = {value:.4f})"
            if value is not None
            else f"  best checkpoint:  {summary['best_checkpoint']}",
            "  final metrics:    " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(summary["final_metrics"].items())),
            f"  open in the UI:   {summary['tracking_uri']} (the tracking server)"
            if summary["tracking_uri"].startswith(("http://", "https://"))
            else f"  open in the UI:   mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1",
        ]
    )
    emit(summary, as_json, human)


def _best_from_summary(path: str, as_json: bool) -> str:
    """The best checkpoint a ``train --summary`` file names."""
    import json

    try:
        best = json.loads(Path(path).read_text()).get("best_checkpoint")
    except (OSError, ValueError, AttributeError) as e:  # unreadable, not JSON, not an object
        fail(
            f"--summary {path}: not a train summary (the JSON object `fusionpipe train --summary` writes): {e}",
            as_json,
            code=2,
        )
    if not isinstance(best, str) or not best:
        fail(f"--summary {path}: no 'best_checkpoint' in it (the run may have produced no checkpoint)", as_json, code=2)
    return best


def _parse_scales(value: str | None, as_json: bool) -> list[float] | None:
    """``--scales 0.75,1.0,1.25`` -> floats > 0, or exit 2 naming the option."""
    if value is None:
        return None
    try:
        scales = [float(v) for v in value.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        fail(f"--scales {value!r}: expected numbers > 0 separated by commas, e.g. 0.75,1.0,1.25", as_json, code=2)
    return scales


def _parse_window(value: str | None, cfg: Any, as_json: bool) -> tuple[int, int] | None:
    """``--window H,W`` or ``--window crop`` (the config's data.augment.crop), or exit 2 naming it."""
    if value is None:
        return None
    if value == "crop":
        crop = cfg.data.augment.crop
        if crop is None:
            fail("--window crop: the config has no data.augment.crop; give the window as H,W", as_json, code=2)
        return int(crop[0]), int(crop[1])
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        fail(f"--window {value!r}: expected H,W in pixels (two whole numbers > 0) or 'crop'", as_json, code=2)
    return int(parts[0]), int(parts[1])


@click.command()
@click.option("--config", type=click.Path(path_type=Path), required=True, help="experiment YAML (data, model)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--checkpoint", default=None, help="checkpoint directory (model.pt + meta.json)")
@click.option(
    "--run-id",
    default=None,
    help="MLflow run id, or a registered model models:/NAME/VERSION or models:/NAME@ALIAS: evaluates its best checkpoint",
)
@click.option(
    "--summary",
    "summary_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="a `train --summary` JSON: evaluates the best checkpoint it names",
)
@click.option("--split", default=None, help="the split to score  [default: the config's data.val_split]")
@click.option(
    "--baseline-run", "baseline_runs", multiple=True, help="single-task reference run id (repeatable): adds delta_m"
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the metrics JSON here"
)
@click.option(
    "--trivial-baselines",
    is_flag=True,
    help="also score majority-class semseg and mean depth, and the model's ratios to them",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (the GPU when there is one), cpu, cuda or cuda:N; bf16 autocast on GPU with train.amp",
)
@click.option(
    "--log-to-run",
    "log_run",
    is_flag=True,
    help="also log eval/<split>/* metrics and the pictures into the MLflow run that trained the checkpoint",
)
@click.option(
    "--scales",
    default=None,
    metavar="S1,S2,...",
    help="multi-scale inference: the mean prediction over these image scales, e.g. 0.75,1.0,1.25",
)
@click.option("--flip", is_flag=True, help="also predict on the mirrored image and average (flip inference)")
@click.option(
    "--window",
    default=None,
    metavar="H,W|crop",
    help="sliding-window inference with windows of H×W pixels (crop: the config's data.augment.crop)",
)
@click.option(
    "--stride-ratio",
    type=float,
    default=0.667,
    show_default=True,
    help="sliding-window stride as a fraction of the window (the official ANN code's 0.667)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@tracking_store_errors
def evaluate(
    config: Path,
    overrides: tuple[str, ...],
    checkpoint: str | None,
    run_id: str | None,
    summary_file: str | None,
    split: str | None,
    baseline_runs: tuple[str, ...],
    out: Path | None,
    trivial_baselines: bool,
    device: str,
    log_run: bool,
    scales: str | None,
    flip: bool,
    window: str | None,
    stride_ratio: float,
    as_json: bool,
) -> None:
    """Evaluate a checkpoint on a split with exact metrics, per class too; optionally with multi-scale,
    flip and sliding-window inference (docs/training.md)."""
    from pipelines.analysis.evaluate import run_evaluate
    from pipelines.checkpoints import CheckpointError
    from pipelines.config import ConfigError

    cfg = _load(config, overrides, as_json)
    if summary_file is not None:
        if checkpoint or run_id:
            fail("give one of --checkpoint, --run-id and --summary", as_json, code=2)
        checkpoint = _best_from_summary(summary_file, as_json)
    try:
        result = run_evaluate(
            cfg,
            checkpoint=checkpoint,
            run_id=run_id,
            split=split,
            baseline_runs=list(baseline_runs),
            out=out,
            baselines=trivial_baselines,
            device=device,
            log_run=log_run,
            scales=_parse_scales(scales, as_json),
            flip=flip,
            window=_parse_window(window, cfg, as_json),
            stride_ratio=stride_ratio,
        )
    except (ConfigError, CheckpointError) as e:
        fail(str(e), as_json, code=2)
        return
    lines = [
        f"{result['model']} epoch {result['epoch']} on {result['split']} ({result['num_samples']} samples, "
        f"{result['device']}):"
    ]
    lines += [f"  {k:28s} {v:.4f}" for k, v in sorted(result["metrics"].items())]
    for k, v in result.get("trivial_baselines", {}).items():
        lines.append(f"  trivial baseline {k:19s} {v:.4f}")
    for k, v in result.get("learned", {}).items():
        lines.append(f"  {k:28s} {v:.3f}")
    if "delta_m" in result:
        lines.append(f"  delta_m vs {len(baseline_runs)} reference run(s): {result['delta_m']:+.2f}%")
    for name, row in result.get("per_class", {}).items():
        values = "  ".join(f"{k} {row[k]:.4f}" for k in ("iou", "depth_rmse", "normals_mean") if k in row)
        lines.append(f"  class {name:22s} {values}")
    if out:
        beside = (
            f" (pictures beside it: {out.stem}.confusion.png, {out.stem}.per_class.png)"
            if "confusion" in result
            else ""
        )
        lines.append(f"  written to {out}{beside}")
    if "logged_to_run" in result:
        lines.append(
            f"  logged {result['logged_metrics']} eval/ metrics and the pictures to MLflow run {result['logged_to_run']}"
        )
    emit(result, as_json, "\n".join(lines))
