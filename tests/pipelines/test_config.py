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


def test_a_set_value_that_is_not_yaml_names_the_override():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochs=3", "optim.lr=[1"])
    assert str(e.value).startswith("--set 'optim.lr=[1': value '[1' is not valid YAML (expected ',' or ']'")


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.weight_decay=.inf", "optim.weight_decay"),
        ("optim.clip_grad_norm=.inf", "optim.clip_grad_norm"),
        ("optim.clip_grad_norm=inf", "optim.clip_grad_norm"),  # text that float() would read as infinity
        ("loss.weights={semseg: .inf}", "loss.weights.semseg"),
        ("train.cpus_per_worker=.inf", "train.cpus_per_worker"),
        ("model.width=.inf", "model.width"),
    ],
)
def test_floats_must_be_finite(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"  - {field}: " in str(e.value)
    assert "finite" in str(e.value).split(f"  - {field}: ")[1] and "1 problem(s)" in str(e.value)


@pytest.mark.parametrize(
    "override, line",
    [
        ("train.epochs=true", "train.epochs: expected a whole number, like 2 (not 2.0, '2' or true) (got True)"),
        ("train.batch_size=2.0", "train.batch_size: expected a whole number, like 2 (not 2.0, '2' or true) (got 2.0)"),
        ("train.workers='2'", "train.workers: expected a whole number, like 2 (not 2.0, '2' or true) (got '2')"),
        ("checkpoint.keep=1.5", "checkpoint.keep: expected a whole number, like 2 (not 2.0, '2' or true) (got 1.5)"),
        ("train.use_gpu=1", "train.use_gpu: expected true or false, unquoted (not 1 or 'true') (got 1)"),
        ("loss.ohem='true'", "loss.ohem: expected true or false, unquoted (not 1 or 'true') (got 'true')"),
        ("optim.lr=true", "optim.lr: expected a number, not a boolean (got True)"),
        ("model.width=true", "model.width: expected a number, not a boolean (got True)"),
    ],
)
def test_counts_switches_and_numbers_are_not_coerced(override, line):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"  - {line}" in str(e.value).splitlines()


def test_plain_yaml_values_still_parse_into_strict_fields():
    # `--set` values are YAML: 3 is an int, 1e-3 the text YAML 1.1 leaves it as (a float field parses it).
    cfg = load_config(None, ["train.epochs=3", "optim.lr=1e-3", "train.cpus_per_worker=2", "train.amp=false"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.train.cpus_per_worker, cfg.train.amp) == (3, 0.001, 2.0, False)
    assert type(cfg.train.epochs) is int and type(cfg.optim.lr) is float


@pytest.mark.parametrize(
    "uri, why",
    [
        ("sqlite:/rel.db", "not a sqlite store: write sqlite:///RELATIVE/PATH.db"),
        ("sqlite://x.db", "not a sqlite store"),
        ("sqlite:///", "not a sqlite store"),
        ("http://", "names no tracking server: write http://HOST"),
        ("https://host:port", "the port of 'host:port' is not a number"),
        ("foo://bar", "unknown tracking store scheme 'foo'"),
        ("localhost:5000", "unknown tracking store scheme 'localhost'"),
        (" http://h:5000", "must not be empty or start or end with spaces"),
    ],
)
def test_a_malformed_tracking_uri_is_named(uri, why, monkeypatch):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"tracking.uri={uri!r}"])
    assert f"  - tracking.uri: {why}" in str(e.value) and f"(got {uri!r})" in str(e.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError) as e:
        resolve_tracking_uri(None)
    assert str(e.value).startswith(f"MLFLOW_TRACKING_URI {uri!r}: ") and why in str(e.value)


@pytest.mark.parametrize(
    "uri", ["sqlite:///m.db", "sqlite:////abs/m.db?timeout=5", "http://10.0.0.5:5000", "postgresql+psycopg2://u@h/db"]
)
def test_well_formed_tracking_uris_pass(uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert load_config(None, [f"tracking.uri={uri}"]).tracking.uri == uri
