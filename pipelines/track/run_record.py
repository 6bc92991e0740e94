"""The MLflow record of a training run, kept by the driver: open it (or re-open it on a resume),
and finish it with the best and last checkpoints, the final model and the run summary.

A run's state file (:data:`RUN_STATE`, beside its checkpoints) maps the run name to its MLflow run id,
so re-running the same run name continues the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from datasets.manifest import write_atomic
from pipelines.checkpoints import CorruptCheckpointError, read_meta, verify_checkpoint, write_weights_only
from pipelines.compat import mlflow_dataset_entity
from pipelines.config import ConfigError, ExperimentConfig, flatten
from pipelines.jsonio import dumps
from pipelines.storage import checkpoint_uri, join, read_text, write_text
from pipelines.track.data_versions import data_version, dvc_experiment_tags
from pipelines.track.export import NORMALISATION, log_final_model
from pipelines.track.redact import redact_url_password, redact_value
from pipelines.track.registry import register_logged_model
from pipelines.track.tracker import (
    PARAM_MAX,
    Tracker,
    changed_plugins,
    changes_tag,
    config_changes,
    git_info,
    plugin_tags,
    ray_job_tags,
    redacted_config,
    run_not_found,
    source_tags,
)

RUN_STATE = "fusionpipe-run.json"


def _run_state(storage: str, run_name: str) -> str:
    """The run-state file's location: a path, or a URI on an object store (pipelines.storage)."""
    return join(storage, run_name, RUN_STATE)


def _start_over(state: str, run_name: str) -> str:
    """How to go on when a run-state file cannot be used (the end of the error that says why)."""
    run_dir = state[: -len(RUN_STATE)].rstrip("/")
    return (
        f"To start a new MLflow run under run name {run_name!r}, delete {state} (checkpoints already in "
        f"{run_dir} belong to the old MLflow run and are refused then: with checkpoints there, delete "
        "that directory too, or use another run name)"
    )


def read_run_state(state: str, run_name: str) -> dict[str, Any] | None:
    """The run-state file at ``state`` (``{"mlflow_run_id": ..., "tracking_uri": ...}``), or None when
    there is none. A file that is not one (cut short, overwritten, not JSON) is a ConfigError that
    names it and says how to go on."""
    try:
        text = read_text(state)
    except UnicodeDecodeError as e:
        text, problem = "", f"not text: {e.reason} at byte {e.start}"
    else:
        if text is None:
            return None
        try:
            info = json.loads(text)
        except ValueError as e:
            problem = f"not valid JSON: {e}"
        else:
            run_id = info.get("mlflow_run_id") if isinstance(info, dict) else None
            if isinstance(run_id, str) and run_id.strip():
                return info
            problem = 'no "mlflow_run_id" string in it'
    raise ConfigError(
        f"{state}: corrupt run-state file ({problem}); it records which MLflow run run name {run_name!r} "
        f'continues. Write {{"mlflow_run_id": "<id>"}} into it to resume that run (the MLflow run tagged '
        f"fusionpipe.run_name={run_name}). {_start_over(state, run_name)}."
    )


def _record_resume(tracker: Any, cfg: ExperimentConfig, run_name: str, plugins: dict[str, str]) -> None:
    """Tag a resumed run: the Ray job, what this attempt changed (settings, plugin code), and drop the
    tags of plugins no longer listed."""
    tags = {**ray_job_tags(), **dvc_experiment_tags(), "fusionpipe.resumed": "true"}
    run = tracker.client.get_run(tracker.run_id)
    logged = run.data.tags
    # MLflow params cannot change, so they stay the run's first config; what this attempt changed
    # (a lower optim.lr after a divergence, more train.epochs) is on record in a tag.
    differ = config_changes(run.data.params, flatten(cfg.model_dump(mode="json")))
    if differ:
        print(
            f"note: run {run_name!r} resumes with changed settings: "
            + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in differ.items())
            + " (tag fusionpipe.resume_changed; the params keep the first values)",
            file=sys.stderr,
        )
        tags["fusionpipe.resume_changed"] = changes_tag(differ, PARAM_MAX)
    changed = changed_plugins(logged, plugins)
    stale = [k for k in logged if k.startswith("plugin.") and k not in plugins]  # plugins dropped since
    if changed and not any(k.startswith("plugin.") for k in logged) and "plugins" not in differ:
        # A run started before plugin code was tagged: record it now, there is nothing to compare.
        tags.update(plugins)
    elif changed:
        # Not refused (a fix to a plugin is a reason to resume), but on record: the run's epochs
        # before and after this point ran different plugin code. The plugin tags now name the code
        # that runs from here on; fusionpipe.plugins_changed keeps every plugin that ever changed.
        print(
            f"warning: run {run_name!r}: the code of plugin(s) {', '.join(changed)} changed since the run "
            "was last started; its earlier epochs ran other code (tag fusionpipe.plugins_changed)",
            file=sys.stderr,
        )
        before = [n for n in logged.get("fusionpipe.plugins_changed", "").split(",") if n]
        tags.update(plugins)
        tags["fusionpipe.plugins_changed"] = ",".join(sorted(set(before) | set(changed)))
    tracker.set_tags(tags)
    for key in stale:
        tracker.client.delete_tag(tracker.run_id, key)


