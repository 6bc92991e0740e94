"""``fusionpipe compare``: a table of MLflow runs, their differing params, metrics and Δm.

The components are imported inside each command, not at the top: they load torch, Ray or MLflow
(seconds), and ``fusionpipe --help`` or a bad option must answer at once.
"""

from __future__ import annotations

import click

from pipelines.cli.output import emit, fail, tracking_store_errors


@click.command()
@click.option("--experiment", default=None, help="compare every run of this MLflow experiment")
@click.option("--run-ids", "run_ids", multiple=True, metavar="ID", help="compare these runs (repeatable)")
@click.option(
    "--sweep",
    default=None,
    metavar="PARENT_RUN_ID",
    help="compare the trials of a `fusionpipe tune` sweep (its parent run id)",
)
@click.option(
    "--study",
    default=None,
    metavar="RUN_ID_OR_NAME",
    help="print the table of a `fusionpipe study` (its parent run id, or the study name: its newest run)",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store (default: MLFLOW_TRACKING_URI or sqlite:///<project root>/mlflow.db)",
)
@click.option(
    "--metric",
    default=None,
    help="the metric that heads the comparison, e.g. val/semseg/miou (default: the first task's headline metric); "
    "always shown",
)
@click.option(
    "--metrics",
    "metric_globs",
    multiple=True,
    metavar="GLOB",
    help="show the metrics matching GLOB, e.g. 'val/semseg/*' or 'train/loss/*' (repeatable; default: each task's "
    "headline metric and the checkpoint metric)",
)
@click.option("--all-metrics", is_flag=True, help="show every val/ metric")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="compare the runs with this status: FINISHED (default), RUNNING, FAILED, KILLED, SCHEDULED, or any "
    "(repeatable; runs given by --run-ids are always compared)",
)
@click.option(
    "--filter",
    "filter_string",
    default=None,
    metavar="FILTER",
    help="MLflow search filter string for the runs of --experiment or --sweep, e.g. 'params.`optim.lr` = \"0.01\"'",
)
@click.option(
    "--baseline-runs",
    "baseline_runs",
    multiple=True,
    metavar="ID",
    help="single-task reference run (repeatable): adds delta_m",
)
@click.option(
    "--baseline-tag",
    default=None,
    metavar="KEY=VALUE",
    help="reference runs are the compared runs with this tag, e.g. fusionpipe.model=single_task",
)
@click.option(
    "--best/--no-best",
    "best",
    default=None,
    help="fetch metric history for best values (default: only for at most 50 runs)",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="write compare.csv, compare.json, curves.png and bars.png here",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="import MODULE first (repeatable): the tasks it registers enter delta_m",
)
@tracking_store_errors
def compare(
    experiment: str | None,
    run_ids: tuple[str, ...],
    sweep: str | None,
    study: str | None,
    tracking_uri: str | None,
    metric: str | None,
    metric_globs: tuple[str, ...],
    all_metrics: bool,
    statuses: tuple[str, ...],
    filter_string: str | None,
    baseline_runs: tuple[str, ...],
    baseline_tag: str | None,
    best: bool | None,
    out: str | None,
    as_json: bool,
    plugins: tuple[str, ...],
) -> None:
    """Compare MLflow runs: params that differ, final and best val metrics, training time, data version."""
    from pipelines.analysis.compare import DEFAULT_STATUSES, CompareError, markdown_table
    from pipelines.analysis.compare import compare as run_compare
    from pipelines.config import ConfigError, check_tracking_uri, import_plugins, resolve_tracking_uri

    try:
        import_plugins(list(plugins))
    except ValueError as e:
        fail(str(e), as_json, code=2)
        return
    try:
        if tracking_uri is not None:
            try:
                check_tracking_uri(tracking_uri)
            except ValueError as e:
                raise ConfigError(f"--tracking-uri {tracking_uri!r}: {e}") from None
        uri = resolve_tracking_uri(tracking_uri)
    except ConfigError as e:
        fail(str(e), as_json, code=2)
        return
    if sum([bool(experiment), bool(run_ids), bool(sweep), bool(study)]) != 1:
        fail("give exactly one of --experiment, --run-ids, --sweep and --study", as_json, code=2)
    if study:
        _study_table(uri, study, as_json)
        return
    if baseline_runs and baseline_tag:
        fail("give at most one of --baseline-runs and --baseline-tag", as_json, code=2)
    if metric_globs and all_metrics:
        fail("give at most one of --metrics and --all-metrics", as_json, code=2)
    if "any" in (s.lower() for s in statuses) and len(statuses) > 1:
        fail("--status any already takes every status; give it alone", as_json, code=2)
    try:
        result = run_compare(
            uri,
            experiment=experiment,
            run_ids=run_ids,
            metric=metric,
            baseline_runs=baseline_runs,
            baseline_tag=baseline_tag,
            out=out,
            best=best,
            sweep=sweep,
            metrics=metric_globs,
            all_metrics=all_metrics,
            statuses=None if [s.lower() for s in statuses] == ["any"] else (statuses or DEFAULT_STATUSES),
            filter_string=filter_string,
        )
    except CompareError as e:
        fail(str(e), as_json, code=2)
        return
    groups = result["data_versions"]
    if len(groups) > 1 and not as_json:
        detail = "; ".join(f"{d[:12]}: {len(ids)} run(s)" for d, ids in groups.items())
        click.echo(
            f"warning: runs used {len(groups)} different data versions ({detail}); "
            "their metrics are not directly comparable",
            err=True,
        )
    if result["left_out"] and not as_json:
        found = ", ".join(f"{n} {s}" for s, n in result["left_out"].items())
        click.echo(
            f"note: {sum(result['left_out'].values())} run(s) left out by their status ({found}); "
            "--status any compares them too",
            err=True,
        )
    if result.get("delta_m_left_out") and not as_json:
        click.echo(
            f"warning: task(s) {', '.join(result['delta_m_left_out'])} are not registered here, so "
            "delta_m leaves them out; pass --plugin MODULE for the module that registers them",
            err=True,
        )
    lines = [markdown_table(result)]
    for rid, entry in result.get("delta_m", {}).items():
        terms = ", ".join(f"{k} {v:+.2f}%" for k, v in entry["terms"].items())
        lines.append(f"delta_m {rid}: {entry['delta_m']:+.2f}% ({terms})")
    lines += [f"written: {f}" for f in result["files"]]
    emit(result, as_json, "\n".join(lines))


def _study_table(uri: str, ref: str, as_json: bool) -> None:
    """``compare --study``: the table logged to a study's parent run, as markdown or JSON."""
    from pipelines.study.table import StudyTableError, read_study_table, table_text

    try:
        table = read_study_table(uri, ref)
    except StudyTableError as e:
        fail(str(e), as_json, code=2)
        return
    emit(table, as_json, f"{table_text(table)}\nparent run: {table['parent_run_id']}")
