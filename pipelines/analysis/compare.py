"""Compare MLflow runs: one row per run, the params that differ, final and best values of the chosen
metrics, training time, data version, the code versions that differ, and Δm of multi-task runs against
single-task references.

Which runs: the FINISHED runs of an experiment or sweep unless other statuses are asked for, narrowed by
an MLflow search filter string if given; run ids given one by one are compared whatever their status.
Which metrics: by default each task's headline metric (the one it enters Δm with) and each run's
checkpoint metric (param ``checkpoint.metric``); glob patterns or every ``val/`` metric on request.

Δm follows MTI-Net (Vandenhende et al. ECCV 2020, section 4.1; Maninis et al. CVPR 2019):
``Δm = 100/T * sum_t (-1)^{l_t} (M_m,t - M_b,t) / M_b,t``. Besides the total (computed by
:func:`fusion.metrics.multitask.delta_m`) each task's term ``100 (-1)^{l_t} (M_m,t - M_b,t) / M_b,t``
is reported, so that ``delta_m`` is the mean of ``terms``. The paper takes the baseline from one
single-task network per task; here the baseline is the union of the reference runs' final ``val/``
metrics, and two references reporting the same metric are an error rather than silently merged.

Requests: runs come from ``search_runs`` one page at a time (the run objects carry params, tags and
each metric's latest value). Metric history, needed only for best values and curves, costs one
request per (run, metric) and is fetched for ``val/`` metrics only when ``best`` is asked or
there are at most :data:`AUTO_BEST_MAX_RUNS` runs.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from datasets.manifest import write_atomic
from fusion.metrics.multitask import DELTA_M_DIRECTIONS, delta_m
from fusion.tasks import TASKS
from pipelines.jsonio import dumps
from pipelines.track.redact import redact_value
from pipelines.track.tracker import run_not_found

AUTO_BEST_MAX_RUNS = 50
PAGE_SIZE = 1000
# Last path component of metrics where lower is better (normals "mean"/"median" are angles).
LOWER_LEAVES = ("rmse", "log_rmse", "abs_rel", "mean", "median")
DIGEST_TAG = "data.manifest_digest"
SHORT_DIGEST = 12
#: MLflow's run statuses; ``compare`` keeps the FINISHED runs of an experiment or sweep by default.
RUN_STATUSES = ("FINISHED", "RUNNING", "SCHEDULED", "FAILED", "KILLED")
DEFAULT_STATUSES = ("FINISHED",)
CHECKPOINT_METRIC_PARAM = "checkpoint.metric"
#: Bar and curve panels: at most this many per row of a figure (a task with more metrics wraps).
MAX_PANELS_PER_ROW = 4
NAME_CHARS = 18


class CompareError(ValueError):
    """Bad input to ``compare``: unknown experiment, run id or metric, or unusable baselines."""


def require_store(uri: str, error: type[Exception] = CompareError) -> None:
    """Refuse a sqlite tracking store whose file does not exist, with ``error`` naming the path: on its
    first request MLflow creates the file, its directories and an empty database, and a command that
    only reads must not leave a new store behind a typo. Other stores are left to MLflow (a server
    that does not answer is exit 3)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    if not path.is_file():
        raise error(
            f"no MLflow tracking store at {path} (tracking URI {uri}): the file does not exist, and reading "
            "does not create one; check the path, or record a run there first (fusionpipe train)"
        )


def metric_direction(key: str) -> str:
    """'higher' or 'lower' for a metric key with or without the ``val/`` prefix."""
    name = key[len("val/") :] if key.startswith("val/") else key
    if name in DELTA_M_DIRECTIONS:
        return DELTA_M_DIRECTIONS[name]
    leaf = name.rsplit("/", 1)[-1]
    return "lower" if leaf in LOWER_LEAVES or "loss" in name else "higher"


