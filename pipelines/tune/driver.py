"""``fusionpipe tune``: a Ray Tune sweep whose trials are Ray Train runs, tracked as nested MLflow runs.

Ray 2.60 (Train V2) pattern: ``Tuner(driver_fn)``. Each trial is a small driver function that applies
its sampled values to the base config and calls ``pipelines.train.driver.run_training`` with a
``TuneReportCallback``, so every epoch's metrics reach Tune and ASHA can stop weak trials early. A
trial is therefore exactly a ``fusionpipe train`` run: same validation, checkpoints, resume and MLflow
logging, in a run nested under the sweep's parent run (``mlflow.parentRunId``).

MLflow writers: the sweep driver writes only the parent run and closes runs of trials that Tune
stopped; each trial's driver writes its own run before and after training; its rank-0 worker writes
the per-epoch metrics in between. Every process keeps one client, and no two write the same run at
the same time, so a sqlite store is never "locked" for long.

Layout under ``<storage>/<sweep name>/``: Tune's experiment state (what ``Tuner.restore`` reads),
``fusionpipe-sweep.json`` (parent run id and the sweep digest), ``trials/<sweep>-<trial id>/`` (each
trial's Ray Train run: checkpoints and its ``fusionpipe-run.json``) and ``best_config.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from datasets.manifest import write_atomic
from pipelines.checkpoints import read_meta, write_weights_only
from pipelines.compat import tune_trials
from pipelines.config import (
    PROJECT_ROOT_ENV,
    ConfigError,
    ExperimentConfig,
    _abs,
    flatten,
    load_config,
    project_root,
    set_fields,
)
from pipelines.track.data_versions import data_version, resolve_data_rev
from pipelines.track.export import NORMALISATION, log_final_model
from pipelines.track.redact import redact_value, strip_secrets
from pipelines.track.registry import register_logged_model
from pipelines.track.tracker import (
    Tracker,
    check_store_for_cluster,
    git_info,
    ray_job_tags,
    redact_url_password,
    redacted_config,
    source_tags,
)
from pipelines.train.cluster import alive_nodes
from pipelines.train.driver import init_ray, run_training, validate_experiment
from pipelines.train.worker import EpochHook
from pipelines.tune.callback import SweepCallback
from pipelines.tune.spec import (
    SweepSpec,
    candidate_values,
    check_name,
    grid_size,
    load_sweep,
    trial_raw_config,
    tune_domain,
    validate_sweep,
)
from pipelines.tune.trials import (
    EPOCHS_DONE,
    best_of,
    set_driver_tracking_uri,
    trial_run_name,
    trial_state,
)

log = logging.getLogger(__name__)
SWEEP_STATE = "fusionpipe-sweep.json"


def _report_callback() -> Any:
    """A ``TuneReportCallback`` that also reports ``epochs_done`` (Tune's own iteration counter restarts
    when a trial is resumed from its Ray Train checkpoint; the epoch does not)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReportCallback(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = dict(metrics[0])
            first[EPOCHS_DONE] = int(first["epoch"]) + 1
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReportCallback()


def _trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    spec: dict[str, Any],
    parent_run_id: str,
    sweep_dir: str,
    root: str,
    epoch_hooks: list[EpochHook],
) -> None:
    """One trial (runs in a Tune trial actor): a ``fusionpipe train`` run with the sampled values.

    ``root`` is the sweep driver's project root: the trial actor runs in a directory of Tune's, and its
    run resolves ``data.rev`` and tags the git commit of the project the sweep was started in."""
    os.environ[PROJECT_ROOT_ENV] = root
    import ray.tune

    sweep = SweepSpec.model_validate(spec)
    trial_id = ray.tune.get_context().get_trial_id()
    raw = set_fields(
        trial_raw_config(base, sweep, config["params"]), [("checkpoint.storage_path", str(Path(sweep_dir) / "trials"))]
    )
    cfg = ExperimentConfig.model_validate(raw)
    # Tune may stop this actor at any report, even the last; closing the run of a stopped or failed
    # trial is left to the sweep driver (close_stopped_trial), so the two never race.
    run_training(
        cfg,
        run_name=trial_run_name(sweep.name, trial_id),
        callbacks=[_report_callback()],
        epoch_hooks=epoch_hooks,
        close_on_error=False,
        extra_tags={
            "mlflow.parentRunId": parent_run_id,
            "fusionpipe.sweep": sweep.name,
            "fusionpipe.trial_id": trial_id,
            **{f"tune.{k}": json.dumps(v) for k, v in config["params"].items()},
        },
    )


