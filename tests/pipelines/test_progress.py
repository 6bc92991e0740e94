"""Progress lines: throttled by a clock (a fake one here), with rates, ETAs and the run's ETA."""

from __future__ import annotations

import math

import pytest

from pipelines.progress import Progress, format_duration, run_eta_s
from pipelines.train.worker import epoch_line


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_line_every_n_seconds_with_steps_loss_rate_and_eta():
    clock, lines = FakeClock(), []
    p = Progress("epoch 1/3", 10, lines.append, every_s=5, scale=2, clock=clock)
    calls = []

    def loss():
        calls.append(1)
        return {"loss": 0.5}

    for step in range(1, 11):
        clock.t += 2.0  # 2 s per step, 4 samples per step on this rank
        p.update(step, 4 * step, loss)
    # due at t = 106 (step 3), 112 (step 6), 118 (step 9): three lines in 20 s, not one per step
    assert lines == [
        "epoch 1/3  step 3/10 (30%)  loss 0.5000  4.0 samples/s  ETA 0:14",
        "epoch 1/3  step 6/10 (60%)  loss 0.5000  4.0 samples/s  ETA 0:08",
        "epoch 1/3  step 9/10 (90%)  loss 0.5000  4.0 samples/s  ETA 0:02",
    ]
    assert len(calls) == 3  # the loss is read only for a line that is written
    assert p.finish() is None  # training's epoch line follows: no last progress line


def test_final_line_and_unknown_total():
    clock, lines = FakeClock(), []
    p = Progress("evaluate val", None, lines.append, every_s=10, unit="batch", final=True, clock=clock)
    clock.t += 3
    assert p.update(1, 8) is None
    clock.t += 4
    p.update(2, 16)
    assert p.finish() == "evaluate val  batch 2  2.3 samples/s  0:07 elapsed"
    assert lines == ["evaluate val  batch 2  2.3 samples/s  0:07 elapsed"]


def test_zero_seconds_turns_lines_off_and_bad_intervals_are_refused():
    clock, lines = FakeClock(), []
    p = Progress("x", 5, lines.append, every_s=0, final=True, clock=clock)
    clock.t += 1000
    p.update(5, 5)
    p.finish()
    assert lines == []
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="every_s must be a finite number >= 0"):
            Progress("x", 5, lines.append, every_s=bad)


def test_durations_and_run_eta():
    assert format_duration(0) == "0:00"
    assert format_duration(61.4) == "1:01"
    assert format_duration(3 * 3600 + 2 * 60 + 5) == "3:02:05"
    assert format_duration(math.nan) == "?" and format_duration(-1) == "?"
    assert run_eta_s(120.0, 2, 3) == 180.0  # 60 s per epoch, 3 to go
    assert math.isnan(run_eta_s(0.0, 0, 3))


def test_epoch_line_carries_the_run_eta():
    m = {"train/loss/total": 1.25, "val/semseg/miou": 0.5, "train/samples_per_s": 12.0, "train/epoch_s": 30.0}
    line = epoch_line(m, 1, 4, "val/semseg/miou", eta_s=75.0)
    assert line.startswith("epoch 2/4  loss 1.2500  val/semseg/miou 0.5000")
    assert line.endswith("12.0 samples/s  30 s  run ETA 1:15")
    assert "ETA" not in epoch_line(m, 3, 4, "val/semseg/miou", eta_s=0.0)  # the last epoch: nothing left


def test_the_interval_comes_from_the_environment_and_a_bad_one_is_named(monkeypatch):
    from pipelines.config import ConfigError
    from pipelines.progress import PROGRESS_ENV, progress_every_s

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_every_s() == 30.0
    monkeypatch.setenv(PROGRESS_ENV, "2.5")
    assert progress_every_s() == 2.5
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv(PROGRESS_ENV, bad)
        with pytest.raises(ConfigError, match=f"FUSIONPIPE_PROGRESS_EVERY_S='{bad}': must be a number of seconds >= 0"):
            progress_every_s()


def test_train_with_a_bad_interval_exits_2_before_ray_starts(monkeypatch, tmp_path, smoke_shards):
    from click.testing import CliRunner

    from pipelines.cli.main import cli
    from tests import REPO_ROOT

    monkeypatch.setenv("FUSIONPIPE_PROGRESS_EVERY_S", "often")
    sets = [
        f"data.shards={smoke_shards}",
        f"tracking.uri=sqlite:///{tmp_path}/m.db",
        f"checkpoint.storage_path={tmp_path}",
    ]
    args = ["train", "--config", str(REPO_ROOT / "configs" / "smoke.yaml"), *[a for s in sets for a in ("--set", s)]]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert "FUSIONPIPE_PROGRESS_EVERY_S='often'" in r.output and "starting Ray" not in r.output
    assert not (tmp_path / "m.db").exists()  # nothing was started or created
