"""``fusionpipe study``: every row x seed of a study as one Ray Tune grid, one MLflow parent run, one table.

The sweep machinery (:mod:`pipelines.tune.driver`) runs it: ``Tuner(driver_fn)`` whose trials each call
:func:`pipelines.train.driver.run_training` with the report callback, a FIFO scheduler (every trial runs
its full budget), trial resources ``{"CPU": 0, "memory": 1}`` (the trial's Ray Train workers hold the real
ones), and the same resume: the same name and storage restore Tune's state, finished trials are not run
again, a changed spec or config under that name is refused.

Layout under ``<storage>/<study name>/``: Tune's experiment state, ``fusionpipe-study.json`` (parent
run id and the study digest), ``trials/<study>-<trial id>/`` (each trial's Ray Train run) and, unless
``--out`` says otherwise, the table files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from datasets.manifest import load_manifest, write_atomic
from fusion import build_model
from fusion.cost import model_cost
from pipelines.analysis.compare import metric_direction
from pipelines.config import (
    PROJECT_ROOT_ENV,
    ConfigError,
    ExperimentConfig,
    _abs,
    flatten,
    model_config,
    project_root,
    set_fields,
)
from pipelines.study.spec import StudySpec, Trial, _plain_name, load_study, validate_study
from pipelines.study.table import STUDY_KIND, aggregate, write_table
from pipelines.track.redact import redact_value
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
from pipelines.train.driver import init_ray, run_training
from pipelines.train.worker import EpochHook
from pipelines.tune.callback import SweepCallback
from pipelines.tune.driver import _report_callback, run_under_parent
from pipelines.tune.spec import SweepSpec
from pipelines.tune.trials import set_driver_tracking_uri, trial_run_name, trial_state

STUDY_STATE = "fusionpipe-study.json"


def _trial(
    config: dict[str, Any],
    *,
    study: str,
    configs: dict[str, dict[str, Any]],
    parent_run_id: str,
    study_dir: str,
    root: str,
    epoch_hooks: list[EpochHook],
) -> None:
    """One trial (in a Tune trial actor): ``fusionpipe train`` of one row with one seed."""
    os.environ[PROJECT_ROOT_ENV] = root
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    row, seed = config["row"], int(config["seed"])
    raw = set_fields(configs[row], [("train.seed", seed), ("checkpoint.storage_path", str(Path(study_dir) / "trials"))])
    run_training(
        ExperimentConfig.model_validate(raw),
        run_name=trial_run_name(study, trial_id),
        callbacks=[_report_callback()],
        epoch_hooks=epoch_hooks,
        close_on_error=False,  # the driver's callback closes a failed trial's run (as in a sweep)
        extra_tags={
            "mlflow.parentRunId": parent_run_id,
            "fusionpipe.study": study,
            "fusionpipe.study_row": row,
            "fusionpipe.seed": str(seed),
            "fusionpipe.trial_id": trial_id,
        },
    )


def input_size(cfg: ExperimentConfig, manifest: dict[str, Any]) -> tuple[int, int] | None:
    """The (H, W) a model of ``cfg`` is fed: ``data.augment.resize``, else ``data.augment.crop``, else the
    dataset's own size when its manifest records one (synthetic shards); None when images vary in size."""
    aug = cfg.data.augment
    if aug.resize is not None:
        return tuple(aug.resize)  # type: ignore[return-value]
    if aug.crop is not None:
        return tuple(aug.crop)  # type: ignore[return-value]
    params = manifest.get("params", {})
    h, w = params.get("height"), params.get("width")
    if isinstance(h, int) and isinstance(w, int):
        return h, w
    return None


def row_cost(cfg: ExperimentConfig) -> dict[str, Any]:
    """Parameters and FLOPs of one forward pass of the row's model at its input size (FLOPs None when
    the size is not fixed)."""
    resolved = cfg.resolved_paths()
    manifest = load_manifest(resolved.data.shards)
    model = build_model(model_config(cfg, len(manifest["classes"])))
    size = input_size(cfg, manifest)
    if size is None:
        return {"params": sum(p.numel() for p in model.parameters()), "flops": None, "input_size": None}
    return {**model_cost(model, list(cfg.data.modalities), size), "input_size": list(size)}


