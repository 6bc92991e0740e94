"""``pipelines.analysis.compare`` and ``fusionpipe compare`` on small sqlite MLflow stores filled by hand."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from pipelines.analysis.compare import CompareError, compare, metric_direction
from pipelines.cli.compare import compare as compare_cmd

D1, D2 = "a" * 64, "b" * 64
C1, C2, P = "1" * 40, "2" * 40, "c" * 64
CODE1 = {"git.commit": C1, "git.dirty": "false"}
T0 = 1_700_000_000_000
# name: (params, tags, {metric: values per epoch}, training seconds)
RUNS = {
    "mtl": (
        {"model.name": "mtinet", "train.epochs": "3", "train.lr": "0.01", "model.heads": "2"},
        {"fusionpipe.model": "mtinet", "data.manifest_digest": D1, **CODE1},
        {"val/semseg/miou": [0.30, 0.50, 0.45], "val/depth/rmse": [1.0, 0.8, 0.9], "train/loss/total": [3, 2, 1]},
        60.5,
    ),
    "st_semseg": (
        {"model.name": "single_task", "train.epochs": "3", "train.lr": "0.01"},
        {"fusionpipe.model": "single_task", "data.manifest_digest": D1, **CODE1},
        {"val/semseg/miou": [0.20, 0.40, 0.40]},
        30.0,
    ),
    "st_depth": (
        {"model.name": "single_task", "train.epochs": "3", "train.lr": "0.01"},
        {"fusionpipe.model": "single_task", "data.manifest_digest": D1, **CODE1},
        {"val/depth/rmse": [1.2, 1.0, 1.1]},
        31.25,
    ),
    "mtl_newdata": (
        {"model.name": "mtinet", "train.epochs": "3", "train.lr": "0.02"},
        {
            "fusionpipe.model": "mtinet",
            "data.manifest_digest": D2,
            "git.commit": C2,
            "git.dirty": "true",
            "plugin.my_tasks.sha256": P,
        },
        {"val/semseg/miou": [0.1, 0.2, 0.3], "val/depth/rmse": [2.0, 1.5, 1.6]},
        90.0,
    ),
}


def _fill(uri: str, experiment: str, runs: dict) -> dict[str, str]:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment)
    ids = {}
    for i, (name, (params, tags, metrics, seconds)) in enumerate(runs.items()):
        start = T0 + i * 1_000_000
        run = client.create_run(exp_id, run_name=name, start_time=start)
        items = [Metric(k, float(v), start + step, step) for k, vs in metrics.items() for step, v in enumerate(vs)]
        client.log_batch(
            run.info.run_id,
            metrics=items,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.set_terminated(run.info.run_id, end_time=start + int(seconds * 1000))
        ids[name] = run.info.run_id
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{path}/m.db"
    return uri, _fill(uri, "exp", RUNS)


def test_metric_direction():
    assert [
        metric_direction(k)
        for k in (
            "val/semseg/miou",
            "val/depth/rmse",
            "normals/mean",
            "val/depth/abs_rel",
            "val/normals/median",
            "train/loss/total",
            "val/edge/odsF",
            "val/x/acc",
        )
    ] == ["higher", "lower", "lower", "lower", "lower", "lower", "higher", "higher"]


def test_table_rows(store):
    uri, ids = store
    result = compare(uri, experiment="exp")
    assert result["differing_params"] == ["model.heads", "model.name", "train.lr"]
    assert result["metric"] == "val/semseg/miou"
    row = result["runs"][0]
    assert row == {
        "run_id": ids["mtl"],
        "run_name": "mtl",
        "model": "mtinet",
        "params.model.heads": "2",
        "params.model.name": "mtinet",
        "params.train.lr": "0.01",
        "final.val/depth/rmse": 0.9,
        "best.val/depth/rmse": 0.8,
        "final.val/semseg/miou": 0.45,
        "best.val/semseg/miou": 0.5,
        "training_s": 60.5,
        "data_version": "a" * 12,
        "code.git.commit": "1" * 12,
        "code.git.dirty": "false",
        "code.plugin.my_tasks.sha256": None,
    }
    assert result["differing_code"] == ["git.commit", "git.dirty", "plugin.my_tasks.sha256"]
    assert result["runs"][3]["code.git.commit"] == "2" * 12 and result["runs"][3]["code.git.dirty"] == "true"
    assert result["runs"][3]["code.plugin.my_tasks.sha256"] == "c" * 12
    assert [r["run_name"] for r in result["runs"]] == list(RUNS)
    assert [r["params.model.heads"] for r in result["runs"]] == ["2", None, None, None]
    assert [r["final.val/depth/rmse"] for r in result["runs"]] == [0.9, None, 1.1, 1.6]
    assert [r["best.val/depth/rmse"] for r in result["runs"]] == [0.8, None, 1.0, 1.5]
    assert [r["best.val/semseg/miou"] for r in result["runs"]] == [0.5, 0.4, None, 0.3]
    assert [r["training_s"] for r in result["runs"]] == [60.5, 30.0, 31.25, 90.0]
    assert "delta_m" not in result and result["files"] == []


def test_no_best_leaves_best_empty(store):
    uri, ids = store
    result = compare(uri, run_ids=[ids["mtl_newdata"], ids["mtl"]], best=False)
    assert [r["run_name"] for r in result["runs"]] == ["mtl_newdata", "mtl"]
    assert result["differing_params"] == ["model.heads", "train.lr"]
    assert all(r["best.val/semseg/miou"] is None for r in result["runs"])
    assert result["runs"][0]["final.val/semseg/miou"] == 0.3


def test_data_versions_flagged(store):
    uri, ids = store
    result = compare(uri, experiment="exp")
    assert result["data_versions"] == {D1: [ids["mtl"], ids["st_semseg"], ids["st_depth"]], D2: [ids["mtl_newdata"]]}
    assert [r["data_version"] for r in result["runs"]] == ["a" * 12] * 3 + ["b" * 12]
    same = compare(uri, run_ids=[ids["mtl"], ids["st_semseg"]])
    assert same["data_versions"] == {D1: [ids["mtl"], ids["st_semseg"]]}
    # The same code too: no code column at all.
    assert same["differing_code"] == [] and not any(k.startswith("code.") for k in same["runs"][0])


@pytest.mark.parametrize("how", ["runs", "tag"])
def test_delta_m_against_single_task_references(store, how):
    uri, ids = store
    if how == "runs":
        result = compare(uri, experiment="exp", baseline_runs=[ids["st_semseg"], ids["st_depth"]])
    else:
        result = compare(uri, experiment="exp", baseline_tag="fusionpipe.model=single_task")
    # baseline: semseg/miou 0.40 (st_semseg), depth/rmse 1.1 (st_depth), both final values
    dm = result["delta_m"]
    assert set(dm) == {ids["mtl"], ids["mtl_newdata"]}
    assert dm[ids["mtl"]]["terms"] == pytest.approx({"semseg/miou": 12.5, "depth/rmse": 200 / 11}, rel=1e-12)
    assert dm[ids["mtl"]]["delta_m"] == pytest.approx((12.5 + 200 / 11) / 2, rel=1e-12)
    assert dm[ids["mtl_newdata"]]["terms"] == pytest.approx({"semseg/miou": -25.0, "depth/rmse": -500 / 11}, rel=1e-12)
    assert dm[ids["mtl_newdata"]]["delta_m"] == pytest.approx((-25.0 - 500 / 11) / 2, rel=1e-12)


def test_outputs_written(store, tmp_path):
    uri, ids = store
    out = tmp_path / "cmp"
    result = compare(uri, run_ids=[ids["mtl"], ids["mtl_newdata"]], out=out)
    assert result["files"] == [str(out / n) for n in ("compare.csv", "compare.json", "curves.png", "bars.png")]
    assert (out / "compare.csv").read_text() == (
        "run_id,run_name,model,params.model.heads,params.train.lr,final.val/depth/rmse,best.val/depth/rmse,"
        "final.val/semseg/miou,best.val/semseg/miou,training_s,data_version,code.git.commit,code.git.dirty,"
        "code.plugin.my_tasks.sha256\n"
        f"{ids['mtl']},mtl,mtinet,2,0.01,0.9,0.8,0.45,0.5,60.5,aaaaaaaaaaaa,111111111111,false,\n"
        f"{ids['mtl_newdata']},mtl_newdata,mtinet,,0.02,1.6,1.5,0.3,0.3,90.0,bbbbbbbbbbbb,222222222222,true,"
        "cccccccccccc\n"
    )
    assert json.loads((out / "compare.json").read_text())["runs"] == result["runs"]
    for name in ("curves.png", "bars.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    assert sorted(p.name for p in out.iterdir()) == ["bars.png", "compare.csv", "compare.json", "curves.png"]


def test_errors_name_the_bad_input(store):
    uri, ids = store
    with pytest.raises(CompareError, match=r"unknown experiment 'nope' \(existing: .*exp"):
        compare(uri, experiment="nope")
    with pytest.raises(CompareError, match="unknown run id 'deadbeef'"):
        compare(uri, run_ids=[ids["mtl"], "deadbeef"])
    with pytest.raises(
        CompareError,
        match=r"no run has metric 'val/edge/odsF' \(existing: train/loss/total, "
        r"val/depth/rmse, val/semseg/miou\)",
    ):
        compare(uri, experiment="exp", metric="val/edge/odsF")
    with pytest.raises(CompareError, match="KEY=VALUE, got 'single_task'"):
        compare(uri, experiment="exp", baseline_tag="single_task")
    with pytest.raises(CompareError, match="no run has tag fusionpipe.model='st'"):
        compare(uri, experiment="exp", baseline_tag="fusionpipe.model=st")
    with pytest.raises(CompareError, match="both report 'val/semseg/miou'"):
        compare(uri, experiment="exp", baseline_runs=[ids["st_semseg"], ids["mtl"]])


def test_cli_human_and_json(store):
    uri, ids = store
    runner = CliRunner()
    res = runner.invoke(
        compare_cmd, ["--experiment", "exp", "--tracking-uri", uri, "--baseline-tag", "fusionpipe.model=single_task"]
    )
    assert res.exit_code == 0, res.output
    assert "warning: runs used 2 different data versions (aaaaaaaaaaaa: 3 run(s); bbbbbbbbbbbb: 1 run(s))" in res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| run_id | run_name | model | params.model.heads |")
    assert lines[2] == (
        f"| {ids['mtl']} | mtl | mtinet | 2 | mtinet | 0.01 | 0.9 | 0.8 | 0.45 | 0.5 | 60.5 "
        "| aaaaaaaaaaaa | 111111111111 | false |  | +15.34% |"
    )
    assert f"delta_m {ids['mtl']}: +15.34% (semseg/miou +12.50%, depth/rmse +18.18%)" in res.stdout
    res = runner.invoke(
        compare_cmd, ["--run-ids", ids["mtl"], "--run-ids", ids["st_semseg"], "--tracking-uri", uri, "--json"]
    )
    assert res.exit_code == 0 and res.stderr == ""
    obj = json.loads(res.stdout)
    assert [r["run_name"] for r in obj["runs"]] == ["mtl", "st_semseg"] and obj["files"] == []
    res = runner.invoke(compare_cmd, ["--experiment", "missing", "--tracking-uri", uri, "--json"])
    assert res.exit_code == 2 and "unknown experiment 'missing'" in json.loads(res.stdout)["error"]
    res = runner.invoke(compare_cmd, ["--tracking-uri", uri])
    assert res.exit_code == 2 and "exactly one of --experiment, --run-ids, --sweep and --study" in res.stderr


def test_many_runs_page_and_skip_history(tmp_path, monkeypatch):
    import pipelines.analysis.compare as cmp

    n = 100
    runs = {
        f"r{i:03d}": (
            {"model.name": "mtinet", "train.lr": str(i % 3)},
            {"data.manifest_digest": D1},
            {"val/semseg/miou": [i / 200, i / 100], "val/depth/rmse": [1 + i / 100]},
            1.0,
        )
        for i in range(n)
    }
    uri = f"sqlite:///{tmp_path}/m.db"
    _fill(uri, "big", runs)
    monkeypatch.setattr(cmp, "PAGE_SIZE", 30)  # four pages
    result = compare(uri, experiment="big")
    assert [r["run_name"] for r in result["runs"]] == list(runs)
    assert [r["final.val/semseg/miou"] for r in result["runs"]] == [i / 100 for i in range(n)]
    assert [r["params.train.lr"] for r in result["runs"]] == [str(i % 3) for i in range(n)]
    assert result["differing_params"] == ["train.lr"]
    assert all(r["best.val/semseg/miou"] is None for r in result["runs"])  # > 50 runs: no history requests
    best = compare(uri, experiment="big", best=True)
    assert [r["best.val/depth/rmse"] for r in best["runs"]] == [1 + i / 100 for i in range(n)]


def test_metric_direction_uses_the_last_component():
    from pipelines.analysis.compare import metric_direction

    assert metric_direction("val/semseg/mean_acc") == "higher"
    assert metric_direction("val/normals/median") == "lower"
    assert metric_direction("val/depth/log_rmse") == "lower"
    assert metric_direction("train/loss/total") == "lower"
    assert metric_direction("val/normals/11.25") == "higher"


def test_sweep_trials_are_selected_by_parent_and_parents_are_not_rows(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/sweep.db"
    runs = {
        "sweep": (
            {"sweep.metric": "val/semseg/miou"},
            {"fusionpipe.kind": "sweep"},
            {"best/val/semseg/miou": [0.5]},
            10.0,
        ),
        "t1": ({"optim.lr": "0.01"}, {}, {"val/semseg/miou": [0.2, 0.5]}, 5.0),
        "t2": ({"optim.lr": "0.001"}, {}, {"val/semseg/miou": [0.1]}, 2.0),
        "solo": ({"optim.lr": "0.1"}, {}, {"val/semseg/miou": [0.3, 0.4]}, 5.0),
    }
    ids = _fill(uri, "sw", runs)
    client = MlflowClient(tracking_uri=uri)
    for trial in ("t1", "t2"):
        client.set_tag(ids[trial], "mlflow.parentRunId", ids["sweep"])
    res = compare(uri, sweep=ids["sweep"])
    assert [r["run_name"] for r in res["runs"]] == ["t1", "t2"]
    assert [r["params.optim.lr"] for r in res["runs"]] == ["0.01", "0.001"]
    assert [r["best.val/semseg/miou"] for r in res["runs"]] == [0.5, 0.1]
    assert [r["run_name"] for r in compare(uri, experiment="sw")["runs"]] == ["t1", "t2", "solo"]
    with pytest.raises(CompareError, match=r"is not a sweep's parent run"):
        compare(uri, sweep=ids["solo"])


def test_nan_epochs_never_win_best_and_json_stays_strict(tmp_path):
    from pipelines.analysis.compare import best_value

    assert best_value([(0, float("nan")), (1, 0.5), (2, 0.7)], "val/semseg/miou") == 0.7
    assert best_value([(0, 0.5), (1, float("nan")), (2, 0.7)], "val/semseg/miou") == 0.7
    assert best_value([(0, float("nan"))], "val/edge/odsF") is None
    uri = f"sqlite:///{tmp_path}/m.db"
    ids = _fill(
        uri,
        "nan",
        {
            "a": ({"model.name": "mtinet"}, {}, {"val/edge/odsF": [float("nan"), 0.4, 0.3]}, 1.0),
            "b": ({"model.name": "padnet"}, {}, {"val/edge/odsF": [0.2, float("nan")]}, 1.0),
        },
    )
    result = compare(uri, run_ids=[ids["a"], ids["b"]], out=tmp_path / "cmp")
    assert [r["best.val/edge/odsF"] for r in result["runs"]] == [0.4, 0.2]
    # A NaN final value is null in compare.json and in --json, which strict parsers accept.
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text(), parse_constant=pytest.fail)
    assert [r["final.val/edge/odsF"] for r in saved["runs"]] == [0.3, None]
    out = CliRunner().invoke(compare_cmd, ["--tracking-uri", uri, "--run-ids", ids["b"], "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout, parse_constant=pytest.fail)["runs"][0]["final.val/edge/odsF"] is None


def test_a_zero_reference_metric_is_a_clean_error(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    ids = _fill(
        uri,
        "zero",
        {
            "mtl": ({"model.name": "mtinet"}, {}, {"val/edge/odsF": [0.3]}, 1.0),
            "ref": ({"model.name": "single_task"}, {"fusionpipe.model": "single_task"}, {"val/edge/odsF": [0.0]}, 1.0),
        },
    )
    out = CliRunner().invoke(
        compare_cmd,
        ["--tracking-uri", uri, "--experiment", "zero", "--json", "--baseline-tag", "fusionpipe.model=single_task"],
    )
    assert out.exit_code == 2
    assert f"run {ids['mtl']}: delta_m: baseline 'edge/odsF' is 0" in json.loads(out.stdout)["error"]


def test_an_unreachable_store_exits_3_without_the_password(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = CliRunner().invoke(
        compare_cmd, ["--tracking-uri", "http://alice:s3cr3t@127.0.0.1:9", "--experiment", "x", "--json"]
    )
    assert out.exit_code == 3 and "s3cr3t" not in out.output
    assert json.loads(out.stdout)["error"].startswith(
        "MLflow tracking store: API request to http://alice:***@127.0.0.1:9"
    )


@pytest.mark.parametrize("how", [["--run-ids", "abc"], ["--sweep", "abc"]])
def test_a_dead_store_is_not_an_unknown_run(monkeypatch, how):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = CliRunner().invoke(compare_cmd, ["--tracking-uri", "http://alice:s3cr3t@127.0.0.1:9", *how, "--json"])
    assert out.exit_code == 3 and "unknown run id" not in out.output and "s3cr3t" not in out.output


def test_a_nan_reference_metric_is_a_clean_error(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    ids = _fill(
        uri,
        "nanref",
        {
            "mtl": ({"model.name": "mtinet"}, {}, {"val/edge/odsF": [0.3]}, 1.0),
            "ref": ({"model.name": "single_task"}, {}, {"val/edge/odsF": [float("nan")]}, 1.0),
        },
    )
    with pytest.raises(CompareError, match=r"val/edge/odsF is NaN or infinite, so delta_m is undefined"):
        compare(uri, run_ids=[ids["mtl"]], baseline_runs=[ids["ref"]])


def test_credentials_in_the_params_of_older_runs_reach_no_table_file_or_output(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    secret = "s3://AKIAKEY:SECRETKEY@bucket/rr"  # logged before params were redacted
    tags = {"fusionpipe.model": "mtinet", "data.manifest_digest": D1, **CODE1}
    runs = {
        "old": (
            {"model.name": "mtinet", "checkpoint.storage_path": secret},
            tags,
            {"val/semseg/miou": [0.1, 0.2]},
            9.0,
        ),
        "new": ({"model.name": "mtinet", "checkpoint.storage_path": "/mnt/rr"}, tags, {"val/semseg/miou": [0.3]}, 9.0),
    }
    _fill(uri, "creds", runs)
    result = compare(uri, experiment="creds", out=tmp_path / "out")
    shown = {row["run_name"]: row["params.checkpoint.storage_path"] for row in result["runs"]}
    assert shown == {"old": "s3://AKIAKEY:***@bucket/rr", "new": "/mnt/rr"}
    for name in ("compare.csv", "compare.json"):
        text = (tmp_path / "out" / name).read_text()
        assert "s3://AKIAKEY:***@bucket/rr" in text and "SECRETKEY" not in text
    r = CliRunner().invoke(compare_cmd, ["--tracking-uri", uri, "--experiment", "creds"])
    assert r.exit_code == 0 and "SECRETKEY" not in r.output


def test_mlflow_creates_a_missing_sqlite_store_on_a_read(tmp_path):
    """Why compare and evaluate check first: a mere read through MLflow creates the file, its directories
    and an empty database."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "typo" / "dir" / "x.db"
    assert [e.name for e in MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()] == ["Default"]
    assert db.is_file()


