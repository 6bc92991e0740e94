"""A sweep reads each trial's run-state file the way `train` does: a corrupt one is a named error."""

import pytest

from pipelines.config import ConfigError
from pipelines.track.run_record import RUN_STATE
from pipelines.tune.trials import trial_run_name, trial_state


def test_a_trials_run_state_is_read_or_named_when_corrupt(tmp_path):
    assert trial_state(tmp_path, "s", "t1") is None  # the trial's run has not started
    d = tmp_path / "trials" / trial_run_name("s", "t1")
    d.mkdir(parents=True)
    (d / RUN_STATE).write_text('{"mlflow_run_id": "abc"}')
    assert trial_state(tmp_path, "s", "t1")["mlflow_run_id"] == "abc"
    (d / RUN_STATE).write_text('{"mlflow_run_id": ')
    with pytest.raises(ConfigError, match=rf"{RUN_STATE}: corrupt run-state file \(not valid JSON"):
        trial_state(tmp_path, "s", "t1")
