"""The evaluation options of the config: edge protocol (evaluate and per-epoch validation) and mIoU classes."""

import pytest

from pipelines.config import ConfigError, flatten, load_config


def test_defaults_are_recorded_in_the_runs_params():
    cfg = load_config(None)
    assert (cfg.data.edge_protocol, cfg.data.val_edge_protocol, cfg.data.miou_classes) == (
        "bsds",
        "approximate",
        "present",
    )
    params = flatten(cfg.model_dump(mode="json"))  # what a run logs as its MLflow params
    assert params["data.edge_protocol"] == "bsds" and params["data.miou_classes"] == "present"
    cfg = load_config(None, ["data.miou_classes=all", "data.val_edge_protocol=bsds"])
    assert flatten(cfg.model_dump(mode="json"))["data.miou_classes"] == "all"
    assert cfg.data.val_edge_protocol == "bsds"


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.edge_protocol=exact", "data.edge_protocol"),
        ("data.val_edge_protocol=seism", "data.val_edge_protocol"),
        ("data.miou_classes=some", "data.miou_classes"),
    ],
)
def test_an_unknown_value_is_a_config_error_naming_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value) and override.split("=")[1] in str(e.value)


@pytest.mark.parametrize(
    "path, miou_classes, edge_max_dist",
    [
        ("configs/nyud/mtinet_hrnet18.yaml", "all", 0.0075),
        ("configs/nyud/mtinet_hrnet48.yaml", "all", 0.0075),
        ("configs/nyud/cen_resnet101.yaml", "present", 0.0075),
        ("configs/nyud/ann_resnet101.yaml", "present", 0.0075),
    ],
)
def test_paper_configs_evaluate_as_their_papers_did(path, miou_classes, edge_max_dist):
    cfg = load_config(path)
    assert (cfg.data.miou_classes, cfg.data.edge_max_dist, cfg.data.edge_protocol) == (
        miou_classes,
        edge_max_dist,
        "bsds",
    )


@pytest.mark.parametrize("path", ["configs/nyud/mtinet_hrnet18.yaml", "configs/nyud/mtinet_hrnet48.yaml"])
def test_mtinet_paper_configs_use_the_official_augmentation_and_fpm(path):
    cfg = load_config(path)
    a = cfg.data.augment
    assert (a.hflip, a.zoom, a.scale, a.rotate, a.crop, a.resize) == (
        0.5,
        (1.0, 1.2, 1.5),
        None,
        None,
        None,
        (480, 640),
    )
    assert cfg.model.options["fpm_softmax"] == "reference"