def open_run(
    cfg: ExperimentConfig, run_name: str, manifest: dict[str, Any], extra_tags: dict[str, str] | None = None
) -> tuple[Any, bool]:
    """Re-open the MLflow run recorded for ``run_name``, or create one with params, tags and inputs."""
    state = _run_state(cfg.checkpoint.storage_path, run_name)
    uri = cfg.tracking.uri
    plugins = plugin_tags(cfg.plugins)
    info = read_run_state(state, run_name)
    if info is not None:
        tracker = Tracker(uri, info["mlflow_run_id"])
        try:
            tracker.client.get_run(tracker.run_id)
        except Exception as e:  # noqa: BLE001 - only "no such run" is the input's fault (exit 2)
            if not run_not_found(e):
                raise  # the store failed: exit 3
            recorded = info.get("tracking_uri")
            where = f" (it was recorded in {recorded})" if recorded and recorded != redact_url_password(uri) else ""
            raise ConfigError(
                f"{state}: names MLflow run {tracker.run_id!r}, which the tracking store "
                f"{redact_url_password(uri)} does not have{where}. To resume it, set tracking.uri to the store "
                f"that holds it. {_start_over(state, run_name)}."
            ) from None
        tracker.client.update_run(tracker.run_id, status="RUNNING")
        _record_resume(tracker, cfg, run_name, plugins)
        return tracker, True
    git = git_info()
    tags = {
        "fusionpipe.model": cfg.model.name,
        "fusionpipe.run_name": run_name,
        **git,
        **source_tags("fusionpipe train", git),
        **data_version(cfg.data.shards, cfg.data.rev),
        **plugins,
        **ray_job_tags(),
        **dvc_experiment_tags(),
        **(extra_tags or {}),
    }
    tracker = Tracker.create_run(uri, cfg.tracking.experiment, run_name, tags)
    tracker.log_params(flatten(cfg.model_dump(mode="json")))
    _log_dataset_input(tracker, cfg, manifest, tags["data.manifest_digest"])
    with tempfile.TemporaryDirectory() as tmp:
        import yaml

        p = Path(tmp) / "config.yaml"
        p.write_text(yaml.safe_dump(redacted_config(cfg), sort_keys=False))
        tracker.log_artifact(p)
    write_text(state, json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": redact_url_password(uri)}))
    return tracker, False


def _log_dataset_input(tracker: Any, cfg: ExperimentConfig, manifest: dict[str, Any], digest: str) -> None:
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    source = HTTPDatasetSource(url=Path(cfg.data.shards).as_uri())
    ds = MetaDataset(source=source, name=manifest.get("name", "dataset"), digest=digest[:32])
    tracker.client.log_inputs(
        tracker.run_id,
        datasets=[DatasetInput(mlflow_dataset_entity(ds), tags=[InputTag("mlflow.data.context", "train")])],
    )


def best_checkpoint(result: Any, metric: str, mode: str) -> tuple[Any, dict[str, Any]]:
    """The best of Ray's kept checkpoints by ``metric`` (a NaN or infinite score never wins), else the
    last one."""
    return ranked_checkpoints(result, metric, mode)[0]


def ranked_checkpoints(result: Any, metric: str, mode: str) -> list[tuple[Any, dict[str, Any]]]:
    """Ray's kept checkpoints with a finite ``metric``, best first (the first kept of equal scores
    first), then the last checkpoint."""
    scored = [
        (c, m)
        for c, m in (result.best_checkpoints or [])
        if isinstance(m.get(metric), (int, float)) and math.isfinite(m[metric])
    ]
    scored.sort(key=lambda cm: cm[1][metric], reverse=mode == "max")  # a stable sort, also reversed
    return [*scored, (result.checkpoint, result.metrics)]


def _intact_best(
    stack: contextlib.ExitStack, result: Any, cfg: ExperimentConfig, run_name: str, last_dir: str
) -> tuple[Any, dict[str, Any], str]:
    """The best of Ray's kept checkpoints (:func:`ranked_checkpoints`) whose files are intact, its metrics
    and its local directory. One that is damaged (a checkpoint of an earlier attempt of the run, corrupted
    since, that Ray keeps for its score) is passed over with a warning; the last checkpoint, checked by
    the caller, ends the list."""
    for ckpt, metrics in ranked_checkpoints(result, cfg.checkpoint.metric, cfg.checkpoint.mode):
        if ckpt is result.checkpoint or ckpt.path == result.checkpoint.path:
            # Ray's Result hands out one Checkpoint object for the last and, when it scored best, the
            # best checkpoint: one download, one directory.
            return ckpt, metrics, last_dir
        d = stack.enter_context(ckpt.as_directory())
        try:
            verify_checkpoint(d)
        except CorruptCheckpointError as e:
            where = redact_url_password(checkpoint_uri(cfg.checkpoint.storage_path, ckpt.path))
            print(
                f"warning: run {run_name!r}: checkpoint {where} scored best but is corrupt ({e}); "
                "the best intact checkpoint is logged as the best",
                file=sys.stderr,
            )
            continue
        return ckpt, metrics, d
    raise AssertionError("ranked_checkpoints ends with the last checkpoint")


def finish_run(cfg: ExperimentConfig, tracker: Any, result: Any, run_name: str, resumed: bool) -> dict[str, Any]:
    """Log the best and last checkpoints and the final model, close the MLflow run; the run summary."""
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name}: training produced no checkpoint")
    # as_directory: the directory itself on a local or mounted storage path, a downloaded copy from an
    # object store (Ray's Checkpoint.path there is a key inside the bucket, not a local path).
    with contextlib.ExitStack() as stack:
        last_dir = stack.enter_context(result.checkpoint.as_directory())
        # This attempt's own newest checkpoint: damaged, it is an error (CorruptCheckpointError).
        last_meta = verify_checkpoint(last_dir, require=("metrics",))
        best_ckpt, best_metrics, best_dir = _intact_best(stack, result, cfg, run_name, last_dir)
        # Written to tags and the summary: without the storage path's credentials (s3://KEY:***@BUCKET/...).
        best_at = redact_url_password(checkpoint_uri(cfg.checkpoint.storage_path, best_ckpt.path))
        last_at = redact_url_password(checkpoint_uri(cfg.checkpoint.storage_path, result.checkpoint.path))
        # checkpoints/best is what evaluate, predict and the logged model read: the weights, without the
        # optimizer state that only a resume needs (twice the weights' size with Adam); checkpoints/last keeps it.
        best_weights = write_weights_only(
            best_dir, stack.enter_context(tempfile.TemporaryDirectory()), {"normalisation": NORMALISATION}
        )
        tracker.log_artifacts(str(best_weights), "checkpoints/best")
        tracker.log_artifacts(last_dir, "checkpoints/last")
        tracker.set_tags(
            {
                "fusionpipe.best_checkpoint": best_at,
                "fusionpipe.last_checkpoint": last_at,
                "fusionpipe.best_epoch": str(best_metrics.get("epoch")),
            }
        )
        registered = None
        if cfg.tracking.log_model or cfg.tracking.register_as:  # a registered version is a logged model
            model_uri = log_final_model(tracker, str(best_weights), read_meta(best_weights, require=("model_config",)))
            if cfg.tracking.register_as:
                alias = cfg.tracking.register_alias if cfg.tracking.register_alias_on_train else None
                registered = register_logged_model(
                    cfg.tracking.uri, tracker.run_id, model_uri, cfg.tracking.register_as, alias
                ).model_uri
    tracker.end("FINISHED")
    # meta.json stores a NaN metric (nothing to measure) as null: it is NaN again here.
    final = {k: math.nan if v is None else v for k, v in last_meta["metrics"].items() if k.startswith("val/")}
    # The summary is printed and written to files (outputs/train.json): no password in it.
    return {
        "run_name": run_name,
        "mlflow_run_id": tracker.run_id,
        "tracking_uri": redact_url_password(cfg.tracking.uri),
        "experiment": cfg.tracking.experiment,
        "resumed": resumed,
        "epochs": last_meta["epoch"] + 1,
        "best_checkpoint": best_at,
        "last_checkpoint": last_at,
        "best_metric": {cfg.checkpoint.metric: best_metrics.get(cfg.checkpoint.metric)},
        "final_metrics": final,
        "registered_model": registered,
    }


def write_outputs(
    summary: dict[str, Any], summary_path: str | None, history_path: str | None, tracking_uri: str | None = None
) -> None:
    """The summary JSON and a per-epoch CSV of every logged metric (for ``dvc plots``), atomically.

    The history is read from ``tracking_uri``, the run's real URI (the summary's has its password
    redacted), else from the summary's."""
    import csv
    import io

    def put(path: str, text: str) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, text.encode())

    if summary_path:  # NaN -> null: strict JSON; no credential of any URI in it
        put(summary_path, dumps(redact_value(summary), indent=2, sort_keys=True) + "\n")
    if history_path:
        tracker = Tracker(tracking_uri or summary["tracking_uri"], summary["mlflow_run_id"])
        keys = sorted(k for k in tracker.client.get_run(tracker.run_id).data.metrics if k != "epoch")
        rows: dict[int, dict[str, float]] = {}
        for k in keys:
            for m in tracker.client.get_metric_history(tracker.run_id, k):
                rows.setdefault(m.step, {})[k] = m.value
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["epoch", *keys])
        w.writeheader()
        for step in sorted(rows):
            w.writerow({"epoch": step, **rows[step]})
        put(history_path, buf.getvalue())