@pytest.mark.parametrize("how", [["--experiment", "e"], ["--run-ids", "abc"], ["--sweep", "abc"]])
def test_compare_refuses_a_sqlite_store_that_does_not_exist_and_creates_nothing(tmp_path, how):
    db = tmp_path / "typo" / "dir" / "x.db"
    out = CliRunner().invoke(compare_cmd, ["--tracking-uri", f"sqlite:///{db}", *how, "--json"])
    assert out.exit_code == 2, out.output
    assert json.loads(out.stdout)["error"].startswith(
        f"no MLflow tracking store at {db} (tracking URI sqlite:///{db}): the file does not exist"
    )
    assert not (tmp_path / "typo").exists()
    with pytest.raises(CompareError, match=f"no MLflow tracking store at {db}"):
        compare(f"sqlite:///{db}", experiment="e")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "uri, why",
    [
        ("sqlite:/x.db", "not a sqlite store: write sqlite:///RELATIVE/PATH.db"),
        ("sqlite://x.db", "not a sqlite store"),
        ("foo://bar", "unknown tracking store scheme 'foo'"),
        ("http://", "names no tracking server"),
        ("http://alice:s3cr3t@h:port", "the port of 'h:port' is not a number"),
    ],
)
def test_compare_names_a_malformed_tracking_uri(tmp_path, uri, why):
    out = CliRunner().invoke(compare_cmd, ["--tracking-uri", uri, "--experiment", "e", "--json"])
    assert out.exit_code == 2, out.output
    shown = uri.replace("s3cr3t", "***")
    assert json.loads(out.stdout)["error"].startswith(f"--tracking-uri {shown!r}: {why}")
    assert "s3cr3t" not in out.output and "Traceback" not in out.output


