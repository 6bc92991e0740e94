"""A sweep's trials as the driver and its Tune callback see them: names, state, checkpoints, and
closing the MLflow run of a trial that Tune ended from outside (ASHA stop, or a crash)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from pipelines.checkpoints import CheckpointError, verify_checkpoint
from pipelines.track.run_record import RUN_STATE, read_run_state
from pipelines.track.tracker import Tracker
from pipelines.tune.spec import SweepSpec

log = logging.getLogger(__name__)
EPOCHS_DONE = "epochs_done"  # what ASHA counts: epochs finished by the trial (1-based, survives resumes)


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def trial_state(sweep_dir: Path, sweep: str, trial_id: str) -> dict[str, Any] | None:
    """The trial's run-state file, or None before its run started; a corrupt one is a ConfigError naming it."""
    name = trial_run_name(sweep, trial_id)
    return read_run_state(str(sweep_dir / "trials" / name / RUN_STATE), name)


def scan_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete, intact checkpoint of a Ray Train run directory, as ``{"path", "epoch", "metrics"}``:
    each file verified (:func:`pipelines.checkpoints.verify_checkpoint`), so that a damaged one is never
    logged as the trial's best or last."""
    found = []
    for d in sorted(run_dir.glob("checkpoint_*")):
        try:
            meta = verify_checkpoint(d)
        except CheckpointError as e:  # being written when the trial was stopped, or damaged since
            log.warning("checkpoint %s left out: %s", d, e)
            continue
        found.append({"path": str(d), "epoch": meta["epoch"], "metrics": meta.get("metrics", {})})
    return found


def best_of(items: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    scored = [
        c for c in items if isinstance(c["metrics"].get(metric), (int, float)) and math.isfinite(c["metrics"][metric])
    ]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda c: c["metrics"][metric])


def close_stopped_trial(sweep_dir: Path, spec: SweepSpec, trial: Any, uri: str, failed: bool) -> None:
    """Tune ended a trial from outside (ASHA stop, or a crash): finish its MLflow run properly."""
    state = trial_state(sweep_dir, spec.name, trial.trial_id)
    if state is None:
        return
    tracker = Tracker(uri, state["mlflow_run_id"])
    try:
        if tracker.client.get_run(tracker.run_id).info.status != "RUNNING":
            return  # run_training finished (or failed) it itself
        done = int((trial.last_result or {}).get(EPOCHS_DONE, 0))
        ckpts = scan_checkpoints(sweep_dir / "trials" / trial_run_name(spec.name, trial.trial_id))
        tags = {"fusionpipe.tune.epochs": str(done)}
        if not failed:
            tags["fusionpipe.tune.early_stopped"] = str(done < spec.scheduler.max_epochs).lower()
        best = best_of(ckpts, spec.metric, spec.mode)
        last = max(ckpts, key=lambda c: c["epoch"]) if ckpts else None
        if best:
            tracker.log_artifacts(best["path"], "checkpoints/best")
            tags.update({"fusionpipe.best_checkpoint": best["path"], "fusionpipe.best_epoch": str(best["epoch"])})
        if last:
            tracker.log_artifacts(last["path"], "checkpoints/last")
            tags["fusionpipe.last_checkpoint"] = last["path"]
        tracker.set_tags(tags)
        tracker.end("FAILED" if failed else "FINISHED")
    except Exception as e:  # noqa: BLE001 - bookkeeping must never turn a good trial into a failed one
        log.warning("could not close the MLflow run of trial %s: %s", trial.trial_id, e)


#: The driver's tracking URI, set by :func:`run_tune` (see :mod:`pipelines.tune.callback`).
_DRIVER: dict[str, str] = {}


def set_driver_tracking_uri(uri: str) -> None:
    _DRIVER["tracking_uri"] = uri


def driver_tracking_uri() -> str:
    return _DRIVER["tracking_uri"]