def fetch_runs(
    client: Any,
    experiment: str | None = None,
    run_ids: Iterable[str] = (),
    sweep: str | None = None,
    filter_string: str | None = None,
) -> list[Any]:
    """All training runs of ``experiment`` (oldest first; a sweep's parent run holds no epochs and is
    left out), the runs ``run_ids`` in the given order, or the trials of the sweep whose parent run is
    ``sweep``; ``filter_string`` (an MLflow search filter) narrows an experiment's or a sweep's runs."""
    from mlflow.exceptions import MlflowException

    run_ids = list(run_ids)
    if sum([experiment is not None, bool(run_ids), sweep is not None]) != 1:
        raise CompareError("give exactly one of an experiment name, run ids and a sweep's parent run id")
    if filter_string and run_ids:
        raise CompareError("--filter narrows the runs of an experiment or a sweep, not runs given by id")
    if sweep is not None:
        try:
            parent = client.get_run(sweep)
        except MlflowException as e:
            if not run_not_found(e):
                raise
            raise CompareError(f"unknown run id {sweep!r}") from e
        if parent.data.tags.get("fusionpipe.kind") != "sweep":
            raise CompareError(f"run {sweep!r} is not a sweep's parent run (fusionpipe tune creates those)")
        trials = f"tags.mlflow.parentRunId = '{sweep}'"
        return _search_all(
            client, parent.info.experiment_id, f"{trials} and {filter_string}" if filter_string else trials
        )
    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                runs.append(client.get_run(rid))
            except MlflowException as e:
                if not run_not_found(e):
                    raise
                raise CompareError(f"unknown run id {rid!r}") from e
        return runs
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"unknown experiment {experiment!r} (existing: {', '.join(names) or 'none'})")
    runs = _search_all(client, exp.experiment_id, filter_string or "")
    return [r for r in runs if r.data.tags.get("fusionpipe.kind") != "sweep"]


