"""``fusionpipe study``.

The components are imported inside the command, not at the top: they load torch, Ray or MLflow
(seconds), and ``fusionpipe --help`` or a bad option must answer at once.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.output import emit, fail, ray_is_up, shutdown_ray, stdout_to_stderr, tracking_store_errors


@click.command()
@click.option(
    "--spec", "spec_path", type=click.Path(path_type=Path), required=True, help="study spec YAML (configs/studies/)"
)
@click.option(
    "--name",
    default=None,
    help="study name (default: the spec's `name`, else its file stem); re-use one to resume an interrupted study",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a field of every row (repeatable)"
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write table.csv, table.json, table.md and table.png here (default: <storage>/<study name>/)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the study summary and table")
@tracking_store_errors
def study(spec_path: Path, name: str | None, overrides: tuple[str, ...], out: Path | None, as_json: bool) -> None:
    """Train every row of a paper table under several seeds (one Ray Tune grid, one MLflow parent run)
    and write the table: per row the mean and sample std over seeds of each headline metric."""
    from pipelines.config import ConfigError
    from pipelines.study.driver import run_study
    from pipelines.study.table import table_text

    ray_was_up = ray_is_up()
    try:
        with stdout_to_stderr(as_json):
            try:
                summary = run_study(spec_path, list(overrides), name=name, out=out, verbose=0 if as_json else 1)
            finally:
                shutdown_ray(ray_was_up)
    except ConfigError as e:
        fail(str(e), as_json, code=2)
        return
    except KeyboardInterrupt:
        fail(
            "interrupted: re-run the same command to resume the study (finished trials are not re-run)",
            as_json,
            code=130,
        )
        return
    lines = [
        f"study {summary['study']}{' (resumed)' if summary['resumed'] else ''}: "
        f"{summary['finished']}/{summary['num_trials']} trials finished; parent run {summary['parent_run_id']}",
        table_text(summary["table"]),
        *(f"written: {f}" for f in summary["files"]),
    ]
    for e in summary["errored"]:
        lines.append(f"failed: row {e['row']} seed {e['seed']}: {e['error']}")
    if summary["errored"]:
        lines.append("re-run the same command to resume the failed trials")
    emit(summary, as_json, "\n".join(lines))
    if summary["errored"]:
        raise SystemExit(1)
