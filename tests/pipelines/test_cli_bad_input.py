"""Bad input to ``fusionpipe train`` and ``evaluate`` is one named error and exit code 2, never a traceback:
``--set`` values, config values, a tracking store that does not exist, and run-state files.

Nothing here starts Ray: the tests that reach the run's MLflow record replace the driver's Ray steps (start,
node list, shared-storage probe), which come before it and have nothing to do with the input at fault.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipelines.cli.main import cli
from tests import REPO_ROOT

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")


def _error(out) -> str:
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output
    return json.loads(out.stdout)["error"]


@pytest.mark.parametrize(
    "override, start",
    [
        ("optim.lr=[1", "--set 'optim.lr=[1': value '[1' is not valid YAML (expected ',' or ']'"),
        ("data.tasks={semseg", "--set 'data.tasks={semseg': value '{semseg' is not valid YAML"),
        ("train.epochs=true", f"{SMOKE}: 1 problem(s):\n  - train.epochs: expected a whole number"),
        ("train.batch_size=2.0", f"{SMOKE}: 1 problem(s):\n  - train.batch_size: expected a whole number"),
        ("optim.lr=.inf", f"{SMOKE}: 1 problem(s):\n  - optim.lr: expected a finite number"),
        ("tracking.uri=sqlite:/x.db", f"{SMOKE}: 1 problem(s):\n  - tracking.uri: not a sqlite store"),
    ],
)
def test_train_names_a_bad_override_and_exits_2(override, start):
    error = _error(CliRunner().invoke(cli, ["train", "--config", SMOKE, "--set", override, "--json"]))
    assert error.startswith(start), error


@pytest.mark.parametrize("how", [["--run-id", "abc"], ["--checkpoint", "ckpt", "--baseline-run", "abc"]])
def test_evaluate_refuses_a_sqlite_store_that_does_not_exist_and_creates_nothing(tmp_path, smoke_shards, how):
    db = tmp_path / "typo" / "x.db"
    args = ["--set", f"data.shards={smoke_shards}", "--set", f"tracking.uri=sqlite:///{db}", *how, "--json"]
    error = _error(CliRunner().invoke(cli, ["evaluate", "--config", SMOKE, *args]))
    assert error.startswith(f"no MLflow tracking store at {db} (tracking URI sqlite:///{db}): the file does not exist")
    assert not (tmp_path / "typo").exists()


@pytest.fixture
def train_without_ray(monkeypatch, tmp_path, smoke_shards):
    """``fusionpipe train`` on the smoke config up to its MLflow record, with the driver's Ray steps replaced;
    returns (invoke, the run directory)."""
    import pipelines.train.driver as driver

    monkeypatch.setattr(driver, "init_ray", lambda cfg: None)
    monkeypatch.setattr(driver, "alive_nodes", lambda: [{"Alive": True}])
    monkeypatch.setattr(driver, "check_shared_storage", lambda path: None)

    def invoke():
        sets = [f"data.shards={smoke_shards}", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
        sets.append(f"checkpoint.storage_path={tmp_path}/ray")
        args = [a for s in sets for a in ("--set", s)]
        return CliRunner().invoke(cli, ["train", "--config", SMOKE, *args, "--run-name", "r", "--json"])

    (tmp_path / "ray" / "r").mkdir(parents=True)
    return invoke, tmp_path / "ray" / "r"


@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"mlflow_run_id": "ab', "not valid JSON: Unterminated string"),  # cut short
        (b"", "not valid JSON"),
        (b"[]", 'no "mlflow_run_id" string in it'),
        (b'{"mlflow_run_id": 7}', 'no "mlflow_run_id" string in it'),
        (b"\xff\xfe\x00", "not text: invalid start byte at byte 0"),
    ],
)
def test_a_corrupt_run_state_file_is_named_with_how_to_go_on(train_without_ray, content, why):
    invoke, run_dir = train_without_ray
    state = run_dir / "fusionpipe-run.json"
    state.write_bytes(content)
    error = _error(invoke())
    assert error.startswith(f"{state}: corrupt run-state file ({why}")
    assert "resume that run (the MLflow run tagged fusionpipe.run_name=r)" in error
    assert f"To start a new MLflow run under run name 'r', delete {state}" in error
    assert state.read_bytes() == content  # left for the user to repair or delete


def test_a_run_state_naming_a_run_the_store_lacks_exits_2(train_without_ray, tmp_path):
    from mlflow.tracking import MlflowClient

    invoke, run_dir = train_without_ray
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db").create_experiment("other")  # a store, without the run
    state = run_dir / "fusionpipe-run.json"
    state.write_text(json.dumps({"mlflow_run_id": "0" * 32, "tracking_uri": "sqlite:////elsewhere/mlflow.db"}))
    error = _error(invoke())
    assert error.startswith(
        f"{state}: names MLflow run '{'0' * 32}', which the tracking store sqlite:///{tmp_path}/m.db does not "
        "have (it was recorded in sqlite:////elsewhere/mlflow.db). To resume it, set tracking.uri"
    )
    assert f"delete {state}" in error


def test_data_build_exits_2_naming_a_plugin_it_cannot_import(tmp_path):
    args = ["--out", str(tmp_path / "ds"), "--plugin", "tests.no_such_plugin", "--json"]
    error = _error(CliRunner().invoke(cli, ["data", "build", "synthetic", *args]))
    assert error.startswith("plugins: cannot import 'tests.no_such_plugin': ModuleNotFoundError")
    assert not (tmp_path / "ds").exists()
