"""The PASCAL-MT (MTI-Net) and SUN RGB-D (CEN) paper set-ups train a step on their converters' shards.

As ``test_benchmark_setups.py`` does for the ANN set-ups: :func:`validate_experiment` (the checks before
Ray starts), the model from :func:`model_config`, the training stream with the config's augmentation, the
loss, optimizer and schedule, and :func:`train_epoch`, without Ray; only the width, the pretrained weights
and the image size are made CPU-sized.
"""

import functools
import math

import pytest
import torch

from datasets.loader import ShardStream, make_loader
from datasets.sources.pascal_mt import PascalMtSource
from datasets.sources.sunrgbd import SunrgbdSource
from datasets.transforms import build_transform
from datasets.writer import write_dataset
from fusion import build_model
from fusion.losses import MultiTaskLoss
from pipelines.config import ConfigError, load_config, model_config
from pipelines.train.driver import validate_experiment
from pipelines.train.steps import lr_at, make_optimizer, train_epoch
from tests import REPO_ROOT
from tests.datasets.test_converters_mt import write_pascal, write_sun


def _pascal(root):
    write_pascal(root)
    return PascalMtSource(str(root))


def _sun(root):
    write_sun(root)
    return SunrgbdSource(str(root))


# config, source, number of classes, overrides that make the images CPU-sized
SETUPS = {
    "pascal_mt": ("pascal_mt/mtinet_hrnet18.yaml", _pascal, 21, ["data.augment.resize=[64, 64]"]),
    "sunrgbd": ("sunrgbd/cen_resnet101.yaml", _sun, 37, ["data.augment.crop=[32, 32]"]),
}
TINY = ["model.width=0.0625", "model.pretrained=null", "train.workers=1", "train.use_gpu=false"]
TINY += ["train.amp=false", "train.sync_batchnorm=false", "data.loader_workers=0", "data.shuffle_buffer=0"]


@pytest.fixture(scope="module", params=sorted(SETUPS))
def setup(request, tmp_path_factory):
    name = request.param
    config, make_source, num_classes, size = SETUPS[name]
    tmp = tmp_path_factory.mktemp(name)
    write_dataset(make_source(tmp / "src"), tmp / "shards", shard_size=2, progress=False)
    return REPO_ROOT / "configs" / config, [f"data.shards={tmp / 'shards'}", *TINY, *size], num_classes


def test_paper_setup_trains_one_step_on_its_converted_data(setup):
    path, overrides, num_classes = setup
    cfg = load_config(path, overrides)
    manifest = validate_experiment(cfg)
    assert len(manifest["classes"]) == num_classes and set(cfg.data.tasks) <= set(manifest["members"])
    torch.manual_seed(0)
    mcfg = model_config(cfg, len(manifest["classes"]))
    model = build_model(mcfg)
    criterion = MultiTaskLoss(mcfg["tasks"], cfg.loss.weights, deep_supervision=cfg.loss.deep_supervision)
    stream = ShardStream(
        cfg.data.shards,
        cfg.data.train_split,
        tasks=cfg.data.tasks,
        modalities=cfg.data.modalities,
        batch_size=cfg.train.batch_size,
        train=True,
        shuffle_buffer=cfg.data.shuffle_buffer,
        transform=build_transform(cfg.data.augment, train=True),
    )
    steps = math.ceil(stream.batches_per_rank / cfg.optim.grad_accum)
    assert steps == 1  # 3 training images in batches of 2: the partial last batch is dropped
    optimizer = make_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    out = train_epoch(
        model,
        make_loader(stream),
        criterion,
        optimizer,
        functools.partial(lr_at, cfg=cfg, steps_per_epoch=steps),
        torch.device("cpu"),
        grad_accum=cfg.optim.grad_accum,
    )
    assert math.isfinite(out["train/loss/total"]) and out["train/loss/total"] > 0
    for task in cfg.data.tasks:  # every task of the set-up contributed a finite loss
        assert math.isfinite(out[f"train/loss/{task}"]), task
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_pascal_mt_has_no_depth_and_asking_for_it_fails_before_ray(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pascal_nodepth")
    write_dataset(_pascal(tmp / "src"), tmp / "shards", progress=False)
    overrides = [f"data.shards={tmp / 'shards'}", *TINY, "data.modalities=[rgb, depth]"]
    with pytest.raises(ConfigError, match=r"data\.modalities: dataset .* lacks \['depth'\]"):
        validate_experiment(load_config(REPO_ROOT / "configs" / "pascal_mt" / "mtinet_hrnet18.yaml", overrides))