def _open_parent_run(
    sweep_dir: Path, spec: SweepSpec, base: ExperimentConfig, digest: str, uri: str, experiment: str
) -> tuple[Any, bool]:
    """The sweep's parent MLflow run: re-opened for a resumed sweep, else created with the spec."""
    state_path = sweep_dir / SWEEP_STATE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("digest") != digest:
            raise ConfigError(
                f"sweep {spec.name!r} at {sweep_dir} was started with another sweep spec or base "
                "config; choose another --name, or delete that directory to start over"
            )
        tracker = Tracker(uri, state["parent_run_id"])
        tracker.client.update_run(tracker.run_id, status="RUNNING")
        tracker.set_tags({"fusionpipe.resumed": "true"})
        return tracker, True
    git = git_info()
    tags = {
        "fusionpipe.kind": "sweep",
        "fusionpipe.sweep": spec.name,
        "fusionpipe.model": base.model.name,
        **git,
        **source_tags("fusionpipe tune", git),
        **data_version(base.resolved_paths().data.shards, base.data.rev),
        **ray_job_tags(),
    }
    tracker = Tracker.create_run(uri, experiment, spec.name, tags)
    tracker.log_params(flatten({"sweep": spec.model_dump(mode="json")}))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sweep.yaml").write_text(
            yaml.safe_dump(redact_value(spec.model_dump(mode="json")), sort_keys=False)
        )
        (Path(tmp) / "base_config.yaml").write_text(yaml.safe_dump(redacted_config(base), sort_keys=False))
        tracker.log_artifacts(tmp)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        state_path,
        json.dumps(
            {"parent_run_id": tracker.run_id, "digest": digest, "tracking_uri": redact_url_password(uri)}
        ).encode(),
    )
    return tracker, False


