"""What ``fusionpipe evaluate`` adds to its metrics: the per-class breakdown's pictures, and the record it
writes into the MLflow run it evaluated (``--log-to-run``).

Pictures: the confusion matrix with each row normalised (the share of a class's pixels predicted as each
class, class names on both axes) and the per-class IoU (with depth RMSE and the normals' mean angle per
class when those tasks are evaluated). The run gets ``eval/<split>/<task>/<metric>`` and
``eval/<split>/<per-class metric>/<class name>`` metrics in ``log_batch`` requests, at the step of the
evaluated checkpoint's epoch, and the pictures and the JSON under the artifact folder ``eval/<split>/``.
"""

from __future__ import annotations

import io
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from pipelines.analysis.compare import require_store
from pipelines.config import ConfigError
from pipelines.jsonio import dumps
from pipelines.track.redact import redact_url_password
from pipelines.track.tracker import BATCH_METRICS, run_not_found

#: The per-class values that become metrics and bars, with their axis labels.
PER_CLASS = {"iou": "IoU", "depth_rmse": "depth RMSE (m)", "normals_mean": "normals mean angle (deg)"}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def confusion_png(confusion: dict[str, Any], title: str) -> bytes:
    """PNG of the row-normalised confusion matrix (rows: target class, columns: predicted class), each
    cell's share printed in it; a class without pixels is a blank row."""
    from matplotlib.figure import Figure

    names, rows = confusion["classes"], confusion["normalized"]
    n = len(names)
    side = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    data = [[math.nan if v is None else v for v in row] for row in rows]
    im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the target class's pixels")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(n), names, fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("target class")
    ax.set_title(title, fontsize="small")
    if n <= 30:
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                if math.isfinite(v) and v >= 0.005:
                    ax.text(
                        j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "black"
                    )
    return _png(fig)


def per_class_png(classes: dict[str, dict[str, float]], title: str) -> bytes:
    """PNG with one bar panel per per-class value the evaluation has (IoU, depth RMSE, normals angle)."""
    from matplotlib.figure import Figure

    names = list(classes)
    keys = [k for k in PER_CLASS if any(k in row for row in classes.values())]
    fig = Figure(figsize=(max(5.0, 0.4 * len(names) + 2), 2.4 * len(keys)))
    for i, k in enumerate(keys):
        ax = fig.add_subplot(len(keys), 1, i + 1)
        values = [classes[c].get(k) for c in names]
        ax.bar(range(len(names)), [v if v is not None and math.isfinite(v) else 0.0 for v in values])
        ax.set_ylabel(PER_CLASS[k], fontsize="small")
        last = i == len(keys) - 1
        ax.set_xticks(
            range(len(names)), names if last else [""] * len(names), rotation=60, ha="right", fontsize="small"
        )
        if i == 0:
            ax.set_title(title, fontsize="small")
    return _png(fig)


def pictures(result: dict[str, Any]) -> dict[str, bytes]:
    """The pictures of an evaluation with a per-class breakdown (file name -> PNG); none without one."""
    if "confusion" not in result:
        return {}
    what = f"{result['model']} epoch {result['epoch']} on {result['split']} ({result['num_samples']} samples)"
    return {
        "confusion.png": confusion_png(result["confusion"], f"confusion, rows normalised: {what}"),
        "per_class.png": per_class_png(result["per_class"], f"per class: {what}"),
    }


def _key(name: str) -> str:
    # MLflow keys allow alphanumerics, '_', '-', '.', ' ', '/'; a class name may hold anything else.
    return re.sub(r"[^\w\-. /]", "_", name)


def eval_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``eval/<split>/...`` metrics of an evaluation: its metrics, its trivial-baseline ratios, delta_m
    and the per-class values by class name. Values that are not finite (a class with no pixels) are left
    out: MLflow's charts have no use for them."""
    prefix = f"eval/{_key(result['split'])}"
    out = {f"{prefix}/{k}": v for k, v in result["metrics"].items()}
    out.update({f"{prefix}/learned/{k}": v for k, v in result.get("learned", {}).items()})
    if "delta_m" in result:
        out[f"{prefix}/delta_m"] = result["delta_m"]
    for name, row in result.get("per_class", {}).items():
        for k in PER_CLASS:
            if k in row:
                out[f"{prefix}/{k}/{_key(name)}"] = row[k]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def log_to_run(uri: str, run_id: str, result: dict[str, Any], images: dict[str, bytes]) -> int:
    """Write an evaluation into MLflow run ``run_id``: :func:`eval_metrics` at the evaluated epoch's step,
    in ``log_batch`` requests, and ``eval.json`` and ``images`` under ``eval/<split>/``. Returns the
    number of metrics logged. A run the store does not have is a :class:`ConfigError` naming both."""
    import time

    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    require_store(uri, error=ConfigError)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as e:
        if not run_not_found(e):
            raise  # the store failed: exit 3
        raise ConfigError(
            f"--log-to-run: MLflow run {run_id!r} (the evaluated checkpoint's run) not found in "
            f"{redact_url_password(uri)}; set tracking.uri to the store that holds it"
        ) from e
    ts, step = int(time.time() * 1000), int(result.get("epoch") or 0)
    metrics = [Metric(k, v, ts, step) for k, v in sorted(eval_metrics(result).items())]
    for i in range(0, len(metrics), BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH_METRICS])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "eval.json").write_text(dumps(result, indent=2, sort_keys=True) + "\n")
        for name, data in images.items():
            (folder / name).write_bytes(data)
        client.log_artifacts(run_id, str(folder), f"eval/{_key(result['split'])}")
    return len(metrics)