def _callback_spec(spec: StudySpec, trials: list[Trial]) -> dict[str, Any]:
    """The sweep spec the sweep's Tune callback reads to close the MLflow run of a crashed trial."""
    metric = spec.metrics[0]
    return SweepSpec(
        name=spec.name,
        metric=metric,
        mode="max" if metric_direction(metric) == "higher" else "min",
        scheduler={"name": "fifo", "max_epochs": max(t.config.train.epochs for t in trials)},
        space={"row": {"grid": [r.name for r in spec.rows]}},
    ).model_dump(mode="json")


def _open_parent_run(
    study_dir: Path, spec: StudySpec, configs: dict[str, dict[str, Any]], uri: str, experiment: str
) -> tuple[Tracker, bool]:
    state_path = study_dir / STUDY_STATE
    digest = spec.digest(configs)
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{state_path}: unreadable study state ({e}); delete that directory to start over") from e
        if state.get("digest") != digest:
            raise ConfigError(
                f"study {spec.name!r} at {study_dir} was started with another study spec or row configs; "
                "choose another --name, or delete that directory to start over"
            )
        tracker = Tracker(uri, state["parent_run_id"])
        tracker.client.update_run(tracker.run_id, status="RUNNING")
        tracker.set_tags({"fusionpipe.resumed": "true"})
        return tracker, True
    git = git_info()
    tags = {
        "fusionpipe.kind": STUDY_KIND,
        "fusionpipe.study": spec.name or "",
        **git,
        **source_tags("fusionpipe study", git),
        **ray_job_tags(),
    }
    tracker = Tracker.create_run(uri, experiment, spec.name or "study", tags)
    tracker.log_params(flatten({"study": spec.model_dump(mode="json")}))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "study.yaml").write_text(
            yaml.safe_dump(redact_value(spec.model_dump(mode="json")), sort_keys=False)
        )
        (Path(tmp) / "configs").mkdir()
        for row, raw in configs.items():
            (Path(tmp) / "configs" / f"{row}.yaml").write_text(
                yaml.safe_dump(redacted_config(ExperimentConfig.model_validate(raw)), sort_keys=False)
            )
        tracker.log_artifacts(tmp)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        state_path,
        json.dumps(
            {"parent_run_id": tracker.run_id, "digest": digest, "tracking_uri": redact_url_password(uri)}
        ).encode(),
    )
    return tracker, False


def run_records(uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """One record per FINISHED trial run of the study: row, seed, run id, final ``val`` metrics (the
    last logged value of each: the final epoch's), final ``model`` diagnostics (``model/<name>``, e.g.
    CEN's exchanged channels) and the training time (the sum of ``train/epoch_s``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000
    )
    records = []
    for run in runs:
        tags = run.data.tags
        if run.info.status != "FINISHED" or "fusionpipe.study_row" not in tags:
            continue
        by_step: dict[int, float] = {}
        for m in client.get_metric_history(run.info.run_id, "train/epoch_s"):
            by_step[m.step] = m.value  # a resumed epoch logged twice counts once
        records.append(
            {
                "row": tags["fusionpipe.study_row"],
                "seed": int(tags["fusionpipe.seed"]),
                "run_id": run.info.run_id,
                "val": {k.removeprefix("val/"): v for k, v in run.data.metrics.items() if k.startswith("val/")},
                "model": {k.removeprefix("model/"): v for k, v in run.data.metrics.items() if k.startswith("model/")},
                "train_s": sum(by_step.values()),
            }
        )
    return sorted(records, key=lambda r: (r["row"], r["seed"]))


def run_study(
    spec_path: str | Path,
    overrides: Sequence[str] = (),
    name: str | None = None,
    out: str | Path | None = None,
    verbose: int = 1,
    epoch_hooks: Sequence[EpochHook] = (),
) -> dict[str, Any]:
    """Validate every row x seed, run (or resume) the study's grid, write and log its table; the summary."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = load_study(spec_path)
    if name:
        try:
            spec.name = _plain_name(name, "study name")
        except ValueError as e:
            raise ConfigError(f"--name: {e}") from e
    trials = validate_study(spec, list(overrides))
    first = trials[0].config.resolved_paths()
    uri = first.tracking.uri
    experiment = spec.experiment or first.tracking.experiment
    # One row, one config: every trial of a row differs only in train.seed (set by the trial).
    configs = {}
    for t in trials:
        if t.row not in configs:
            resolved = t.config.resolved_paths()
            configs[t.row] = set_fields(
                resolved.model_dump(mode="json"), [("tracking.uri", uri), ("tracking.experiment", experiment)]
            )
    storage_text = spec.storage_path or first.checkpoint.storage_path
    if "://" in storage_text:
        raise ConfigError(
            f"storage path {storage_text!r}: a study needs a filesystem path (local, or NFS shared by every node)"
        )
    study_dir = _abs(storage_text, project_root()) / str(spec.name)
    costs = {t.row: row_cost(t.config) for t in trials if t.seed == spec.seeds[0]}

    init_ray(trials[0].config, concurrent_runs=spec.max_concurrent_trials)
    check_store_for_cluster(uri, len(alive_nodes()))
    parent, resumed = _open_parent_run(study_dir, spec, configs, uri, experiment)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            study=spec.name,
            configs=configs,
            parent_run_id=parent.run_id,
            study_dir=str(study_dir),
            root=str(project_root()),
            epoch_hooks=list(epoch_hooks),
        ),
        {"CPU": 0, "memory": 1},  # as a sweep's trial: its Ray Train workers hold the real resources
    )
    run_config = tune.RunConfig(
        name=spec.name,
        storage_path=str(study_dir.parent),
        verbose=verbose,
        callbacks=[SweepCallback(str(study_dir), _callback_spec(spec, trials))],
    )
    set_driver_tracking_uri(uri)

    def fit() -> Any:
        if resumed and tune.Tuner.can_restore(str(study_dir)):
            tuner = tune.Tuner.restore(str(study_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "row": tune.grid_search([r.name for r in spec.rows]),
                    "seed": tune.grid_search(list(spec.seeds)),
                },
                tune_config=tune.TuneConfig(
                    num_samples=1,
                    scheduler=FIFOScheduler(),
                    search_alg=BasicVariantGenerator(max_concurrent=spec.max_concurrent_trials),
                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                ),
                run_config=run_config,
            )
        return tuner.fit()

    return run_under_parent(
        parent,
        fit,
        len(trials),
        f"study {spec.name!r}",
        lambda results: _finish(spec, trials, results, costs, study_dir, parent, resumed, uri, out),
    )