def _trial_rows(results: Any, sweep_dir: Path, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial: its sampled params, epochs run, best metric, best checkpoint, MLflow run."""
    rows = []
    for r in results:
        last = r.metrics or {}
        trial_id = last.get("trial_id") or Path(r.path).name.removeprefix("trial_")
        history: list[dict[str, Any]] = []
        df = r.metrics_dataframe
        if df is not None and spec.metric in df.columns:
            for rec in df.to_dict("records"):
                history.append(
                    {
                        "path": rec.get("checkpoint_path"),
                        "epoch": int(rec.get("epoch", -1)),
                        "metrics": {spec.metric: rec.get(spec.metric)},
                    }
                )
        best = best_of(history, spec.metric, spec.mode)
        state = trial_state(sweep_dir, spec.name, trial_id) or {}
        rows.append(
            {
                "trial_id": trial_id,
                "params": (r.config or {}).get("params", {}),
                "status": "ERROR" if r.error else "TERMINATED",
                "error": str(r.error).splitlines()[0] if r.error else None,
                "epochs": int(last.get(EPOCHS_DONE, 0)),
                "early_stopped": bool(not r.error and int(last.get(EPOCHS_DONE, 0)) < spec.scheduler.max_epochs),
                "best_metric": best["metrics"][spec.metric] if best else None,
                "best_epoch": best["epoch"] if best else None,
                "checkpoint": best["path"] if best else None,
                "mlflow_run_id": state.get("mlflow_run_id"),
            }
        )
    return sorted(rows, key=lambda row: row["trial_id"])


def _check_candidates(base_raw: dict[str, Any], spec: SweepSpec) -> None:
    """Check every candidate value of every field as a whole experiment (the dataset, the model built,
    the metric), with the other fields at their first values: a bad value fails now, not in trial 7
    an hour from now."""
    first = {k: candidate_values(d)[0] for k, d in spec.space.items()}
    problems = []
    for key, dist in spec.space.items():
        for value in candidate_values(dist)[1:]:  # the first values were checked together
            try:
                validate_experiment(
                    ExperimentConfig.model_validate(trial_raw_config(base_raw, spec, {**first, key: value}))
                )
            except ConfigError as e:
                detail = str(e).removeprefix("invalid experiment:\n")
                problems.append(f"space.{key} = {value!r}:\n{textwrap.indent(detail, '  ')}")
            except ValueError as e:  # pydantic's ValidationError
                problems.append(f"space.{key} = {value!r}: {e}")
    if problems:
        raise ConfigError(
            f"sweep {spec.name!r}: values that would fail their trials:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def run_under_parent(
    parent: Tracker, fit: Callable[[], Any], expected: int, what: str, finish: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """Run a Tune grid (``fit`` builds or restores the Tuner and fits it) whose trials nest under the MLflow
    run ``parent``, then ``finish(results)``; ``parent`` ends KILLED or FAILED on any way out but success.

    On Ctrl-C (or `fusionpipe jobs stop`) Tune saves its state and fit() returns normally: a grid with
    trials neither finished nor failed, or fewer than ``expected`` created, was interrupted, not done
    (KeyboardInterrupt naming ``what``)."""
    try:
        results = fit()
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    trials = tune_trials(results)
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished or len(trials) < expected:
        parent.end("KILLED")
        raise KeyboardInterrupt(f"{what} interrupted with {len(unfinished)} trial(s) unfinished")
    try:
        return finish(results)
    except BaseException as e:  # the trials are done, the bookkeeping failed (artifact store, an output file)
        parent.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def run_tune(
    config: str | Path,
    sweep: str | Path,
    overrides: list[str] | None = None,
    name: str | None = None,
    best_config_out: str | Path | None = None,
    verbose: int = 1,
    epoch_hooks: Sequence[EpochHook] = (),
) -> dict[str, Any]:
    """Validate, run (or resume) the sweep, log it to MLflow; returns the sweep summary.

    ``epoch_hooks`` go to every trial's run (:func:`pipelines.train.driver.run_training`): they run in its
    workers at the start of every epoch. A resumed sweep's trials get the hooks of the resuming call.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    loaded = load_config(config, overrides)
    base = resolve_data_rev(loaded)  # once here; trials reuse the resolved path
    spec = load_sweep(sweep)
    if name:
        try:
            spec.name = check_name(name)
        except ValueError as e:
            raise ConfigError(f"--name: {e}") from e
    base_raw = base.model_dump(mode="json")
    first = validate_sweep(base_raw, spec)
    validate_experiment(first)
    _check_candidates(base_raw, spec)
    resolved = base.resolved_paths()
    resolved_raw = resolved.model_dump(mode="json")
    storage_text = spec.storage_path or resolved.checkpoint.storage_path
    if "://" in storage_text:
        raise ConfigError(
            f"storage path {storage_text!r}: a sweep needs a filesystem path (local, or NFS shared by "
            "every node); object-store URIs are supported by `fusionpipe train` only"
        )
    storage = _abs(storage_text, project_root())
    sweep_dir = storage / spec.name
    uri = resolved.tracking.uri
    experiment = spec.experiment or base.tracking.experiment

    init_ray(first, concurrent_runs=spec.max_concurrent_trials)
    check_store_for_cluster(uri, len(alive_nodes()))
    parent, resumed = _open_parent_run(sweep_dir, spec, base, spec.digest(base_raw), uri, experiment)

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=resolved_raw,
            spec=spec.model_dump(mode="json"),
            parent_run_id=parent.run_id,
            sweep_dir=str(sweep_dir),
            root=str(project_root()),
            epoch_hooks=list(epoch_hooks),
        ),
        # The trial's driver only waits on its Ray Train run, whose workers hold the real resources; a
        # placement group cannot be empty, so it asks for one byte of memory instead of a CPU.
        {"CPU": 0, "memory": 1},
    )
    run_config = tune.RunConfig(
        name=spec.name,
        storage_path=str(storage),
        verbose=verbose,
        callbacks=[SweepCallback(str(sweep_dir), spec.model_dump(mode="json"))],
    )
    set_driver_tracking_uri(uri)

    def fit() -> Any:
        if resumed and tune.Tuner.can_restore(str(sweep_dir)):
            tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            scheduler = (
                ASHAScheduler(
                    time_attr=EPOCHS_DONE,
                    max_t=spec.scheduler.max_epochs,
                    grace_period=spec.scheduler.grace_period,
                    reduction_factor=spec.scheduler.reduction_factor,
                    # A trial that reaches max_epochs ends by itself and closes its own
                    # MLflow run; ASHA only stops the weak ones.
                    stop_last_trials=False,
                )
                if spec.scheduler.name == "asha"
                else FIFOScheduler()
            )
            tuner = tune.Tuner(
                trainable,
                param_space={"params": {k: tune_domain(d) for k, d in spec.space.items()}},
                tune_config=tune.TuneConfig(
                    metric=spec.metric,
                    mode=spec.mode,
                    num_samples=spec.num_samples,
                    scheduler=scheduler,
                    search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.max_concurrent_trials),
                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                ),
                run_config=run_config,
            )
        return tuner.fit()

    # The best config is written from the config as the user wrote it (relative paths, data.rev, log_model).
    return run_under_parent(
        parent,
        fit,
        expected_trials(spec),
        f"sweep {spec.name!r}",
        lambda results: _finish(
            results, spec, loaded.model_dump(mode="json"), sweep_dir, parent, resumed, best_config_out
        ),
    )