# Four runs that log what a real run logs: every val metric of four tasks, the training losses, throughput.
FULL_VAL = {
    "semseg": ("miou", "pixel_acc", "mean_acc"),
    "depth": ("rmse", "log_rmse", "abs_rel", "delta1", "delta2", "delta3"),
    "normals": ("mean", "median", "rmse", "11.25", "22.5", "30"),
    "edge": ("odsF",),
}
TRAIN = ["train/loss/total", "train/loss/semseg", "train/loss/depth", "train/loss/normals", "train/loss/edge"]
TRAIN += ["train/samples_per_s", "train/epoch_s", "train/lr"]


def _full_metrics(scale: float, tasks=tuple(FULL_VAL)) -> dict[str, list[float]]:
    out = {
        f"val/{t}/{m}": [scale * (i + 1) / 10, scale * (i + 2) / 10] for t in tasks for i, m in enumerate(FULL_VAL[t])
    }
    out.update({k: [1.0 + scale, 0.5 + scale] for k in TRAIN})
    return out


def _params(model: str, ckpt: str = "val/semseg/miou") -> dict[str, str]:
    return {"model.name": model, "checkpoint.metric": ckpt, "train.epochs": "2", "optim.lr": "0.002"}


FOUR = {
    "mtinet": (_params("mtinet"), {"fusionpipe.model": "mtinet", "data.manifest_digest": D1}, _full_metrics(1.0), 60.0),
    "padnet": (
        _params("padnet", "val/depth/abs_rel"),
        {"fusionpipe.model": "padnet", "data.manifest_digest": D1},
        _full_metrics(0.9),
        70.0,
    ),
    "st_semseg": (
        _params("single_task"),
        {"fusionpipe.model": "single_task", "data.manifest_digest": D1},
        _full_metrics(0.8, tasks=("semseg",)),
        30.0,
    ),
    "running": (_params("mtinet"), {"fusionpipe.model": "mtinet", "data.manifest_digest": D1}, _full_metrics(0.5), 5.0),
}


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('four')}/m.db"
    ids = _fill(uri, "four", FOUR)
    MlflowClient(tracking_uri=uri).update_run(ids["running"], status="RUNNING")
    return uri, ids


