"""A study's table: per row, the mean and sample standard deviation over seeds of each headline metric,
delta_m against the baseline rows, the model's size and FLOPs and its training time.

Every value is aggregated from each run's *final-epoch* values (the metric's last logged value, as
``fusionpipe compare`` shows it), never its best epoch: picking each seed's best epoch on the
validation set would bias the mean upwards.

delta_m (MTI-Net, :func:`pipelines.analysis.compare.delta_m_terms`) is computed per seed: seed ``s`` of
a row against the baseline, i.e. the union over the baseline rows of their metrics averaged over their
seeds; the table holds the mean and the sample standard deviation of those per-seed values.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets.manifest import write_atomic
from pipelines.analysis.compare import (
    CompareError,
    _cell,
    _figure_bytes,
    _finite,
    _run_label,
    delta_m_terms,
    metric_direction,
    require_store,
    to_csv,
    union_of_references,
)
from pipelines.config import ConfigError
from pipelines.jsonio import dumps
from pipelines.track.tracker import run_not_found

TABLE_FILES = ("table.csv", "table.json", "table.md", "table.png")
STUDY_KIND = "study"


class StudyTableError(CompareError):
    """No study table where one was asked for: an unknown run or study name, or a run without a table."""


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and *sample* standard deviation (n - 1) of the finite values, and how many there were;
    the deviation of a single value is None (undefined), the mean of none is None."""
    xs = [float(v) for v in values if _finite(v) is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def baseline_of(records: Sequence[dict[str, Any]], baselines: Sequence[str]) -> dict[str, float]:
    """The delta_m reference: each baseline row's ``val`` metrics averaged over its seeds, as one dict
    (``task/metric`` keys); two baseline rows reporting the same metric are a ConfigError."""
    per_row = []
    for name in baselines:
        runs = [r for r in records if r["row"] == name]
        keys = sorted({k for r in runs for k in r["val"]})
        means = {k: mean_std(r["val"].get(k) for r in runs)[0] for k in keys}
        per_row.append((name, {k: v for k, v in means.items() if v is not None}))
    try:
        return union_of_references(per_row, error=ConfigError)[0]
    except ConfigError as e:
        raise ConfigError(f"baselines: {e}".replace("reference runs", "baseline rows")) from None


EXCHANGED = "cen/exchanged/"


def _whole(key: str) -> bool:
    """A whole-encoder exchanged fraction, ``cen/exchanged/<modality>`` (not one stage's)."""
    return key.startswith(EXCHANGED) and "/" not in key.removeprefix(EXCHANGED)


def aggregate(
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    baselines: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The table's rows.

    ``records``: one per finished run, ``{"row", "seed", "run_id", "val": {task/metric: final value},
    "train_s": seconds}`` and optionally ``"model": {diagnostic: final value}``. ``rows``: the spec's
    rows in order, ``{"row", "config", "model", "params", "flops"}``. A metric no seed of a row reported
    (a depth-only row in a semseg column) is None. When any run logged CEN's exchanged channels, every
    row gets ``exchanged <modality> mean``: the mean over seeds of the final fraction of channels that
    modality takes from the other over the whole encoder (None for a row without exchange)."""
    base = baseline_of(records, baselines) if baselines else None
    exchanged = sorted({k.removeprefix(EXCHANGED) for r in records for k in r.get("model", {}) if _whole(k)})
    table = []
    for info in rows:
        runs = sorted((r for r in records if r["row"] == info["row"]), key=lambda r: r["seed"])
        out: dict[str, Any] = {"row": info["row"], "n": len(runs), "seeds": " ".join(str(r["seed"]) for r in runs)}
        for m in metrics:
            mean, std, _ = mean_std(r["val"].get(m.removeprefix("val/")) for r in runs)
            out[f"{m} mean"], out[f"{m} std"] = mean, std
        if base is not None:
            per_seed = []
            for r in runs:
                try:
                    per_seed.append(delta_m_terms(r["val"], base)["delta_m"])
                except ValueError:  # no task in common with the baselines
                    continue
            out["delta_m mean"], out["delta_m std"], _ = mean_std(per_seed)
        for m in exchanged:
            out[f"exchanged {m} mean"] = mean_std(r.get("model", {}).get(EXCHANGED + m) for r in runs)[0]
        out["params"], out["flops"] = info.get("params"), info.get("flops")
        out["train_s mean"] = mean_std(r["train_s"] for r in runs)[0]
        out["model"], out["config"] = info.get("model"), info.get("config")
        table.append(out)
    return table


def markdown(table: dict[str, Any]) -> str:
    """The table as markdown: ``mean ± std`` per metric (arrow: the better direction), delta_m, cost."""
    metrics = table["metrics"]
    has_dm = bool(table.get("baselines"))
    arrows = {"higher": "↑", "lower": "↓"}
    cols = ["row", "n", *(f"{m} {arrows[metric_direction(m)]}" for m in metrics)]
    cols += ["delta_m % ↑"] if has_dm else []
    exchanged = (
        [k.removeprefix("exchanged ").removesuffix(" mean") for k in table["rows"][0] if k.startswith("exchanged ")]
        if table["rows"]
        else []
    )
    cols += ["exchanged"] if exchanged else []
    cols += ["params (M)", "GFLOPs", "train s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def pm(mean: Any, std: Any) -> str:
        if mean is None:
            return ""
        return f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None else "")

    for r in table["rows"]:
        cells = [_cell(r["row"]), str(r["n"]), *(pm(r[f"{m} mean"], r[f"{m} std"]) for m in metrics)]
        if has_dm:
            cells.append(
                ""
                if r.get("delta_m mean") is None
                else f"{r['delta_m mean']:+.2f}"
                + (f" ± {r['delta_m std']:.2f}" if r["delta_m std"] is not None else "")
            )
        if exchanged:
            cells.append(
                ", ".join(
                    f"{m} {r[f'exchanged {m} mean']:.3f}" for m in exchanged if r[f"exchanged {m} mean"] is not None
                )
            )
        cells += [
            "" if r["params"] is None else f"{r['params'] / 1e6:.3g}",
            "" if r["flops"] is None else f"{r['flops'] / 1e9:.3g}",
            "" if r["train_s mean"] is None else f"{r['train_s mean']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: dict[str, Any]) -> bytes:
    """One bar panel per headline metric (and delta_m), a bar per row at its mean with the standard
    deviation as error bar; a row without the metric gets "n/a" and no bar."""
    from matplotlib.figure import Figure

    keys = [*table["metrics"], *(["delta_m"] if table.get("baselines") else [])]
    rows = table["rows"]
    panel_w = max(3.0, 0.6 * len(rows) + 1.0)
    fig = Figure(figsize=(panel_w * len(keys), 3.0), layout="constrained")
    names = [_run_label(r["row"]) for r in rows]
    for i, k in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        means = [_finite(r.get(f"{k} mean")) for r in rows]
        stds = [_finite(r.get(f"{k} std")) or 0.0 for r in rows]
        xs = range(len(rows))
        ax.bar(
            [x for x, m in zip(xs, means, strict=True) if m is not None],
            [m for m in means if m is not None],
            yerr=[s for s, m in zip(stds, means, strict=True) if m is not None],
            capsize=3,
            color="tab:blue",
        )
        for x, m in zip(xs, means, strict=True):
            if m is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(k if k == "delta_m" else f"{k} ({metric_direction(k)} is better)", fontsize=8)
    fig.suptitle(f"study {table['study']}: mean ± sample std over seeds", fontsize=9)
    return _figure_bytes(fig)


def write_table(table: dict[str, Any], out: str | Path) -> list[Path]:
    """table.csv, table.json, table.md and table.png under ``out``, each written atomically (a temporary
    file renamed into place), so a reader never sees half a table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "table.csv": to_csv(table["rows"]).encode(),
        "table.json": dumps(table, indent=2, sort_keys=True).encode(),
        "table.md": (markdown(table) + "\n").encode(),
        "table.png": plot(table),
    }
    paths = []
    for name in TABLE_FILES:
        write_atomic(out / name, contents[name])
        paths.append(out / name)
    return paths


def find_study_run(client: Any, ref: str) -> Any:
    """The parent run of a study, by run id or by study name (the newest such run)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(ref)
    except MlflowException as e:
        if not run_not_found(e):
            raise
        run = None
    if run is not None:
        if run.data.tags.get("fusionpipe.kind") != STUDY_KIND:
            raise StudyTableError(f"run {ref!r} is not a study's parent run (fusionpipe study creates those)")
        return run
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(
        ids,
        filter_string=f"tags.`fusionpipe.kind` = '{STUDY_KIND}' and tags.`fusionpipe.study` = '{_quote(ref)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        raise StudyTableError(f"no study run with id or study name {ref!r}")
    return found[0]


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def read_study_table(tracking_uri: str, ref: str) -> dict[str, Any]:
    """The table logged to a study's parent run (``table.json``), with ``parent_run_id`` added."""
    from mlflow.tracking import MlflowClient

    require_store(tracking_uri, StudyTableError)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = find_study_run(client, ref)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    if "table.json" not in names:
        raise StudyTableError(
            f"study run {run.info.run_id} ({run.data.tags.get('fusionpipe.study')}) has no table.json yet: "
            f"it is {run.info.status}; re-run its fusionpipe study command to finish it"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run.info.run_id, "table.json", tmp)
        table = json.loads(Path(path).read_text())
    table["parent_run_id"] = run.info.run_id
    return table


def table_text(table: dict[str, Any]) -> str:
    """The human output of ``study`` and ``compare --study``: a title line and the markdown table."""
    buf = io.StringIO()
    buf.write(
        f"study {table['study']}: {len(table['rows'])} rows x seeds {table['seeds']}, final-epoch values, "
        "mean ± sample std\n"
    )
    buf.write(markdown(table))
    return buf.getvalue()
