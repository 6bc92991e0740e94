"""The sweep spec: shapes, bounds, reserved fields, and validation against the base config (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, ExperimentConfig, load_config
from pipelines.tune.spec import candidate_values, grid_size, load_sweep, trial_raw_config, tune_domain, validate_sweep
from tests import REPO_ROOT


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return p


def test_shipped_sweeps_fit_their_base_configs():
    for base, sweep in [("smoke", "smoke"), ("mtinet", "mtinet_weights"), ("cen", "cen"), ("ann", "ann")]:
        spec = load_sweep(REPO_ROOT / "configs" / "sweeps" / f"{sweep}.yaml")
        cfg = validate_sweep(load_config(REPO_ROOT / "configs" / f"{base}.yaml").model_dump(mode="json"), spec)
        assert spec.name == sweep and cfg.train.epochs == spec.scheduler.max_epochs
        assert cfg.checkpoint.metric == spec.metric and cfg.tracking.log_model is False


def test_trial_config_applies_values_and_fixed_settings():
    spec = load_sweep(REPO_ROOT / "configs" / "sweeps" / "smoke.yaml")
    base = load_config(REPO_ROOT / "configs" / "smoke.yaml").model_dump(mode="json")
    raw = trial_raw_config(base, spec, {"optim.lr": 1e-05, "loss.weights.depth": 2.0})
    cfg = ExperimentConfig.model_validate(raw)
    assert cfg.optim.lr == 1e-05  # a float YAML would read as a string ("1e-05") stays a float
    assert cfg.loss.weights == {"depth": 2.0}
    assert (cfg.train.epochs, cfg.train.workers, cfg.train.cpus_per_worker) == (3, 1, 1)
    assert base["optim"]["lr"] == 0.002  # the base is not modified


@pytest.mark.parametrize(
    "space, message",
    [
        ("optim.lr: {uniform: [0.1, 0.01]}", r"space.optim.lr.uniform: low 0.1 must be < high 0.01"),
        ("optim.lr: {loguniform: [0, 0.01]}", r"space.optim.lr.loguniform: low 0 must be > 0"),
        ("optim.lr: {normal: [0, 1]}", r"space.optim.lr: expected one of"),
        ("optim.lr: {choice: []}", r"space.optim.lr.choice: expected a non-empty list"),
        ("train.batch_size: {randint: [1.5, 4]}", r"space.train.batch_size.randint: bounds must be integers"),
        ("train.epochs: {choice: [1, 2]}", r"space.train.epochs: set by the sweep itself"),
    ],
)
def test_bad_distributions_name_the_field(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, f"space:\n  {space}\n"))


def test_bad_spec_keys_and_scheduler(tmp_path):
    with pytest.raises(ConfigError, match=r"scheduler: grace_period 5 > max_epochs 3"):
        load_sweep(
            _write(tmp_path, "scheduler: {max_epochs: 3, grace_period: 5}\nspace: {optim.lr: {choice: [0.1]}}\n")
        )
    with pytest.raises(ConfigError, match=r"metirc: unknown key"):
        load_sweep(_write(tmp_path, "metirc: val/semseg/miou\nspace: {optim.lr: {choice: [0.1]}}\n"))
    with pytest.raises(ConfigError, match=r"no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")


def test_values_are_checked_against_the_base_config(tmp_path):
    base = load_config(REPO_ROOT / "configs" / "smoke.yaml").model_dump(mode="json")
    spec = load_sweep(
        _write(
            tmp_path,
            "space:\n  optim.lrr: {choice: [0.1]}\n  optim.lr: {uniform: [-1, 0.1]}\n"
            "  loss.weights.semseg: {choice: [1.0, -2.0]}\n",
        )
    )
    with pytest.raises(ConfigError) as e:
        validate_sweep(base, spec)
    text = str(e.value)
    assert "space.optim.lrr = 0.1: optim.lrr: unknown key" in text
    assert "space.optim.lr = -1.0: optim.lr: Input should be greater than 0" in text
    assert "space.loss.weights.semseg = -2.0" in text and "negative weight" in text
    assert "space.loss.weights.semseg = 1.0" not in text  # valid values are not reported


def test_candidates_domains_and_grid_size(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    assert candidate_values({"randint": [2, 8]}) == [2, 7]  # Tune's upper bound is exclusive
    lo, hi, inside = candidate_values({"loguniform": [1e-4, 1e-2]})
    assert (lo, hi) == (1e-4, 1e-2) and 1e-4 < inside < 1e-2
    lo, hi, inside = candidate_values({"uniform": [2, 8]})
    assert (lo, hi) == (2.0, 8.0) and 2 < inside < 8 and not inside.is_integer()
    assert candidate_values({"grid": [[1, 3], [2]]}) == [[1, 3], [2]]
    assert isinstance(tune_domain({"choice": [1, 2]}), Categorical)
    assert isinstance(tune_domain({"loguniform": [1e-4, 1e-2]}), Float)
    assert isinstance(tune_domain({"randint": [2, 8]}), Integer)
    assert tune_domain({"grid": [1, 2]}) == {"grid_search": [1, 2]}
    spec = load_sweep(
        _write(
            tmp_path, "num_samples: 2\nspace:\n  a.b: {grid: [1, 2, 3]}\n  c.d: {grid: [x, y]}\n  e.f: {choice: [1]}\n"
        )
    )
    assert grid_size(spec) == 6


def test_digest_identifies_spec_and_base(tmp_path):
    spec = load_sweep(_write(tmp_path, "space: {optim.lr: {choice: [0.1, 0.2]}}\n"))
    base = load_config(REPO_ROOT / "configs" / "smoke.yaml").model_dump(mode="json")
    other = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["optim.lr=0.5"]).model_dump(mode="json")
    assert spec.digest(base) == spec.digest(base) and spec.digest(base) != spec.digest(other)
    assert spec.digest(base) != spec.model_copy(update={"num_samples": 9}).digest(base)


def test_stdout_to_stderr_keeps_stdout_clean(capfd):
    import os

    from pipelines.cli.output import stdout_to_stderr

    with stdout_to_stderr(True):
        print("progress")
        os.write(1, b"from C\n")
    print("result")
    out, err = capfd.readouterr()
    assert out == "result\n" and "progress" in err and "from C" in err


def test_sweep_name_must_be_one_directory_name(tmp_path):
    with pytest.raises(ConfigError, match=r"name: sweep name '../up'"):
        load_sweep(_write(tmp_path, "name: ../up\nspace: {optim.lr: {choice: [0.1]}}\n"))
    assert load_sweep(_write(tmp_path, "name: lr-v1.2\nspace: {optim.lr: {choice: [0.1]}}\n")).name == "lr-v1.2"


def test_url_passwords_are_redacted_in_logged_params():
    from pipelines.track.tracker import _param_value, redact_url_password

    assert redact_url_password("http://bob:s3cr3t@10.0.0.5:5000") == "http://bob:***@10.0.0.5:5000"
    assert _param_value("https://u:p%40ss@mlflow.example/x") == "https://u:***@mlflow.example/x"
    assert _param_value("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"


def test_a_continuous_range_on_an_integer_field_is_refused(tmp_path):
    base = load_config(REPO_ROOT / "configs" / "smoke.yaml").model_dump(mode="json")
    spec = load_sweep(_write(tmp_path, "space:\n  train.batch_size: {uniform: [2, 8]}\n"))
    with pytest.raises(
        ConfigError,
        match=r"space.train.batch_size = 3.88\d*: train.batch_size: expected a whole number.* "
        r"\(a uniform range draws fractions: use randint",
    ) as e:
        validate_sweep(base, spec)
    # Integer fields are strict: even a range's whole-valued ends (2.0, 8.0) are floats there.
    assert "space.train.batch_size = 2.0: train.batch_size: expected a whole number" in str(e.value)


def test_every_candidate_is_checked_as_a_whole_experiment(tmp_path, smoke_shards):
    from pipelines.tune.driver import _check_candidates

    base = load_config(REPO_ROOT / "configs" / "smoke.yaml", [f"data.shards={smoke_shards}"]).model_dump(mode="json")
    spec = load_sweep(
        _write(
            tmp_path,
            "space:\n  train.batch_size: {choice: [2, 64]}\n"
            "  data.tasks: {choice: [[semseg, depth], [depth]]}\n"
            "  optim.lr: {choice: [0.01, 0.001]}\n",
        )
    )
    validate_sweep(base, spec)  # every value fits the schema
    with pytest.raises(ConfigError) as e:
        _check_candidates(base, spec)
    text = str(e.value)
    assert "space.train.batch_size = 64:\n    - train: 16 training samples < workers × batch_size = 128" in text
    assert "space.data.tasks = ['depth']:" in text and "needs at least two (tasks + auxiliary_tasks)" in text
    assert "space.optim.lr" not in text  # valid values are not reported


def test_a_misspelt_metric_is_refused_before_the_sweep(tmp_path, smoke_shards):
    from pipelines.train.driver import validate_experiment

    base = load_config(REPO_ROOT / "configs" / "smoke.yaml", [f"data.shards={smoke_shards}"]).model_dump(mode="json")
    spec = load_sweep(_write(tmp_path, "metric: val/semseg/mIoU\nspace:\n  optim.lr: {choice: [0.01]}\n"))
    with pytest.raises(
        ConfigError,
        match=r"checkpoint.metric: no metric 'val/semseg/mIoU'; semseg has "
        r"val/semseg/mean_acc, val/semseg/miou, val/semseg/pixel_acc",
    ):
        validate_experiment(validate_sweep(base, spec))


def test_no_tracking_password_in_the_best_config_or_the_pickled_callback(tmp_path, monkeypatch):
    import ray.cloudpickle
    import yaml

    from pipelines.tune import callback as callback_module
    from pipelines.tune import driver as tune
    from pipelines.tune import trials
    from pipelines.tune.callback import SweepCallback

    uri = "http://alice:s3cr3t@mlflow.example:5000"
    base = load_config(REPO_ROOT / "configs" / "smoke.yaml", [f"tracking.uri={uri}"]).model_dump(mode="json")
    spec = load_sweep(REPO_ROOT / "configs" / "sweeps" / "smoke.yaml")
    best = {"trial_id": "t1", "params": {"optim.lr": 0.003}, "best_metric": 0.5, "best_epoch": 2}
    best_raw, text = tune.best_config(best, spec, base, tmp_path / "best_config.yaml")
    assert "s3cr3t" not in text and "tracking.uri (http://alice:***@mlflow.example:5000) holds a password" in text
    loaded = yaml.safe_load(text)
    assert loaded["tracking"]["uri"] is None and loaded["optim"]["lr"] == 0.003 and best_raw == loaded
    # Without a password the URI is kept as given.
    plain = {**base, "tracking": {**base["tracking"], "uri": "http://mlflow.example:5000"}}
    assert (
        yaml.safe_load(tune.best_config(best, spec, plain, tmp_path / "b.yaml")[1])["tracking"]["uri"]
        == "http://mlflow.example:5000"
    )

    # Tune pickles its callbacks into tuner.pkl: the sweep's callback holds no URI and reads the driver's.
    monkeypatch.setattr(trials, "_DRIVER", {})
    trials.set_driver_tracking_uri(uri)
    callback = SweepCallback(str(tmp_path), spec.model_dump(mode="json"))
    assert b"s3cr3t" not in ray.cloudpickle.dumps(callback)
    seen = []
    monkeypatch.setattr(
        callback_module, "close_stopped_trial", lambda d, s, trial, u, failed: seen.append((d, s.name, u, failed))
    )
    ray.cloudpickle.loads(ray.cloudpickle.dumps(callback)).on_trial_error(0, [], object())
    assert seen == [(tmp_path, spec.name, uri, True)]


def test_credentials_in_a_storage_uri_are_left_out_of_the_best_config_and_the_params(tmp_path):
    import yaml

    from pipelines.track.tracker import _param_value
    from pipelines.tune import driver as tune

    storage = "s3://AKIAKEY:SECRETKEY@bucket/rr?region=us-east-1&X-Amz-Security-Token=TOKENVALUE"
    base = load_config(REPO_ROOT / "configs" / "smoke.yaml", [f"checkpoint.storage_path={storage}"])
    spec = load_sweep(REPO_ROOT / "configs" / "sweeps" / "smoke.yaml")
    best = {"trial_id": "t1", "params": {"optim.lr": 0.003}, "best_metric": 0.5, "best_epoch": 2}
    best_raw, text = tune.best_config(best, spec, base.model_dump(mode="json"), tmp_path / "best_config.yaml")
    assert "SECRETKEY" not in text and "TOKENVALUE" not in text
    assert (
        yaml.safe_load(text)["checkpoint"]["storage_path"]
        == "s3://bucket/rr?region=us-east-1"
        == (best_raw["checkpoint"]["storage_path"])
    )
    assert (
        "# checkpoint.storage_path (s3://AKIAKEY:***@bucket/rr?region=us-east-1&X-Amz-Security-Token=***) "
        "holds credentials, left out here" in text
    )
    assert _param_value(storage) == "s3://AKIAKEY:***@bucket/rr?region=us-east-1&X-Amz-Security-Token=***"
