"""Compare MLflow runs: one row per run, the params that differ, final and best ``val/*`` metrics,
training time, data version, the code versions that differ, and Δm of multi-task runs against single-task references.

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
    client: Any, experiment: str | None = None, run_ids: Iterable[str] = (), sweep: str | None = None
) -> list[Any]:
    """All training runs of ``experiment`` (oldest first; a sweep's parent run holds no epochs and is
    left out), the runs ``run_ids`` in the given order, or the trials of the sweep whose parent run is
    ``sweep``."""
    from mlflow.exceptions import MlflowException

    run_ids = list(run_ids)
    if sum([experiment is not None, bool(run_ids), sweep is not None]) != 1:
        raise CompareError("give exactly one of an experiment name, run ids and a sweep's parent run id")
    if sweep is not None:
        try:
            parent = client.get_run(sweep)
        except MlflowException as e:
            if not run_not_found(e):
                raise
            raise CompareError(f"unknown run id {sweep!r}") from e
        if parent.data.tags.get("fusionpipe.kind") != "sweep":
            raise CompareError(f"run {sweep!r} is not a sweep's parent run (fusionpipe tune creates those)")
        return _search_all(client, parent.info.experiment_id, f"tags.mlflow.parentRunId = '{sweep}'")
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
    return [r for r in _search_all(client, exp.experiment_id) if r.data.tags.get("fusionpipe.kind") != "sweep"]


def _search_all(client: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=PAGE_SIZE,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
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
    ``code.<tag>`` column per differing code tag, hashes cut to their first 12 characters."""
    rows = []
    for r in runs:
        rid, tags = r.info.run_id, r.data.tags
        row: dict[str, Any] = {
            "run_id": rid,
            "run_name": r.info.run_name,
            "model": tags.get("fusionpipe.model", r.data.params.get("model.name")),
        }
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
) -> dict[str, Any]:
    """The comparison as one JSON-able dict (see docs/compare.md); writes files under ``out`` if given.

    ``best=None`` fetches history (for best values) when there are at most AUTO_BEST_MAX_RUNS runs.
    """
    from mlflow.tracking import MlflowClient

    require_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = fetch_runs(client, experiment, run_ids, sweep)
    if not runs:
        raise CompareError(f"sweep {sweep!r} has no trial runs" if sweep else f"experiment {experiment!r} has no runs")
    metrics = val_metrics(runs)
    if metric is None:
        known_first = [f"val/{k}" for k in DELTA_M_DIRECTIONS if f"val/{k}" in metrics]
        metric = (known_first or metrics or [None])[0]
    if metric is None or not any(metric in r.data.metrics for r in runs):
        existing = sorted({k for r in runs for k in r.data.metrics})
        raise CompareError(f"no run has metric {metric!r} (existing: {', '.join(existing) or 'none'})")
    if best is None:
        best = len(runs) <= AUTO_BEST_MAX_RUNS
    histories = fetch_histories(client, runs, metrics) if best else None
    params = differing_params(runs)
    code = differing_code(runs)
    refs: list[Any] = []
    if baseline_runs:
        refs = fetch_runs(client, run_ids=baseline_runs)
    elif baseline_tag:
        refs = select_by_tag(runs, baseline_tag)
    known = {r.info.run_id for r in runs}
    result: dict[str, Any] = {
        "runs": build_rows(runs, params, metrics, histories, code),
        "differing_params": params,
        "differing_code": code,
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

        unknown = sorted({k.split("/")[1] for k in metrics if k.count("/") >= 2} - set(TASKS))
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
        curves = histories if histories is not None else fetch_histories(client, runs, [metric])
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result["files"] = [str(out / n) for n in ("compare.csv", "compare.json", "curves.png", "bars.png")]
        write_atomic(out / "compare.csv", to_csv(result["runs"]).encode())
        write_atomic(out / "compare.json", (dumps(result, sort_keys=True, indent=2) + "\n").encode())
        write_atomic(out / "curves.png", plot_curves(runs, curves, metric))
        write_atomic(out / "bars.png", plot_bars(result["runs"], metrics))
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


def plot_curves(runs: list[Any], histories: dict[str, dict[str, list[tuple[int, float]]]], metric: str) -> bytes:
    """PNG of ``metric`` against epoch (the logged step), one line per run, legend by run name."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for r in runs:
        hist = histories.get(r.info.run_id, {}).get(metric)
        if hist:
            ax.plot([s for s, _ in hist], [v for _, v in hist], marker=".", label=r.info.run_name or r.info.run_id)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} ({metric_direction(metric)} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _figure_bytes(fig)


def plot_bars(rows: list[dict[str, Any]], metrics: list[str]) -> bytes:
    """PNG with one panel per ``val/`` metric: the final value of each run as a bar."""
    from matplotlib.figure import Figure

    n = max(len(metrics), 1)
    fig = Figure(figsize=(max(4.0, 0.35 * len(rows) + 2), 2.6 * n))
    names = [row["run_name"] or row["run_id"] for row in rows]
    for i, k in enumerate(metrics):
        ax = fig.add_subplot(n, 1, i + 1)
        ax.bar(range(len(rows)), [row[f"final.{k}"] or 0.0 for row in rows])
        ax.set_title(f"{k} ({metric_direction(k)} is better)", fontsize="small")
        ax.set_xticks(
            range(len(rows)), names if i == n - 1 else [""] * len(rows), rotation=45, ha="right", fontsize="x-small"
        )
    return _figure_bytes(fig)
