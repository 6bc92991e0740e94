import pytest

from pipelines.config import ConfigError, apply_overrides, flatten, load_config, resolve_tracking_uri


def test_defaults_and_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 3}\nmodel: {name: padnet}\n")
    cfg = load_config(p, ["train.batch_size=5", "data.tasks=[semseg, edge]", "loss.weights={semseg: 2}"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.name) == (3, 5, "padnet")
    assert cfg.data.tasks == ["semseg", "edge"] and cfg.loss.weights == {"semseg": 2.0}


def test_every_problem_is_listed_with_its_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: {epochs: 0, batchsize: 2}\ndata: {tasks: [semseg, shading]}\noptim: {lr: -1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    for needle in ("train.epochs", "train.batchsize: unknown key", "data.tasks", "shading", "optim.lr"):
        assert needle in msg


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="weights names task"):
        load_config(None, ["data.tasks=[semseg]", "loss.weights={depth: 1}"])


def test_paths_resolve_to_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    cfg = load_config(None, ["data.shards=d/s"]).resolved_paths(tmp_path)
    assert cfg.data.shards == str(tmp_path / "d/s") and cfg.checkpoint.storage_path == str(tmp_path / "ray_results")


def test_flatten_for_mlflow_params():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_the_model_section_has_the_model_configs_keys_and_bounds():
    from fusion.config import ModelConfig, ModelFields
    from pipelines.config import ModelSection, model_config

    assert issubclass(ModelSection, ModelFields) and set(ModelSection.model_fields) < set(ModelConfig.model_fields)
    with pytest.raises(ConfigError, match=r"model.width: .*greater than 0 \(got 0\)"):
        load_config(None, ["model.width=0"])
    with pytest.raises(ConfigError, match=r"model.output_stride: .*8, 16 or 32 \(got 4\)"):
        load_config(None, ["model.output_stride=4"])
    cfg = load_config(None, ["model.name=padnet", "data.tasks=[semseg, edge]", "model.options={channels: 16}"])
    assert model_config(cfg, 5) == {
        "name": "padnet",
        "tasks": ["semseg", "edge"],
        "modalities": ["rgb"],
        "num_classes": 5,
        "backbone": "resnet18",
        "width": 1.0,
        "output_stride": 32,
        "pretrained": None,
        "options": {"channels": 16, "fuse": True},
    }