def _finish(
    results: Any,
    spec: SweepSpec,
    base_raw: dict[str, Any],
    sweep_dir: Path,
    parent: Any,
    resumed: bool,
    best_config_out: str | Path | None,
) -> dict[str, Any]:
    rows = _trial_rows(results, sweep_dir, spec)
    scored = [r for r in rows if r["best_metric"] is not None and math.isfinite(r["best_metric"])]
    errored = [r for r in rows if r["status"] == "ERROR"]
    summary: dict[str, Any] = {
        "sweep": spec.name,
        "experiment_path": str(sweep_dir),
        "parent_run_id": parent.run_id,
        "tracking_uri": redact_url_password(parent.uri),
        "resumed": resumed,
        "metric": spec.metric,
        "mode": spec.mode,
        "scheduler": spec.scheduler.name,
        "num_trials": len(rows),
        "trial_epochs": sum(r["epochs"] for r in rows),
        "errored": [r["trial_id"] for r in errored],
        "trials": rows,
        "best": None,
        "best_config_path": None,
    }
    if scored:
        best = (max if spec.mode == "max" else min)(scored, key=lambda r: r["best_metric"])
        out = Path(best_config_out) if best_config_out else sweep_dir / "best_config.yaml"
        best_raw, text = best_config(best, spec, base_raw, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text.encode())
        summary["best"] = {
            "trial_id": best["trial_id"],
            "params": best["params"],
            "config": best_raw,
            "metric": {spec.metric: best["best_metric"]},
            "epoch": best["best_epoch"],
            "mlflow_run_id": best["mlflow_run_id"],
            "checkpoint": best["checkpoint"],
        }
        summary["best_config_path"] = str(out)
        name = base_raw["tracking"].get("register_as")
        if name and best["mlflow_run_id"] and best["checkpoint"]:
            alias = base_raw["tracking"].get("register_alias") or "best"
            summary["best"]["registered_model"] = register_best_trial(best, name, alias, parent.uri)
        parent.log_artifact(out)
        parent.log_metrics({f"best/{spec.metric}": best["best_metric"]}, step=0)
        parent.set_tags(
            {
                "fusionpipe.best_trial": best["trial_id"],
                "fusionpipe.best_run_id": best["mlflow_run_id"] or "",
                "fusionpipe.best_checkpoint": best["checkpoint"] or "",
            }
        )
    parent.log_metrics(
        {
            "tune/trials": len(rows),
            "tune/trial_epochs": summary["trial_epochs"],
            "tune/early_stopped": sum(r["early_stopped"] for r in rows),
        },
        step=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "trials.json"
        p.write_text(json.dumps(redact_value(rows), indent=2, sort_keys=True))
        parent.log_artifact(p)
    parent.end("FAILED" if errored else "FINISHED")
    return summary


def register_best_trial(best: dict[str, Any], name: str, alias: str, uri: str) -> str:
    """Log the best trial's model (from its best checkpoint, weights only) to its MLflow run and register
    it as a new version of ``name`` with ``alias``; the ``models:/NAME@ALIAS`` URI."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_weights_only(best["checkpoint"], tmp, {"normalisation": NORMALISATION})
        tracker = Tracker(uri, best["mlflow_run_id"])
        model_uri = log_final_model(tracker, str(weights), read_meta(weights, require=("model_config",)))
    reg = register_logged_model(uri, best["mlflow_run_id"], model_uri, name, alias)
    return f"models:/{reg.name}@{alias}"


def best_config(
    best: dict[str, Any], spec: SweepSpec, base_raw: dict[str, Any], out: Path
) -> tuple[dict[str, Any], str]:
    """The best trial's config, and the YAML text of ``best_config.yaml``: the base config as the user
    wrote it with the trial's values, for ``fusionpipe train --config`` (a new run name, the base's
    ``log_model``), and no password."""
    best_raw = trial_raw_config(base_raw, spec, best["params"])
    best_raw = set_fields(
        best_raw,
        [
            ("tracking.run_name", None),
            ("tracking.log_model", base_raw["tracking"]["log_model"]),
            ("tracking.register_as", base_raw["tracking"].get("register_as")),
        ],
    )
    header = (
        f"# Best trial {best['trial_id']} of sweep {spec.name!r}: {spec.metric} = {best['best_metric']:.6g}"
        f" (epoch {best['best_epoch']}).\n# Train it: fusionpipe train --config {out}\n"
    )
    given_uri = best_raw["tracking"].get("uri")
    if given_uri and redact_url_password(given_uri) != given_uri:
        # The file is logged to MLflow and read by people: no password in it. A null URI reads
        # MLFLOW_TRACKING_URI, which is where a password belongs.
        best_raw = set_fields(best_raw, [("tracking.uri", None)])
        header += (
            f"# tracking.uri ({redact_url_password(given_uri)}) holds a password and is left out: "
            "set MLFLOW_TRACKING_URI to it.\n"
        )
    # Any other field with credentials in a URI (checkpoint.storage_path s3://KEY:SECRET@BUCKET/...) keeps
    # the place it names without them: the run then reads them from the environment.
    for key, value in flatten(best_raw).items():
        if redact_value(value) != value:
            best_raw = set_fields(best_raw, [(key, strip_secrets(value))])
            header += (
                f"# {key} ({redact_url_password(str(value))}) holds credentials, left out here: provide them on "
                f"the nodes (environment, instance role) or give them with --set {key}=...\n"
            )
    ExperimentConfig.model_validate(best_raw)  # what `fusionpipe train --config` will load
    return best_raw, header + yaml.safe_dump(best_raw, sort_keys=False)


def expected_trials(spec: SweepSpec) -> int:
    return spec.num_samples * grid_size(spec)
