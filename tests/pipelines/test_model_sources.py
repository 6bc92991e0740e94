"""Where a run's weights come from and go: model.pretrained is read from the project root like data.shards, a
missing file is a config error before Ray starts, a checkpoint loads without it, a weights-only copy of a
checkpoint verifies, and registry names are checked."""

import pytest
import torch

from fusion.backbones import build_backbone
from pipelines.checkpoints import (
    MODEL,
    TRAIN_STATE,
    build_checkpoint_model,
    load_model_state,
    read_meta,
    save_checkpoint,
    verify_checkpoint,
    write_weights_only,
)
from pipelines.config import ConfigError, load_config
from pipelines.train.driver import validate_experiment
from tests import REPO_ROOT

MCFG = {
    "name": "single_task",
    "tasks": ["semseg"],
    "modalities": ["rgb"],
    "num_classes": 3,
    "backbone": "resnet18",
    "width": 0.125,
}


def test_pretrained_is_resolved_against_the_project_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONPIPE_PROJECT_ROOT", str(tmp_path))
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["model.pretrained=weights/r18.pth"])
    assert cfg.model.pretrained == "weights/r18.pth"  # as written: MLflow params and best_config.yaml keep it
    assert cfg.resolved_paths().model.pretrained == str(tmp_path / "weights" / "r18.pth")
    absolute = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["model.pretrained=/mnt/shared/r18.pth"])
    assert absolute.resolved_paths().model.pretrained == "/mnt/shared/r18.pth"


def test_a_missing_pretrained_file_is_a_config_error_naming_the_resolved_path(tmp_path, monkeypatch, smoke_shards):
    monkeypatch.setenv("FUSIONPIPE_PROJECT_ROOT", str(tmp_path))
    cfg = load_config(
        REPO_ROOT / "configs" / "smoke.yaml", [f"data.shards={smoke_shards}", "model.pretrained=weights/r18.pth"]
    )
    with pytest.raises(ConfigError, match=rf"model: pretrained {tmp_path}/weights/r18\.pth: no such file"):
        validate_experiment(cfg)
    (tmp_path / "weights").mkdir()
    state = build_backbone("resnet18", width=0.125).state_dict()
    torch.save(state, tmp_path / "weights" / "r18.pth")
    validate_experiment(cfg)  # found where the config said, from any working directory


def test_a_checkpoint_loads_without_its_imagenet_file(tmp_path):
    torch.manual_seed(0)
    model = build_checkpoint_model({**MCFG, "pretrained": None})
    mcfg = {**MCFG, "pretrained": str(tmp_path / "gone.pth")}  # trained from a file that is not here
    save_checkpoint(tmp_path / "ckpt", model, {"epoch": 1, "model_config": mcfg}, {"optimizer": {"step": 3}})
    meta = read_meta(tmp_path / "ckpt", require=("model_config",))
    loaded = build_checkpoint_model(meta["model_config"])
    load_model_state(loaded, tmp_path / "ckpt")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_weights_only_copy_verifies_and_has_no_optimizer_state(tmp_path):
    model = build_checkpoint_model(MCFG)
    full = save_checkpoint(
        tmp_path / "full", model, {"epoch": 2, "model_config": MCFG}, {"optimizer": {"state": torch.ones(1000)}}
    )
    copy = write_weights_only(full, tmp_path / "copy", {"normalisation": {"rgb": {"scale": 1}}})
    assert not (copy / TRAIN_STATE).exists()
    assert (copy / MODEL).read_bytes() == (full / MODEL).read_bytes()
    meta = verify_checkpoint(copy)
    assert meta["weights_only"] is True and meta["epoch"] == 2 and meta["normalisation"] == {"rgb": {"scale": 1}}
    assert (copy / MODEL).stat().st_size + (full / TRAIN_STATE).stat().st_size == sum(
        p.stat().st_size for p in full.iterdir() if p.suffix == ".pt"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tracking.register_as=my/model", r"tracking.register_as: 'my/model' is not a registry name"),
        ("tracking.register_as=' x'", r"tracking.register_as: ' x' is not a registry name"),
        ("tracking.register_alias=latest", r"tracking.register_alias: 'latest' is reserved by MLflow"),
        ("tracking.register_alias=v2", r"tracking.register_alias: 'v2' is reserved by MLflow"),
    ],
)
def test_registry_names_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / "configs" / "smoke.yaml", [override])
    ok = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["tracking.register_as=mtinet-nyud_v1.2"])
    assert (ok.tracking.register_as, ok.tracking.register_alias) == ("mtinet-nyud_v1.2", "best")