def test_four_runs_show_the_headline_and_checkpoint_metrics_of_the_finished_runs(four):
    uri, ids = four
    result = compare(uri, experiment="four")
    assert [r["run_name"] for r in result["runs"]] == ["mtinet", "padnet", "st_semseg"]
    assert result["left_out"] == {"RUNNING": 1}
    metrics = ["val/depth/abs_rel", "val/depth/rmse", "val/edge/odsF", "val/normals/mean", "val/semseg/miou"]
    assert result["metrics"] == metrics
    assert list(result["runs"][0]) == [
        "run_id",
        "run_name",
        "model",
        "params.checkpoint.metric",
        "params.model.name",
        *[f"{w}.{k}" for k in metrics for w in ("final", "best")],
        "training_s",
        "data_version",
    ]
    assert len(compare(uri, experiment="four", all_metrics=True)["runs"][0]) == 39  # every val metric's columns
    # every run, and every val metric, on request
    every = compare(uri, experiment="four", statuses=None, all_metrics=True)
    assert [r["run_name"] for r in every["runs"]] == ["mtinet", "padnet", "st_semseg", "running"]
    assert [r["status"] for r in every["runs"]] == ["FINISHED", "FINISHED", "FINISHED", "RUNNING"]
    assert len(every["metrics"]) == 16 and every["left_out"] == {}
    globbed = compare(uri, experiment="four", metrics=["val/semseg/*", "train/loss/t*"])
    assert globbed["metrics"] == ["train/loss/total", "val/semseg/mean_acc", "val/semseg/miou", "val/semseg/pixel_acc"]
    padnet = compare(uri, experiment="four", filter_string="params.`model.name` = 'padnet'")
    assert [r["run_name"] for r in padnet["runs"]] == ["padnet"]


