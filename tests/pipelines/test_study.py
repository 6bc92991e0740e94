"""``fusionpipe study``: the spec and its validation, the table's aggregation and files, ``compare --study``,
and one real (tiny) study: 2 rows x 2 seeds as one Tune grid under one MLflow parent run, resumed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from pipelines.config import ConfigError
from pipelines.study.spec import load_study, validate_study
from pipelines.study.table import TABLE_FILES, aggregate, baseline_of, markdown, mean_std, write_table
from tests import REPO_ROOT

SHIPPED = ["mtl", "rgbd", "context", "cen_ablations"]


def _spec(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = "metrics: [val/semseg/miou]\nseeds: [0, 1]\n"


def test_shipped_studies_validate_every_row_and_seed(smoke_shards):
    for name in SHIPPED:
        spec = load_study(REPO_ROOT / "configs" / "studies" / f"{name}.yaml")
        trials = validate_study(spec, [f"data.shards={smoke_shards}"], root=REPO_ROOT)
        assert spec.name == name
        assert len(trials) == len(spec.rows) * len(spec.seeds)
        assert [t.config.train.seed for t in trials[: len(spec.seeds)]] == spec.seeds
        assert all(t.config.train.workers == 1 and t.config.train.epochs == 3 for t in trials)
    mtl = load_study(REPO_ROOT / "configs" / "studies" / "mtl.yaml")
    assert set(mtl.baselines) == {"st_semseg", "st_depth", "st_normals", "st_edge"}


def test_unknown_key_names_the_file_and_key(tmp_path):
    p = _spec(tmp_path, BASE + "seedz: [1]\nrows: [{name: a, config: configs/smoke.yaml}]\n")
    with pytest.raises(ConfigError, match=rf"{p}: 1 problem\(s\):\n  - seedz: unknown key"):
        load_study(p)
    p = _spec(tmp_path, BASE + "rows: [{name: a, config: configs/smoke.yaml, sett: {}}]\n")
    with pytest.raises(ConfigError, match=r"rows.0.sett: unknown key"):
        load_study(p)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("rows: [{name: a, config: c.yaml, set: {train.seed: 3}}]", r"rows.0.set: .*set.train.seed: set by the study"),
        ("set: {tracking.uri: x}\nrows: [{name: a, config: c.yaml}]", r"set: .*tracking.uri: set by the study"),
        ("baselines: [b]\nrows: [{name: a, config: c.yaml}]", r"baselines: \['b'\] are not rows of the study"),
        ("rows: [{name: a, config: c.yaml}, {name: a, config: d.yaml}]", r"row name\(s\) \['a'\] used more than once"),
        ("rows: [{name: ../a, config: c.yaml}]", r"rows.0.name: .*row name '../a'"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_study(_spec(tmp_path, BASE + extra + "\n"))


def test_bad_metrics_and_seeds(tmp_path):
    with pytest.raises(ConfigError, match=r"metrics: .*'semseg/miou'.*'val/<task>/<metric>'"):
        load_study(_spec(tmp_path, "metrics: [semseg/miou]\nseeds: [0]\nrows: [{name: a, config: c.yaml}]\n"))
    with pytest.raises(ConfigError, match=r"seeds must be distinct and >= 0, got \[1, 1\]"):
        load_study(_spec(tmp_path, "metrics: [val/semseg/miou]\nseeds: [1, 1]\nrows: [{name: a, config: c.yaml}]\n"))


def test_every_failing_row_is_named_before_anything_runs(tmp_path, smoke_shards):
    p = _spec(
        tmp_path,
        "metrics: [val/semseg/miou, val/semseg/mIoU]\nseeds: [0, 1]\n"
        f"set: {{data.shards: {smoke_shards}}}\n"
        "rows:\n"
        "  - {name: good, config: configs/smoke.yaml}\n"
        "  - {name: missing, config: configs/nosuch.yaml}\n"
        "  - {name: typo, config: configs/smoke.yaml, set: {optim.lrr: 0.1}}\n"
        "  - {name: badmodel, config: configs/smoke.yaml, set: {model.name: nosuch}}\n"
        "  - {name: depthonly, config: configs/single_task_depth.yaml}\n",
        "named.yaml",
    )
    spec = load_study(p)
    assert spec.name == "named"  # the file's stem
    with pytest.raises(ConfigError) as e:
        validate_study(spec, root=REPO_ROOT)
    text = str(e.value)
    assert text.startswith("study 'named': rows that would fail:")
    assert "rows[1] (missing): " in text and "nosuch.yaml: no such config file" in text
    assert "rows[2] (typo):" in text and "optim.lrr: unknown key" in text
    assert "rows[3] (badmodel), configs/smoke.yaml:" in text and "unknown model 'nosuch'" in text
    assert "rows[4] (depthonly): reports none of the study's metrics" in text
    assert "metrics: no metric 'val/semseg/mIoU'; semseg has" in text
    assert "rows[0]" not in text


def test_the_seed_is_not_an_override(tmp_path):
    p = _spec(tmp_path, BASE + "rows: [{name: a, config: configs/smoke.yaml}]\n")
    with pytest.raises(ConfigError, match=r"--set train.seed=4: train.seed is set by the study"):
        validate_study(load_study(p), ["train.seed=4"], root=REPO_ROOT)


def _records():
    # Two rows x seeds; "mt" is multi-task, "st_s" / "st_d" are the single-task baselines.
    return [
        {"row": "st_s", "seed": 0, "run_id": "a", "val": {"semseg/miou": 0.40}, "train_s": 10.0},
        {"row": "st_s", "seed": 1, "run_id": "b", "val": {"semseg/miou": 0.60}, "train_s": 14.0},
        {"row": "st_d", "seed": 0, "run_id": "c", "val": {"depth/rmse": 1.0}, "train_s": 5.0},
        {"row": "st_d", "seed": 1, "run_id": "d", "val": {"depth/rmse": 3.0}, "train_s": 7.0},
        {"row": "mt", "seed": 0, "run_id": "e", "val": {"semseg/miou": 0.55, "depth/rmse": 1.8}, "train_s": 20.0},
        {"row": "mt", "seed": 1, "run_id": "f", "val": {"semseg/miou": 0.45, "depth/rmse": 2.4}, "train_s": 30.0},
    ]


ROWS = [
    {"row": "st_s", "config": "s.yaml", "model": "single_task", "params": 10, "flops": 100},
    {"row": "st_d", "config": "d.yaml", "model": "single_task", "params": 11, "flops": 110},
    {"row": "mt", "config": "m.yaml", "model": "mtinet", "params": 20, "flops": None},
]


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, statistics.stdev([1.0, 2.0, 4.0]), 3))
    assert mean_std([0.5, 1.5])[1] == pytest.approx(0.7071067811865476)  # n - 1, not n (that would be 0.5)
    assert mean_std([0.5]) == (0.5, None, 1)
    assert mean_std([None, float("nan")]) == (None, None, 0)


def test_table_aggregates_seeds_and_delta_m_per_seed():
    assert baseline_of(_records(), ["st_s", "st_d"]) == pytest.approx({"semseg/miou": 0.5, "depth/rmse": 2.0})
    table = {r["row"]: r for r in aggregate(_records(), ROWS, ["val/semseg/miou", "val/depth/rmse"], ["st_s", "st_d"])}
    mt = table["mt"]
    assert mt["n"] == 2 and mt["seeds"] == "0 1"
    assert mt["val/semseg/miou mean"] == pytest.approx(0.5)
    assert mt["val/semseg/miou std"] == pytest.approx(statistics.stdev([0.55, 0.45]))
    assert mt["val/depth/rmse mean"] == pytest.approx(2.1)
    # Per seed against the baseline (miou 0.5, rmse 2.0): seed 0 = (+10% + +10%) / 2 = +10; seed 1 = (-10% - 20%) / 2.
    assert mt["delta_m mean"] == pytest.approx((10.0 + -15.0) / 2)
    assert mt["delta_m std"] == pytest.approx(statistics.stdev([10.0, -15.0]))
    assert mt["train_s mean"] == pytest.approx(25.0)
    assert (mt["params"], mt["flops"], mt["model"]) == (20, None, "mtinet")
    # A metric a row never reports is blank, not zero; its delta_m covers its own task only.
    st_d = table["st_d"]
    assert st_d["val/semseg/miou mean"] is None and st_d["val/semseg/miou std"] is None
    assert st_d["delta_m mean"] == pytest.approx((50.0 + -50.0) / 2)
    # Without baselines there is no delta_m column.
    assert "delta_m mean" not in aggregate(_records(), ROWS, ["val/semseg/miou"])[0]


def test_cen_rows_show_the_mean_fraction_of_channels_each_modality_exchanged():
    exchange = {
        0: {"cen/exchanged/rgb": 0.10, "cen/exchanged/depth": 0.30, "cen/exchanged/rgb/layer4": 0.9},
        1: {"cen/exchanged/rgb": 0.20, "cen/exchanged/depth": 0.50, "cen/exchanged/rgb/layer4": 0.7},
    }
    records = [
        {"row": "cen", "seed": s, "run_id": f"c{s}", "val": {"semseg/miou": 0.5}, "train_s": 1.0, "model": exchange[s]}
        for s in (0, 1)
    ]
    records.append({"row": "rgb", "seed": 0, "run_id": "r", "val": {"semseg/miou": 0.4}, "train_s": 1.0, "model": {}})
    rows = [
        {"row": "cen", "config": "c.yaml", "model": "cen", "params": 1, "flops": 1},
        {"row": "rgb", "config": "r.yaml", "model": "single_modal", "params": 1, "flops": 1},
    ]
    cen, rgb = aggregate(records, rows, ["val/semseg/miou"])
    # Whole-encoder fractions only (a stage's stays in the runs' records); a row without exchange: blank.
    assert cen["exchanged depth mean"] == pytest.approx(0.4) and cen["exchanged rgb mean"] == pytest.approx(0.15)
    assert rgb["exchanged depth mean"] is None and rgb["exchanged rgb mean"] is None
    assert not any("layer4" in k for k in cen)
    text = markdown(
        {"study": "s", "metrics": ["val/semseg/miou"], "seeds": [0, 1], "baselines": [], "rows": [cen, rgb]}
    )
    header, _, cen_line, rgb_line = text.splitlines()
    assert "| exchanged |" in header and "| depth 0.400, rgb 0.150 |" in cen_line and "|  |" in rgb_line
    # Studies without CEN have no such column.
    assert not any(k.startswith("exchanged") for k in aggregate(records[2:], rows[1:], ["val/semseg/miou"])[0])


def test_two_baselines_with_the_same_metric_are_refused():
    with pytest.raises(ConfigError, match=r"baselines: baseline rows 'st_s' and 'mt' both report 'val/semseg/miou'"):
        baseline_of(_records(), ["st_s", "mt"])


def _table():
    return {
        "study": "t",
        "parent_run_id": "p",
        "metrics": ["val/semseg/miou", "val/depth/rmse"],
        "seeds": [0, 1],
        "baselines": ["st_s", "st_d"],
        "rows": aggregate(_records(), ROWS, ["val/semseg/miou", "val/depth/rmse"], ["st_s", "st_d"]),
        "runs": [],
    }


def test_table_files_are_written_and_replace_old_ones_only_whole(tmp_path, monkeypatch):
    import pipelines.study.table as table_mod

    files = write_table(_table(), tmp_path / "out")
    assert [f.name for f in files] == list(TABLE_FILES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(TABLE_FILES)  # no temp file left
    data = json.loads((tmp_path / "out" / "table.json").read_text())
    assert [r["row"] for r in data["rows"]] == ["st_s", "st_d", "mt"]
    csv_lines = (tmp_path / "out" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("row,n,seeds,val/semseg/miou mean,val/semseg/miou std,val/depth/rmse mean")
    assert csv_lines[2].startswith("st_d,2,0 1,,,2.0,1.41421")  # a missing metric is an empty cell
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| mt | 2 | 0.5 ± 0.071 | 2.1 ± 0.42 | -2.50 ± 17.68 | 2e-05 |  | 25 |" in md
    assert (tmp_path / "out" / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A failure while the table is being made leaves the previous table as it was.
    before = {n: (tmp_path / "out" / n).read_bytes() for n in TABLE_FILES}

    def broken(table):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(table_mod, "plot", broken)
    changed = _table()
    changed["study"] = "other"
    with pytest.raises(RuntimeError, match="plot failed"):
        write_table(changed, tmp_path / "out")
    assert {n: (tmp_path / "out" / n).read_bytes() for n in TABLE_FILES} == before


def _log_study_run(tmp_path: Path, uri: str, name: str, with_table: bool = True) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("studies") if client.get_experiment_by_name("studies") is None else None
    exp = exp or client.get_experiment_by_name("studies").experiment_id
    run = client.create_run(exp, tags={"fusionpipe.kind": "study", "fusionpipe.study": name}, run_name=name)
    if with_table:
        table = {**_table(), "study": name, "parent_run_id": run.info.run_id}
        for f in write_table(table, tmp_path / name):
            client.log_artifact(run.info.run_id, str(f))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_compare_study_reads_the_table_back_from_the_parent_run(tmp_path):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from pipelines.cli.main import cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    old = _log_study_run(tmp_path, uri, "rgbd")
    new = _log_study_run(tmp_path, uri, "rgbd")
    unfinished = _log_study_run(tmp_path, uri, "mtl", with_table=False)
    client = MlflowClient(tracking_uri=uri)
    plain = client.create_run(client.get_experiment_by_name("studies").experiment_id).info.run_id

    runner = CliRunner()
    res = runner.invoke(cli, ["compare", "--study", "rgbd", "--tracking-uri", uri, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["parent_run_id"] == new  # by name: the newest study run of that name
    assert [r["row"] for r in out["rows"]] == ["st_s", "st_d", "mt"]
    assert out["rows"][2]["delta_m mean"] == pytest.approx(-2.5)
    res = runner.invoke(cli, ["compare", "--study", old, "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    assert "| row | n | val/semseg/miou ↑ | val/depth/rmse ↓ | delta_m % ↑ |" in res.stdout
    assert f"parent run: {old}" in res.stdout

    for ref, message in [
        ("nosuch", "no study run with id or study name 'nosuch'"),
        (plain, f"run {plain!r} is not a study's parent run"),
        (unfinished, f"study run {unfinished} (mtl) has no table.json yet"),
    ]:
        res = runner.invoke(cli, ["compare", "--study", ref, "--tracking-uri", uri])
        assert res.exit_code == 2 and message in res.stderr, res.output
    res = runner.invoke(cli, ["compare", "--study", "rgbd", "--sweep", "x", "--tracking-uri", uri])
    assert res.exit_code == 2 and "exactly one of --experiment, --run-ids, --sweep and --study" in res.stderr
    res = runner.invoke(cli, ["compare", "--study", "rgbd", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"])
    assert res.exit_code == 2 and "no MLflow tracking store at" in res.stderr


def test_cli_bad_spec_exits_2_before_ray(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli.main import cli

    p = _spec(tmp_path, BASE + "rows: [{name: a, config: configs/smoke.yaml, set: {train.seed: 1}}]\n")
    res = CliRunner().invoke(cli, ["study", "--spec", str(p), "--json"])
    assert res.exit_code == 2
    assert "set.train.seed: set by the study itself" in json.loads(res.stdout)["error"]
    res = CliRunner().invoke(cli, ["study", "--spec", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "none.yaml: no such study file" in res.stderr


@pytest.mark.integration
def test_a_study_runs_rows_x_seeds_under_one_parent_and_resumes(ray_cluster, smoke_shards, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.study.driver import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = _spec(
        tmp_path,
        "metrics: [val/semseg/miou, val/depth/rmse]\nseeds: [0, 1]\n"
        "set: {train.epochs: 1, train.batch_size: 4, train.preview_every: 0, data.tasks: [semseg, depth]}\n"
        "trial: {workers: 1, cpus_per_worker: 0.5}\nmax_concurrent_trials: 4\n"
        "rows:\n"
        "  - {name: mtinet, config: configs/smoke.yaml}\n"
        "  - {name: slow_lr, config: configs/smoke.yaml, set: {optim.lr: 0.0005}}\n",
        "tiny.yaml",
    )
    overrides = [
        f"data.shards={smoke_shards}",
        f"tracking.uri={uri}",
        "tracking.experiment=studies",
        f"checkpoint.storage_path={tmp_path}/ray",
    ]
    first = run_study(spec, overrides, verbose=0)
    assert first["finished"] == 4 and first["errored"] == [] and not first["resumed"]

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["fusionpipe.kind"] == "study" and parent.data.tags["fusionpipe.study"] == "tiny"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    cells = sorted((c.data.tags["fusionpipe.study_row"], c.data.tags["fusionpipe.seed"]) for c in children)
    assert cells == [("mtinet", "0"), ("mtinet", "1"), ("slow_lr", "0"), ("slow_lr", "1")]
    assert all(c.data.tags["fusionpipe.study"] == "tiny" and c.info.status == "FINISHED" for c in children)
    assert {c.data.params["train.seed"] for c in children} == {"0", "1"}
    assert {c.data.params["optim.lr"] for c in children} == {"0.002", "0.0005"}

    rows = {r["row"]: r for r in first["table"]["rows"]}
    for row, r in rows.items():
        assert r["n"] == 2 and r["params"] > 0 and r["flops"] > 0
        mine = [c for c in children if c.data.tags["fusionpipe.study_row"] == row]
        for m in ("val/semseg/miou", "val/depth/rmse"):
            values = [c.data.metrics[m] for c in mine]
            assert r[f"{m} mean"] == pytest.approx(statistics.fmean(values))
            assert r[f"{m} std"] == pytest.approx(statistics.stdev(values))
        seconds = [client.get_metric_history(c.info.run_id, "train/epoch_s")[0].value for c in mine]
        assert r["train_s mean"] == pytest.approx(statistics.fmean(seconds))
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert set(TABLE_FILES) | {"study.yaml", "configs"} <= logged
    assert json.loads((tmp_path / "ray" / "tiny" / "table.json").read_text())["rows"] == json.loads(
        json.dumps(first["table"]["rows"])
    )

    # The same command again reruns nothing: same parent run, no new run, no trial's run touched.
    ended = {c.info.run_id: c.info.end_time for c in children}
    second = run_study(spec, overrides, verbose=0)
    assert second["resumed"] and second["parent_run_id"] == first["parent_run_id"] and second["finished"] == 4
    again = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {c.info.run_id: c.info.end_time for c in again} == ended
    assert second["table"]["rows"] == first["table"]["rows"]
    # A changed spec under the same name is refused.
    with pytest.raises(ConfigError, match=r"study 'tiny' at .* was started with another study spec"):
        run_study(spec, [*overrides, "optim.lr=0.1"], verbose=0)