def _search_all(client: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    from mlflow.exceptions import MlflowException

    runs, token = [], None
    while True:
        try:
            page = client.search_runs(
                [experiment_id],
                filter_string=filter_string,
                max_results=PAGE_SIZE,
                page_token=token,
                order_by=["attributes.start_time ASC"],
            )
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise CompareError(f"filter {filter_string!r} is not a valid MLflow search filter: {e.message}") from e
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def differing_params(runs: list[Any]) -> list[str]:
    """Param keys whose value (a missing param counts as a value) is not the same in every run."""
    keys = sorted({k for r in runs for k in r.data.params})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def is_code_tag(key: str) -> bool:
    """Tags that name the code a run ran: the git commit and dirty flag, and each plugin's hash."""
    return key in ("git.commit", "git.dirty") or (key.startswith("plugin.") and key.endswith(".sha256"))


def differing_code(runs: list[Any]) -> list[str]:
    """Code tags (:func:`is_code_tag`) whose value (a missing tag counts as a value) is not the same in
    every run: the runs did not all run the same code."""
    keys = sorted({k for r in runs for k in r.data.tags if is_code_tag(k)})
    return [k for k in keys if len({r.data.tags.get(k) for r in runs}) > 1]


def val_metrics(runs: list[Any]) -> list[str]:
    return sorted({k for r in runs for k in r.data.metrics if k.startswith("val/")})


def keep_statuses(runs: list[Any], statuses: Iterable[str] | None) -> tuple[list[Any], dict[str, int]]:
    """The runs whose status is in ``statuses`` (``None``: every run), and how many of each other status
    were left out."""
    if statuses is None:
        return runs, {}
    wanted = {s.upper() for s in statuses}
    unknown = sorted(wanted - set(RUN_STATUSES))
    if unknown:
        raise CompareError(f"unknown run status {', '.join(unknown)} (statuses: {', '.join(RUN_STATUSES)}, or any)")
    left_out: dict[str, int] = {}
    for r in runs:
        if r.info.status not in wanted:
            left_out[r.info.status] = left_out.get(r.info.status, 0) + 1
    return [r for r in runs if r.info.status in wanted], dict(sorted(left_out.items()))


def headline_metrics(runs: list[Any]) -> list[str]:
    """Each registered task's headline metric (``val/<task>/<metric>`` of DELTA_M_DIRECTIONS) and each
    run's checkpoint metric (param ``checkpoint.metric``), those that some run logged."""
    wanted = {f"val/{k}" for k in DELTA_M_DIRECTIONS} | {
        r.data.params[CHECKPOINT_METRIC_PARAM] for r in runs if CHECKPOINT_METRIC_PARAM in r.data.params
    }
    return sorted({k for r in runs for k in r.data.metrics if k in wanted})


def select_metrics(runs: list[Any], patterns: Iterable[str] = (), all_metrics: bool = False) -> list[str]:
    """The metrics the table, bars and curves show: every ``val/`` metric with ``all_metrics``; the
    metrics matching any glob of ``patterns`` (``val/semseg/*``, ``train/loss/*``); else
    :func:`headline_metrics`, or every ``val/`` metric when the runs have none of those."""
    patterns = list(patterns)
    existing = sorted({k for r in runs for k in r.data.metrics})
    if all_metrics:
        return val_metrics(runs)
    if patterns:
        for p in patterns:
            if not any(fnmatchcase(k, p) for k in existing):
                raise CompareError(f"--metrics {p!r} matches no metric (existing: {', '.join(existing) or 'none'})")
        return [k for k in existing if any(fnmatchcase(k, p) for p in patterns)]
    return headline_metrics(runs) or val_metrics(runs)


def fetch_histories(client: Any, runs: list[Any], keys: list[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{run_id: {key: [(step, value), ...] sorted by step}}`` for the keys each run has."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in runs:
        rid = r.info.run_id
        out[rid] = {
            k: sorted((m.step, m.value) for m in client.get_metric_history(rid, k)) for k in keys if k in r.data.metrics
        }
    return out


def best_value(history: list[tuple[int, float]], key: str) -> float | None:
    """The best finite value (an epoch with nothing to measure logs NaN), or None."""
    values = [v for _, v in history if math.isfinite(v)]
    if not values:
        return None
    return max(values) if metric_direction(key) == "higher" else min(values)


def data_version_groups(runs: list[Any]) -> dict[str, list[str]]:
    """``{manifest digest or "unknown": [run ids]}``; more than one group means the runs saw different data."""
    groups: dict[str, list[str]] = {}
    for r in runs:
        groups.setdefault(r.data.tags.get(DIGEST_TAG, "unknown"), []).append(r.info.run_id)
    return groups


def build_rows(
    runs: list[Any],
    params: list[str],
    metrics: list[str],
    histories: dict[str, dict[str, list[tuple[int, float]]]] | None,
    code: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """One flat row per run; ``best.<metric>`` is ``None`` when histories were not fetched; a
    ``code.<tag>`` column per differing code tag, hashes cut to their first 12 characters; a ``status``
    column when some run is not FINISHED."""
    rows = []
    with_status = any(r.info.status != "FINISHED" for r in runs)
    for r in runs:
        rid, tags = r.info.run_id, r.data.tags
        row: dict[str, Any] = {
            "run_id": rid,
            "run_name": r.info.run_name,
            "model": tags.get("fusionpipe.model", r.data.params.get("model.name")),
        }
        if with_status:
            row["status"] = r.info.status
        row.update({f"params.{k}": r.data.params.get(k) for k in params})
        for k in metrics:
            row[f"final.{k}"] = r.data.metrics.get(k)
            hist = (histories or {}).get(rid, {}).get(k)
            row[f"best.{k}"] = best_value(hist, k) if hist else None
        end = r.info.end_time
        row["training_s"] = (end - r.info.start_time) / 1000.0 if end and r.info.start_time else None
        row["data_version"] = tags.get(DIGEST_TAG, "unknown")[:SHORT_DIGEST]
        for k in code:
            v = tags.get(k)
            row[f"code.{k}"] = v[:SHORT_DIGEST] if v is not None and k != "git.dirty" else v
        rows.append(row)
    return rows


def delta_m_terms(metrics: dict[str, float], baseline: dict[str, float]) -> dict[str, Any]:
    """``{"delta_m": Δm, "terms": {task/metric: 100 (-1)^l (M_m - M_b) / M_b}}`` over DELTA_M_DIRECTIONS."""
    total = delta_m(metrics, baseline)
    terms = {}
    for k, d in DELTA_M_DIRECTIONS.items():
        if k in metrics and k in baseline:
            sign = -1.0 if d == "lower" else 1.0
            terms[k] = 100.0 * sign * (metrics[k] - baseline[k]) / baseline[k]
    return {"delta_m": total, "terms": terms}


def union_of_references(
    per_run: Iterable[tuple[str, dict[str, float]]], error: type[Exception] = CompareError
) -> tuple[dict[str, float], dict[str, str]]:
    """The single-task references' metrics (``task/metric`` keys) as one dict, and which run gave each;
    two runs reporting the same metric raise ``error``. Shared by ``compare`` and ``evaluate``."""
    base: dict[str, float] = {}
    owner: dict[str, str] = {}
    for rid, metrics in per_run:
        for name, value in metrics.items():
            if name in base:
                raise error(
                    f"reference runs {owner[name]!r} and {rid!r} both report 'val/{name}'; "
                    "give one reference run per task"
                )
            base[name], owner[name] = value, rid
    return base, owner


def baseline_metrics(refs: list[Any]) -> dict[str, float]:
    """Union of the references' final ``val/`` metrics with the prefix stripped."""
    return union_of_references(
        (r.info.run_id, {k[len("val/") :]: v for k, v in r.data.metrics.items() if k.startswith("val/")}) for r in refs
    )[0]


def select_by_tag(runs: list[Any], tag: str) -> list[Any]:
    key, sep, value = tag.partition("=")
    if not sep or not key:
        raise CompareError(f"--baseline-tag must be KEY=VALUE, got {tag!r}")
    refs = [r for r in runs if r.data.tags.get(key) == value]
    if not refs:
        raise CompareError(f"no run has tag {key}={value!r}")
    return refs


def compare(
    tracking_uri: str,
    experiment: str | None = None,
    run_ids: Iterable[str] = (),
    metric: str | None = None,
    baseline_runs: Iterable[str] = (),
    baseline_tag: str | None = None,
    out: str | os.PathLike[str] | None = None,
    best: bool | None = None,
    sweep: str | None = None,
    metrics: Iterable[str] = (),
    all_metrics: bool = False,
    statuses: Iterable[str] | None = DEFAULT_STATUSES,
    filter_string: str | None = None,
) -> dict[str, Any]:
    """The comparison as one JSON-able dict (see docs/compare.md); writes files under ``out`` if given.

    ``best=None`` fetches history (for best values) when there are at most AUTO_BEST_MAX_RUNS runs.
    ``metrics`` (globs) and ``all_metrics`` choose the metrics (:func:`select_metrics`); ``statuses``
    (``None``: any) and ``filter_string`` choose an experiment's or a sweep's runs.
    """
    from mlflow.tracking import MlflowClient

    require_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = fetch_runs(client, experiment, run_ids, sweep, filter_string)
    left_out: dict[str, int] = {}
    if not run_ids:
        runs, left_out = keep_statuses(runs, statuses)
    if not runs:
        what = f"sweep {sweep!r} has no trial runs" if sweep else f"experiment {experiment!r} has no runs"
        asked = []
        if filter_string:
            asked.append(f"matching filter {filter_string!r}")
        if left_out:
            found = ", ".join(f"{n} {s}" for s, n in left_out.items())
            asked.append(f"with status {'/'.join(statuses or ())} ({found}: --status any shows them)")
        raise CompareError(what + (" " + " and ".join(asked) if asked else ""))
    chosen = select_metrics(runs, metrics, all_metrics)
    if metric is None:
        known_first = [f"val/{k}" for k in DELTA_M_DIRECTIONS if f"val/{k}" in chosen]
        metric = (known_first or chosen or [None])[0]
    if metric is None or not any(metric in r.data.metrics for r in runs):
        existing = sorted({k for r in runs for k in r.data.metrics})
        raise CompareError(f"no run has metric {metric!r} (existing: {', '.join(existing) or 'none'})")
    if metric not in chosen:
        chosen = sorted([*chosen, metric])
    if best is None:
        best = len(runs) <= AUTO_BEST_MAX_RUNS
    histories = fetch_histories(client, runs, chosen) if best else None
    params = differing_params(runs)
    code = differing_code(runs)
    refs: list[Any] = []
    if baseline_runs:
        refs = fetch_runs(client, run_ids=baseline_runs)
    elif baseline_tag:
        refs = select_by_tag(runs, baseline_tag)
    known = {r.info.run_id for r in runs}
    result: dict[str, Any] = {
        "runs": build_rows(runs, params, chosen, histories, code),
        "differing_params": params,
        "differing_code": code,
        "metrics": chosen,
        "left_out": left_out,
        "metric": metric,
        "direction": metric_direction(metric),
        "data_versions": data_version_groups(runs + [r for r in refs if r.info.run_id not in known]),
        "files": [],
    }
    if refs:
        base = baseline_metrics(refs)
        ref_ids = {r.info.run_id for r in refs}
        result["delta_m"] = {}
        for r in runs:
            final = {k[len("val/") :]: v for k, v in r.data.metrics.items() if k.startswith("val/")}
            if r.info.run_id not in ref_ids and any(k in final and k in base for k in DELTA_M_DIRECTIONS):
                undefined = [k for k in DELTA_M_DIRECTIONS if k in final and k in base and not math.isfinite(base[k])]
                if undefined:
                    raise CompareError(
                        f"reference runs {sorted(ref_ids)}: {', '.join(f'val/{k}' for k in undefined)} "
                        "is NaN or infinite, so delta_m is undefined"
                    )
                try:
                    result["delta_m"][r.info.run_id] = delta_m_terms(final, base)
                except ValueError as e:  # a reference metric of 0: no relative change
                    raise CompareError(f"run {r.info.run_id}: {e}; reference runs {sorted(ref_ids)}") from e
        # A task this process does not know (its plugin was not imported) has no Δm direction.

        unknown = sorted({k.split("/")[1] for k in val_metrics(runs) if k.count("/") >= 2} - set(TASKS))
        if unknown:
            result["delta_m_left_out"] = unknown
        if not result["delta_m"]:
            hint = (
                f"; task(s) {', '.join(unknown)} are not registered here: pass --plugin MODULE for the "
                "module that registers them"
                if unknown
                else ""
            )
            raise CompareError(
                f"no compared run shares a metric of {sorted(DELTA_M_DIRECTIONS)} with the "
                f"reference runs {sorted(ref_ids)}{hint}"
            )
    # Params and tags of runs logged before their values were redacted may still hold credentials in a
    # URI (checkpoint.storage_path s3://KEY:SECRET@...): none reaches the table, the files or the output.
    result = redact_value(result)
    if out is not None:
        curves = histories if histories is not None else fetch_histories(client, runs, chosen)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result["files"] = [str(out / n) for n in ("compare.csv", "compare.json", "curves.png", "bars.png")]
        write_atomic(out / "compare.csv", to_csv(result["runs"]).encode())
        write_atomic(out / "compare.json", (dumps(result, sort_keys=True, indent=2) + "\n").encode())
        write_atomic(out / "curves.png", plot_curves(runs, curves, chosen))
        write_atomic(out / "bars.png", plot_bars(result["runs"], chosen))
    return result


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def markdown_table(result: dict[str, Any]) -> str:
    rows = result["runs"]
    cols = list(rows[0])
    dm = result.get("delta_m")
    if dm is not None:
        cols.append("delta_m")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [_cell(row[c]) for c in cols if c != "delta_m"]
        if dm is not None:
            entry = dm.get(row["run_id"])
            cells.append(f"{entry['delta_m']:+.2f}%" if entry else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure_bytes(fig: Any) -> bytes:
    # A bare Figure (no pyplot) keeps no global state and needs no display; PNG output renders with Agg.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _run_label(row_or_name: Any) -> str:
    name = str(row_or_name)
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def metric_group(key: str) -> str:
    """The task a metric belongs to (``val/semseg/miou`` -> ``semseg``); other metrics group by their
    path without the leaf (``train/loss/total`` -> ``train/loss``, ``system/cpu`` -> ``system``)."""
    name = key[len("val/") :] if key.startswith("val/") else key
    return name.rsplit("/", 1)[0] if "/" in name else name


def panel_grid(metrics: list[str]) -> list[list[str]]:
    """The metrics as rows of panels: one row per :func:`metric_group` (a task), in order of first
    appearance, a row of more than MAX_PANELS_PER_ROW metrics wrapped onto the next."""
    groups: dict[str, list[str]] = {}
    for k in metrics:
        groups.setdefault(metric_group(k), []).append(k)
    return [ks[i : i + MAX_PANELS_PER_ROW] for ks in groups.values() for i in range(0, len(ks), MAX_PANELS_PER_ROW)]


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def bars_figure(rows: list[dict[str, Any]], metrics: list[str]) -> Any:
    """A grid of bar panels, one row per task and one panel per metric, a bar per run with its final
    value written on it; a run without the metric gets "n/a" where its bar would be, never a bar."""
    from matplotlib.figure import Figure

    grid = panel_grid(metrics) or [[]]
    ncols = max(len(r) for r in grid) or 1
    panel_w = max(2.8, 0.55 * len(rows) + 1.0)
    fig = Figure(figsize=(panel_w * ncols, 2.5 * len(grid)), layout="constrained")
    names = [_run_label(row["run_name"] or row["run_id"]) for row in rows]
    for i, keys in enumerate(grid):
        for j, k in enumerate(keys):
            ax = fig.add_subplot(len(grid), ncols, i * ncols + j + 1)
            values = [_finite(row.get(f"final.{k}")) for row in rows]
            have = [x for x, v in enumerate(values) if v is not None]
            bars = ax.bar(have, [values[x] for x in have], color=[f"C{x % 10}" for x in have])
            ax.bar_label(bars, labels=[f"{values[x]:.4g}" for x in have], fontsize="x-small", padding=1)
            for x, v in enumerate(values):
                if v is None:
                    ax.text(x, 0.02, "n/a", transform=ax.get_xaxis_transform(), ha="center", fontsize="x-small")
            ax.set_xlim(-0.6, len(rows) - 0.4)
            ax.margins(y=0.15)
            ax.set_title(f"{k} ({metric_direction(k)} is better)", fontsize="small")
            ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize="x-small")
    return fig


def curves_figure(runs: list[Any], histories: dict[str, dict[str, list[tuple[int, float]]]], metrics: list[str]) -> Any:
    """Small multiples: one panel per metric (rows by task as in :func:`bars_figure`), the metric
    against epoch with one line per run, the same colour for a run in every panel, one legend."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    grid = panel_grid(metrics) or [[]]
    ncols = max(len(r) for r in grid) or 1
    fig = Figure(figsize=(3.4 * ncols, 2.5 * len(grid) + 0.5), layout="constrained")
    handles: dict[str, Any] = {}
    for i, keys in enumerate(grid):
        for j, k in enumerate(keys):
            ax = fig.add_subplot(len(grid), ncols, i * ncols + j + 1)
            for n, r in enumerate(runs):
                hist = histories.get(r.info.run_id, {}).get(k)
                if hist:
                    label = _run_label(r.info.run_name or r.info.run_id)
                    (line,) = ax.plot([s for s, _ in hist], [v for _, v in hist], marker=".", color=f"C{n % 10}")
                    handles.setdefault(label, line)
            ax.set_title(f"{k} ({metric_direction(k)} is better)", fontsize="small")
            ax.set_xlabel("epoch", fontsize="x-small")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize="x-small")
            ax.grid(alpha=0.3)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=min(len(handles), 4),
            fontsize="small",
        )
    return fig


def plot_curves(runs: list[Any], histories: dict[str, dict[str, list[tuple[int, float]]]], metrics: list[str]) -> bytes:
    """PNG of :func:`curves_figure`."""
    return _figure_bytes(curves_figure(runs, histories, metrics))


def plot_bars(rows: list[dict[str, Any]], metrics: list[str]) -> bytes:
    """PNG of :func:`bars_figure`."""
    return _figure_bytes(bars_figure(rows, metrics))
