"""The sweep driver's Tune callback, in a module of its own so that it pickles by reference.

Tune pickles a sweep's callbacks into its ``tuner.pkl`` and a resumed sweep unpickles them. A class
defined inside a function would be pickled by value, with every variable it closes over: the
tracking URI, password included. This one holds the sweep directory and the spec; the URI is looked
up when a trial ends (``pipelines.tune.trials.driver_tracking_uri``), so it is never stored, and a resumed
sweep uses the URI it was resumed with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipelines.tune.spec import SweepSpec
from pipelines.tune.trials import close_stopped_trial, driver_tracking_uri


class SweepCallback(Callback):
    """Finishes the MLflow run of a trial that Tune ended from outside (ASHA stop, or a crash)."""

    def __init__(self, sweep_dir: str, spec: dict[str, Any]) -> None:
        self.sweep_dir, self.spec = sweep_dir, spec

    def _close(self, trial: Any, failed: bool) -> None:
        close_stopped_trial(
            Path(self.sweep_dir), SweepSpec.model_validate(self.spec), trial, driver_tracking_uri(), failed=failed
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._close(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._close(trial, failed=True)
