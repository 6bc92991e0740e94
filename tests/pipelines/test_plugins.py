"""Config plugins: a module listed in ``plugins`` registers a new task, and the whole pipeline (config,
converter, shards, Ray Train workers, MLflow, evaluate) then knows it."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.config import ConfigError, load_config

PLUGIN = "tests.pipelines.elevation_plugin"


@pytest.fixture
def elevation():
    """The plugin imported afresh for this test, and everything it registered removed afterwards."""
    import importlib

    sys.modules.pop(PLUGIN, None)
    module = importlib.import_module(PLUGIN)
    yield module
    module.unregister()
    sys.modules.pop(PLUGIN, None)


@pytest.fixture
def no_elevation():
    sys.modules.pop(PLUGIN, None)
    from fusion.tasks import TASKS

    assert "elevation" not in TASKS
    yield
    if PLUGIN in sys.modules:
        sys.modules.pop(PLUGIN).unregister()


def test_plugins_are_imported_before_the_config_is_checked(no_elevation):
    with pytest.raises(
        ConfigError,
        match=r"data.tasks: .*unknown task\(s\) \['elevation'\]; known: .*"
        r"\(a module listed in plugins can register more\)",
    ):
        load_config(None, ["data.tasks=[semseg, elevation]"])
    cfg = load_config(None, [f"plugins=[{PLUGIN}]", "data.tasks=[semseg, elevation]"])
    assert cfg.plugins == [PLUGIN] and cfg.data.tasks == ["semseg", "elevation"]
    # The config a Ray worker receives validates there the same way (it imports the plugin itself).
    from pipelines.config import ExperimentConfig

    assert ExperimentConfig.model_validate(cfg.model_dump(mode="json")).data.tasks == ["semseg", "elevation"]


@pytest.mark.parametrize(
    "plugins, match",
    [
        (
            "[tests.pipelines.no_such_plugin]",
            r"plugins: cannot import 'tests.pipelines.no_such_plugin': "
            r"ModuleNotFoundError",
        ),
        ("tests.pipelines.elevation_plugin", r"plugins must be a list of module names, got 'tests.pipelines"),
        ("[fusion.tasks, '']", r"plugins must be a list of module names"),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_a_config_error(plugins, match, no_elevation):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"plugins={plugins}"])


def test_a_plugin_whose_registration_fails_names_itself(elevation, tmp_path, monkeypatch):
    # A second plugin that registers the same task again: its import fails inside register_task.
    (tmp_path / "elevation_again.py").write_text("from tests.pipelines.elevation_plugin import register\nregister()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"plugins: cannot import 'elevation_again': ValueError: "
        r"register_task: task 'elevation' is already registered",
    ):
        load_config(None, ["plugins=[elevation_again]"])
    sys.modules.pop("elevation_again", None)


def test_a_task_without_a_shard_member_is_an_experiment_problem(tmp_path, smoke_shards):
    from fusion.tasks import TASK_REGISTRY, Task, register_task
    from pipelines.train.driver import validate_experiment

    register_task(Task("slope", 1, lambda **_: None, lambda **_: None))
    try:
        cfg = load_config(None, [f"data.shards={smoke_shards}", "data.tasks=[semseg, slope]"])
        with pytest.raises(
            ConfigError,
            match=r"data.tasks: no shard member is registered for task\(s\) \['slope'\]; "
            r"register one with datasets.codec.register_member",
        ):
            validate_experiment(cfg)
    finally:
        TASK_REGISTRY.pop("slope")


def test_data_build_imports_plugins_for_their_members(tmp_path, no_elevation):
    import json

    from click.testing import CliRunner

    from pipelines.cli.main import cli

    folder = tmp_path / "raw"
    (folder / "images").mkdir(parents=True)
    (folder / "elevation").mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(folder / "images" / f"{stem}.png")
        np.save(folder / "elevation" / f"{stem}.npy", np.full((4, 5), 1.25, np.float32))
    args = [
        "data",
        "build",
        "folder",
        "--root",
        str(folder),
        "--val-fraction",
        "0",
        "--out",
        str(tmp_path / "ds"),
        "--workers",
        "1",
        "--json",
    ]
    # Without the plugin, elevation/ is not a member: only the images are written.
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["members"] == ["rgb"]
    out = CliRunner().invoke(cli, [*args, "--plugin", PLUGIN])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["members"] == ["rgb", "elevation"]
    from datasets.inspect import read_samples

    (sample, _) = read_samples(tmp_path / "ds", "train", 2)
    np.testing.assert_allclose(sample["elevation"], 1.25)
    bad = CliRunner().invoke(cli, [*args, "--plugin", "tests.pipelines.no_such_plugin"])
    assert bad.exit_code != 0 and "cannot import 'tests.pipelines.no_such_plugin'" in bad.output


def test_the_installed_command_finds_a_plugin_in_the_directory_it_runs_from(tmp_path):
    import os
    import subprocess

    (tmp_path / "my_tasks.py").write_text("from pathlib import Path\nPath('imported.txt').write_text('yes')\n")
    exe = Path(sys.executable).with_name("fusionpipe")
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [
            str(exe),
            "data",
            "build",
            "synthetic",
            "--plugin",
            "my_tasks",
            "--out",
            "ds",
            "--num-train",
            "1",
            "--num-val",
            "0",
            "--height",
            "16",
            "--width",
            "16",
            "--workers",
            "1",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "imported.txt").read_text() == "yes" and (tmp_path / "ds" / "manifest.json").is_file()


def test_compare_leaves_unknown_tasks_out_of_delta_m_until_their_plugin_is_imported(tmp_path, no_elevation):
    from click.testing import CliRunner

    from pipelines.analysis.compare import compare
    from pipelines.cli.compare import compare as compare_cmd
    from tests.pipelines.test_compare import _fill

    uri = f"sqlite:///{tmp_path}/m.db"
    runs = {
        "mtl": ({}, {}, {"val/semseg/miou": [0.5], "val/elevation/rmse": [0.8]}, 1.0),
        "st_semseg": ({}, {}, {"val/semseg/miou": [0.4]}, 1.0),
        "st_elevation": ({}, {}, {"val/elevation/rmse": [1.0]}, 1.0),
    }
    ids = _fill(uri, "exp", runs)
    refs = [ids["st_semseg"], ids["st_elevation"]]
    without = compare(uri, experiment="exp", baseline_runs=refs)
    assert without["delta_m_left_out"] == ["elevation"]
    assert without["delta_m"][ids["mtl"]]["terms"] == {"semseg/miou": pytest.approx(25.0)}
    human = CliRunner().invoke(
        compare_cmd, ["--experiment", "exp", "--tracking-uri", uri, *sum((["--baseline-runs", r] for r in refs), [])]
    )
    assert human.exit_code == 0 and "warning: task(s) elevation are not registered here" in human.stderr
    out = CliRunner().invoke(
        compare_cmd,
        [
            "--experiment",
            "exp",
            "--tracking-uri",
            uri,
            "--plugin",
            PLUGIN,
            "--json",
            *sum((["--baseline-runs", r] for r in refs), []),
        ],
    )
    assert out.exit_code == 0, out.output
    import json

    result = json.loads(out.stdout)
    assert "delta_m_left_out" not in result
    assert result["delta_m"][ids["mtl"]]["terms"] == {
        "semseg/miou": pytest.approx(25.0),
        "elevation/rmse": pytest.approx(20.0),
    }
    assert result["delta_m"][ids["mtl"]]["delta_m"] == pytest.approx(22.5)


def write_elevation_folder(root: Path) -> Path:
    """A `folder` dataset of synthetic rooms with an extra ``elevation/<stem>.npy`` map per image."""
    import yaml

    from datasets.sources.synthetic import SyntheticSource

    src = SyntheticSource(num_train=16, num_val=8, height=64, width=80, seed=5)
    for d in ("images", "semseg", "elevation", "splits"):
        (root / d).mkdir(parents=True)
    for split in ("train", "val"):
        stems = []
        for key in src.keys(split):
            s, stem = src.load(split, key), f"{split}{key}"
            Image.fromarray(s["rgb"]).save(root / "images" / f"{stem}.png")
            Image.fromarray(s["semseg"]).save(root / "semseg" / f"{stem}.png")
            # Metres above the camera's floor-level plane, from depth and the row: a learnable map.
            rows = np.linspace(1.0, 0.0, s["depth"].shape[0], dtype=np.float32)[:, None]
            np.save(root / "elevation" / f"{stem}.npy", np.where(s["depth"] > 0, rows * s["depth"] * 0.5, 0.0))
            stems.append(stem)
        (root / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": list(src.classes), "ignore_index": 255}))
    return root


@pytest.mark.integration
def test_a_plugin_task_trains_on_ray_and_is_tracked_and_evaluated(ray_cluster, tiny_config, elevation, tmp_path):
    from mlflow.tracking import MlflowClient

    from datasets.sources.folder import FolderSource
    from datasets.writer import write_dataset
    from pipelines.analysis.evaluate import run_evaluate
    from pipelines.train.driver import run_training

    folder = write_elevation_folder(tmp_path / "raw")
    shards = tmp_path / "shards"
    write_dataset(
        FolderSource(root=str(folder), classes=str(folder / "classes.yaml")), shards, shard_size=4, progress=False
    )
    cfg = tiny_config(
        f"plugins=[{PLUGIN}]",
        f"data.shards={shards}",
        "data.tasks=[semseg, elevation]",
        "train.epochs=1",
        "tracking.log_model=false",
    )
    summary = run_training(cfg, run_name="elevation")  # the workers import the plugin from the config
    client = MlflowClient(tracking_uri=cfg.resolved_paths().tracking.uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["plugins"] == f'["{PLUGIN}"]'
    source = Path(__file__).with_name("elevation_plugin.py")
    assert run.data.tags[f"plugin.{PLUGIN}.sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert run.data.tags[f"plugin.{PLUGIN}.path"] == "tests/pipelines/elevation_plugin.py"
    loss = client.get_metric_history(run.info.run_id, "train/loss/elevation")
    rmse = client.get_metric_history(run.info.run_id, "val/elevation/rmse")
    assert [m.step for m in loss] == [0] and loss[0].value > 0
    assert [m.step for m in rmse] == [0] and 0 < rmse[0].value < 10
    ev = run_evaluate(cfg, checkpoint=summary["best_checkpoint"])
    assert ev["metrics"]["elevation/rmse"] == pytest.approx(rmse[0].value, rel=1e-5)


def test_plugin_tags_hash_a_module_a_package_and_name_what_has_no_source(tmp_path, monkeypatch):
    from pipelines.track.tracker import changed_plugins, plugin_tags

    (tmp_path / "plug_mod.py").write_text("X = 1\n")
    pkg = tmp_path / "plug_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from plug_pkg.sub import y\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "y.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    for name in ("plug_mod", "plug_pkg"):
        sys.modules.pop(name, None)
        importlib.import_module(name)
    try:
        tags = plugin_tags(["plug_mod", "plug_pkg", "math", "never_imported"], repo=tmp_path / "elsewhere")
        assert tags["plugin.plug_mod.sha256"] == hashlib.sha256(b"X = 1\n").hexdigest()
        assert tags["plugin.plug_mod.path"] == (tmp_path / "plug_mod.py").resolve().as_posix()  # outside the repo
        assert tags["plugin.plug_pkg.path"] == pkg.resolve().as_posix()
        assert tags["plugin.math.sha256"] == tags["plugin.never_imported.sha256"] == "unknown"
        # Inside the repository the path is relative to it.
        assert plugin_tags(["plug_mod"], repo=tmp_path)["plugin.plug_mod.path"] == "plug_mod.py"
        # A change anywhere in the package changes its hash, and only its hash.
        (pkg / "sub" / "y.py").write_text("Y = 2\n")
        after = plugin_tags(["plug_mod", "plug_pkg"], repo=tmp_path)
        assert after["plugin.plug_pkg.sha256"] != tags["plugin.plug_pkg.sha256"]
        assert after["plugin.plug_mod.sha256"] == tags["plugin.plug_mod.sha256"]
        assert changed_plugins(tags, after) == ["math", "never_imported", "plug_pkg"]  # dropped ones count
        assert changed_plugins(after, after) == []
    finally:
        for name in ("plug_mod", "plug_pkg", "plug_pkg.sub", "plug_pkg.sub.y"):
            sys.modules.pop(name, None)


def test_a_resume_with_changed_plugin_code_warns_and_is_tagged(
    tmp_path, tiny_config, smoke_shards, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    from pipelines.track.run_record import open_run

    plugin = tmp_path / "plug_resume.py"
    plugin.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("plug_resume", None)
    try:
        cfg = tiny_config("plugins=[plug_resume]").resolved_paths()
        manifest = json.loads((smoke_shards / "manifest.json").read_text())
        tracker, resumed = open_run(cfg, "r", manifest)
        client = MlflowClient(tracking_uri=cfg.tracking.uri)
        tags = client.get_run(tracker.run_id).data.tags
        assert not resumed and tags["plugin.plug_resume.sha256"] == hashlib.sha256(b"X = 1\n").hexdigest()

        again, resumed = open_run(cfg, "r", manifest)  # the same code: nothing to say
        assert resumed and again.run_id == tracker.run_id
        assert "fusionpipe.plugins_changed" not in client.get_run(tracker.run_id).data.tags
        assert "plug_resume" not in capsys.readouterr().err

        plugin.write_text("X = 2\n")
        open_run(cfg, "r", manifest)
        err = capsys.readouterr().err
        assert "warning: run 'r': the code of plugin(s) plug_resume changed" in err
        tags = client.get_run(tracker.run_id).data.tags
        assert tags["fusionpipe.plugins_changed"] == "plug_resume"
        assert tags["plugin.plug_resume.sha256"] == hashlib.sha256(b"X = 2\n").hexdigest()  # the code from now on
    finally:
        sys.modules.pop("plug_resume", None)


def test_the_plugins_directory_is_a_dvc_dependency_of_train_and_evaluate(monkeypatch):
    """A plugin kept in plugins/ re-runs the stages that import it when it changes (DVC's own parser)."""
    from dvc.repo import Repo

    from tests import REPO_ROOT

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = Repo(str(REPO_ROOT))
    for stage in ("train", "evaluate"):
        assert "plugins" in [d.def_path for d in repo.stage.collect(stage)[0].deps], stage
    # And it is the package a config names as plugins.<module>: importable from the repository root.
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config(None, ["plugins=[plugins]"])
    assert cfg.plugins == ["plugins"] and sys.modules["plugins"].__file__ == str(REPO_ROOT / "plugins" / "__init__.py")


def test_resume_records_plugin_code_of_an_older_run_quietly_and_drops_removed_plugins(
    tmp_path, tiny_config, smoke_shards, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    from pipelines.track.run_record import open_run

    for name in ("plug_a", "plug_b"):
        (tmp_path / f"{name}.py").write_text(f"NAME = {name!r}\n")
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    manifest = json.loads((smoke_shards / "manifest.json").read_text())
    try:
        both = tiny_config("plugins=[plug_a, plug_b]").resolved_paths()
        tracker, _ = open_run(both, "r", manifest)
        client = MlflowClient(tracking_uri=both.tracking.uri)
        for key in [k for k in client.get_run(tracker.run_id).data.tags if k.startswith("plugin.")]:
            client.delete_tag(tracker.run_id, key)  # as a run started before plugin code was tagged
        capsys.readouterr()
        open_run(both, "r", manifest)
        tags = client.get_run(tracker.run_id).data.tags
        assert "warning" not in capsys.readouterr().err and "fusionpipe.plugins_changed" not in tags
        assert tags["plugin.plug_a.sha256"] == hashlib.sha256(b"NAME = 'plug_a'\n").hexdigest()
        # plug_b is dropped: a change on record, and its tags go.
        open_run(tiny_config("plugins=[plug_a]").resolved_paths(), "r", manifest)
        tags = client.get_run(tracker.run_id).data.tags
        assert "plug_b" in capsys.readouterr().err and tags["fusionpipe.plugins_changed"] == "plug_b"
        assert "plugin.plug_b.sha256" not in tags and "plugin.plug_b.path" not in tags
        assert "plugin.plug_a.sha256" in tags
    finally:
        for name in ("plug_a", "plug_b"):
            sys.modules.pop(name, None)
