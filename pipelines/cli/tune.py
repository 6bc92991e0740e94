"""``fusionpipe tune``.

The components are imported inside each command, not at the top: they load torch, Ray or MLflow
(seconds), and ``fusionpipe --help`` or a bad option must answer at once.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.output import emit, fail, ray_is_up, shutdown_ray, stdout_to_stderr, tracking_store_errors


@click.command()
@click.option("--config", type=click.Path(path_type=Path), required=True, help="base experiment YAML")
@click.option("--sweep", type=click.Path(path_type=Path), required=True, help="sweep spec YAML (configs/sweeps/)")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a base config field (repeatable)"
)
@click.option(
    "--name",
    default=None,
    help="sweep name (default: the sweep's `name`, else its file stem); re-use one to resume an interrupted sweep",
)
@click.option(
    "--best-config",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the best trial's config here (default: <storage>/<name>/best_config.yaml)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the sweep summary")
@tracking_store_errors
def tune(
    config: Path, sweep: Path, overrides: tuple[str, ...], name: str | None, best_config: Path | None, as_json: bool
) -> None:
    """Sweep hyper-parameters with Ray Tune; every trial is a Ray Train run nested in one MLflow run."""
    from pipelines.config import ConfigError
    from pipelines.tune.driver import run_tune

    ray_was_up = ray_is_up()
    try:
        # Ray Tune and the workers print progress on stdout; with --json stdout holds only the result.
        with stdout_to_stderr(as_json):
            try:
                summary = run_tune(
                    config, sweep, list(overrides), name=name, best_config_out=best_config, verbose=0 if as_json else 1
                )
            finally:
                shutdown_ray(ray_was_up)  # while stdout is still redirected: Ray flushes worker output
    except ConfigError as e:
        fail(str(e), as_json, code=2)
        return
    except KeyboardInterrupt:
        fail(
            "interrupted: re-run the same command to resume the sweep (finished trials are not re-run)",
            as_json,
            code=130,
        )
        return
    lines = [
        f"sweep {summary['sweep']} ({'resumed, ' if summary['resumed'] else ''}{summary['scheduler']}): "
        f"{summary['num_trials']} trials, {summary['trial_epochs']} trial-epochs",
        f"  {'trial':14s} {'epochs':>6s} {summary['metric']:>20s}  params",
    ]
    for row in summary["trials"]:
        value = (
            "error"
            if row["status"] == "ERROR"
            else (f"{row['best_metric']:.4f}" if row["best_metric"] is not None else "-")
        )
        mark = " (stopped early)" if row["early_stopped"] else ""
        lines.append(f"  {row['trial_id']:14s} {row['epochs']:6d} {value:>20s}  {row['params']}{mark}")
    best = summary["best"]
    if best:
        lines += [
            f"best trial {best['trial_id']}: {summary['metric']} = {best['metric'][summary['metric']]:.4f} "
            f"(epoch {best['epoch']})",
            f"  MLflow run id:  {best['mlflow_run_id']} (parent {summary['parent_run_id']})",
            f"  checkpoint:     {best['checkpoint']}",
            f"  best config:    {summary['best_config_path']}  (fusionpipe train --config ...)",
        ]
    if summary["errored"]:
        lines.append(
            f"{len(summary['errored'])} trial(s) failed: {', '.join(summary['errored'])}; "
            "re-run the same command to resume them"
        )
    emit(summary, as_json, "\n".join(lines))
    if summary["errored"]:
        raise SystemExit(1)