def _finish(
    spec: StudySpec,
    trials: list[Trial],
    results: Any,
    costs: dict[str, dict[str, Any]],
    study_dir: Path,
    parent: Tracker,
    resumed: bool,
    uri: str,
    out: str | Path | None,
) -> dict[str, Any]:
    errored = []
    for r in results:
        if r.error:
            cfg = r.config or {}
            state = trial_state(study_dir, str(spec.name), Path(r.path).name.removeprefix("trial_")) or {}
            errored.append(
                {
                    "row": cfg.get("row"),
                    "seed": cfg.get("seed"),
                    "error": str(r.error).splitlines()[0],
                    "mlflow_run_id": state.get("mlflow_run_id"),
                }
            )
    records = run_records(uri, parent.run_id)
    rows_info = []
    for row in spec.rows:
        cfg = next(t.config for t in trials if t.row == row.name)
        rows_info.append({"row": row.name, "config": row.config, "model": cfg.model.name, **costs[row.name]})
    table = {
        "study": spec.name,
        "parent_run_id": parent.run_id,
        "metrics": list(spec.metrics),
        "seeds": list(spec.seeds),
        "baselines": list(spec.baselines),
        "rows": aggregate(records, rows_info, spec.metrics, spec.baselines),
        "input_sizes": {r["row"]: r["input_size"] for r in rows_info},
        "runs": [
            {
                "row": r["row"],
                "seed": r["seed"],
                "run_id": r["run_id"],
                "train_s": r["train_s"],
                **{m: r["val"].get(m.removeprefix("val/")) for m in spec.metrics},
                "model": r["model"],
            }
            for r in records
        ],
    }
    out_dir = Path(out) if out else study_dir
    files = write_table(table, out_dir)
    for f in files:
        parent.log_artifact(f)
    parent.log_metrics({"study/trials": len(records), "study/errored": len(errored)}, step=0)
    parent.end("FAILED" if errored else "FINISHED")
    return {
        "study": spec.name,
        "parent_run_id": parent.run_id,
        "tracking_uri": redact_url_password(uri),
        "experiment_path": str(study_dir),
        "resumed": resumed,
        "num_trials": len(trials),
        "finished": len(records),
        "errored": errored,
        "table": table,
        "files": [str(f) for f in files],
    }