def test_four_runs_bars_are_a_grid_by_task_with_value_labels_and_na(four, tmp_path):
    from pipelines.analysis.compare import bars_figure

    uri, ids = four
    result = compare(uri, experiment="four", statuses=None, out=tmp_path / "cmp")
    fig = bars_figure(result["runs"], result["metrics"])
    w, h = fig.get_size_inches() * 100  # the PNG's dpi
    assert (w, h) == (640, 1000)  # 4 task rows of at most 2 panels; was 370 x 3894 px for every metric stacked
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "val/depth/abs_rel (lower is better)",
        "val/depth/rmse (lower is better)",
        "val/edge/odsF (higher is better)",
        "val/normals/mean (lower is better)",
        "val/semseg/miou (higher is better)",
    ]
    assert [ax.get_subplotspec().rowspan.start for ax in fig.axes] == [0, 0, 1, 2, 3]
    rmse = fig.axes[1]
    # st_semseg (third run) has no depth: no bar at x=2 but "n/a"; the others carry their value
    assert [round(p.get_x() + p.get_width() / 2, 6) for p in rmse.patches] == [0, 1, 3]
    assert [t.get_text() for t in rmse.texts] == ["0.2", "0.18", "0.1", "n/a"]
    assert [t.get_text() for t in rmse.get_xticklabels()] == ["mtinet", "padnet", "st_semseg", "running"]
    miou = fig.axes[4]
    assert [t.get_text() for t in miou.texts] == ["0.2", "0.18", "0.16", "0.1"]
    with Image.open(tmp_path / "cmp" / "bars.png") as im:
        assert im.size[0] <= 700 and im.size[1] <= 1050
    every = bars_figure(result["runs"], compare(uri, experiment="four", statuses=None, all_metrics=True)["metrics"])
    # depth's 6 and normals' 6 metrics wrap at 4 panels: 6 rows of at most 4
    assert tuple(every.get_size_inches() * 100) == (1280, 1500) and len(every.axes) == 16


