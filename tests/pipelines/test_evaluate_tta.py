"""fusionpipe evaluate with sliding-window, multi-scale and flip inference (fusion.inference)."""

import json

import pytest
from click.testing import CliRunner

from datasets.sources.cityscapes import CityscapesSource
from datasets.writer import write_dataset
from fusion import build_model
from pipelines.analysis.evaluate import run_evaluate
from pipelines.checkpoints import save_checkpoint
from pipelines.cli.main import cli
from pipelines.config import ConfigError, load_config, model_config
from tests import REPO_ROOT
from tests.datasets.test_benchmark_converters import H, W, write_cityscapes

CONFIG = REPO_ROOT / "configs" / "cityscapes" / "ann_resnet101.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Cityscapes fixture shards (6×8 images) and a tiny checkpoint of the Cityscapes set-up's ANN."""
    tmp = tmp_path_factory.mktemp("tta")
    write_dataset(CityscapesSource(str(write_cityscapes(tmp / "src"))), tmp / "shards", progress=False)
    overrides = [
        f"data.shards={tmp / 'shards'}",
        f"tracking.uri=sqlite:///{tmp}/m.db",
        "model.width=0.0625",
        "model.backbone=resnet18",  # the evaluation path is under test, not ResNet-101: fewer convs
        "model.pretrained=null",
        "data.augment.crop=[4, 4]",
        "train.workers=1",
        "train.use_gpu=false",
        "train.sync_batchnorm=false",
    ]
    cfg = load_config(CONFIG, overrides)
    classes = json.loads((tmp / "shards" / "manifest.json").read_text())["classes"]
    mcfg = model_config(cfg.resolved_paths(), len(classes))
    save_checkpoint(tmp / "ck", build_model(mcfg), {"epoch": 0, "model_config": mcfg, "classes": classes})
    return cfg, str(tmp / "ck"), overrides


def test_a_window_the_size_of_the_image_scores_as_a_plain_forward(ckpt):
    cfg, ck, _ = ckpt
    plain = run_evaluate(cfg, checkpoint=ck, device="cpu")
    assert "inference" not in plain
    whole = run_evaluate(cfg, checkpoint=ck, device="cpu", window=(H, W))
    assert whole["metrics"] == plain["metrics"]
    assert whole["inference"] == {"scales": [1.0], "flip": False, "window": [H, W], "stride_ratio": 0.667}
    tta = run_evaluate(cfg, checkpoint=ck, device="cpu", window=(4, 4), scales=[0.75, 1.0, 1.25], flip=True)
    assert tta["inference"] == {"scales": [0.75, 1.0, 1.25], "flip": True, "window": [4, 4], "stride_ratio": 0.667}
    assert 0.0 <= tta["metrics"]["semseg/miou"] <= 1.0 and tta["num_samples"] == plain["num_samples"] == 1


def test_bad_inference_settings_are_config_errors(ckpt):
    cfg, ck, _ = ckpt
    with pytest.raises(ConfigError, match="evaluate: stride_ratio must be in"):
        run_evaluate(cfg, checkpoint=ck, device="cpu", window=(4, 4), stride_ratio=0.0)
    with pytest.raises(ConfigError, match="evaluate: scales must be"):
        run_evaluate(cfg, checkpoint=ck, device="cpu", scales=[0.0])


@pytest.mark.parametrize(
    "args, error",
    [
        (["--window", "0,5"], "--window '0,5': expected H,W"),
        (["--window", "big"], "--window 'big': expected H,W"),
        (["--scales", "1.0,x"], "--scales '1.0,x': expected numbers > 0"),
        (["--scales", "-1"], "--scales '-1': expected numbers > 0"),
        (
            ["--set", "data.augment.crop=null", "--set", "data.augment.scale=null", "--window", "crop"],
            "--window crop: the config has no data.augment.crop",
        ),
        (["--window", "4,4", "--stride-ratio", "0"], "evaluate: stride_ratio must be in (0, 1]"),
    ],
)
def test_evaluate_cli_names_a_bad_inference_option_and_exits_2(ckpt, args, error):
    _, ck, overrides = ckpt
    sets = [a for o in overrides for a in ("--set", o)]
    res = CliRunner().invoke(cli, ["evaluate", "--config", str(CONFIG), *sets, "--checkpoint", ck, *args, "--json"])
    assert res.exit_code == 2, res.output
    assert json.loads(res.stdout)["error"].startswith(error)


def test_evaluate_cli_window_crop_takes_the_configs_crop(ckpt):
    _, ck, overrides = ckpt
    sets = [a for o in overrides for a in ("--set", o)]
    args = ["evaluate", "--config", str(CONFIG), *sets, "--checkpoint", ck, "--device", "cpu"]
    res = CliRunner().invoke(cli, [*args, "--window", "crop", "--flip", "--scales", "1,1.5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["inference"] == {"scales": [1.0, 1.5], "flip": True, "window": [4, 4], "stride_ratio": 0.667}


def test_the_predict_helper_takes_the_same_inference_options():
    import torch

    from pipelines.train.steps import predict
    from tests.fusion.test_inference import tiny_ann

    net = tiny_ann()
    x = {"rgb": torch.randn(1, 3, 24, 32)}
    plain = predict(net, x)
    assert set(plain) >= {"semseg", "aux"}  # the model's own outputs, aux included
    whole = predict(net, x, tasks=["semseg"], window=(24, 32))
    assert set(whole) == {"semseg"} and torch.equal(whole["semseg"], plain["semseg"])
    mirrored = predict(net, {"rgb": x["rgb"].flip(-1)}, tasks=["semseg"], flip=True, scales=[0.75, 1.0])
    both = predict(net, x, tasks=["semseg"], flip=True, scales=[0.75, 1.0])
    assert (mirrored["semseg"] - both["semseg"].flip(-1)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="needs the tasks"):
        predict(net, x, flip=True)