def test_four_runs_curves_are_small_multiples_with_one_legend(four, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.analysis.compare import curves_figure, fetch_histories, fetch_runs

    uri, ids = four
    result = compare(uri, experiment="four", statuses=None, out=tmp_path / "cmp")
    client = MlflowClient(tracking_uri=uri)
    runs = fetch_runs(client, run_ids=[r["run_id"] for r in result["runs"]])
    fig = curves_figure(runs, fetch_histories(client, runs, result["metrics"]), result["metrics"])
    assert len(fig.axes) == 5
    assert [len(ax.get_lines()) for ax in fig.axes] == [3, 3, 3, 3, 4]  # st_semseg has only semseg
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["mtinet", "padnet", "running", "st_semseg"]
    assert fig.axes[4].get_lines()[0].get_ydata().tolist() == [0.1, 0.2]
    with Image.open(tmp_path / "cmp" / "curves.png") as im:
        assert im.size[0] <= 750 and im.size[1] <= 1100


def test_cli_metric_and_run_selection_and_their_errors(four):
    uri, ids = four
    runner = CliRunner()
    res = runner.invoke(compare_cmd, ["--experiment", "four", "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    assert "note: 1 run(s) left out by their status (1 RUNNING); --status any compares them too" in res.stderr
    header = res.stdout.splitlines()[0].split(" | ")
    assert len(header) == 17
    res = runner.invoke(compare_cmd, ["--experiment", "four", "--tracking-uri", uri, "--status", "any", "--json"])
    assert len(json.loads(res.stdout)["runs"]) == 4
    res = runner.invoke(compare_cmd, ["--experiment", "four", "--tracking-uri", uri, "--status", "running", "--json"])
    assert [r["run_name"] for r in json.loads(res.stdout)["runs"]] == ["running"]
    res = runner.invoke(compare_cmd, ["--experiment", "four", "--tracking-uri", uri, "--metrics", "val/semseg/*"])
    header = res.stdout.splitlines()[0]
    assert res.exit_code == 0 and "final.val/semseg/pixel_acc" in header and "val/depth" not in header
    for args, message in [
        (["--metrics", "val/nope/*"], "--metrics 'val/nope/*' matches no metric (existing: train/"),
        (["--filter", "params.x =="], "filter 'params.x ==' is not a valid MLflow search filter"),
        (["--status", "DONE"], "unknown run status DONE (statuses: FINISHED, RUNNING"),
        (["--metrics", "val/*", "--all-metrics"], "give at most one of --metrics and --all-metrics"),
        (["--filter", "params.`model.name` = 'nope'"], "experiment 'four' has no runs matching filter"),
    ]:
        res = runner.invoke(compare_cmd, ["--experiment", "four", "--tracking-uri", uri, *args, "--json"])
        assert res.exit_code == 2, (args, res.output)
        assert message in json.loads(res.stdout)["error"], res.stdout
    res = runner.invoke(compare_cmd, ["--run-ids", ids["running"], "--tracking-uri", uri, "--filter", "x = 1"])
    assert res.exit_code == 2 and "--filter narrows the runs of an experiment or a sweep" in res.stderr
    res = runner.invoke(compare_cmd, ["--run-ids", ids["running"], "--tracking-uri", uri, "--json"])
    assert [r["run_name"] for r in json.loads(res.stdout)["runs"]] == ["running"]  # asked for by id
