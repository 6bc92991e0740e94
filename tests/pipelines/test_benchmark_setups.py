"""The ANN paper set-ups (Cityscapes, ADE20K, PASCAL-Context 59) train a step on their converters' shards.

Each config goes through what ``fusionpipe train`` does before and inside a Ray worker, without Ray:
:func:`validate_experiment` (the checks before Ray starts), the model from :func:`model_config`, the
training stream with the config's augmentation, the loss, optimizer and schedule, and
:func:`train_epoch`; only the width (and the crop, to fit the tiny images) is made CPU-sized.
"""

import functools
import math

import pytest
import torch

from datasets.loader import ShardStream, make_loader
from datasets.sources.ade20k import Ade20kSource
from datasets.sources.cityscapes import CityscapesSource
from datasets.sources.pascal_context import PascalContextSource
from datasets.transforms import build_transform
from datasets.writer import write_dataset
from fusion import build_model
from fusion.losses import MultiTaskLoss
from pipelines.config import ConfigError, load_config, model_config
from pipelines.train.driver import validate_experiment
from pipelines.train.steps import lr_at, make_optimizer, train_epoch
from tests import REPO_ROOT
from tests.datasets.test_benchmark_converters import write_ade, write_cityscapes, write_context

SETUPS = {
    "cityscapes": (lambda root: CityscapesSource(str(write_cityscapes(root))), 19),
    "ade20k": (lambda root: Ade20kSource(str(write_ade(root))), 150),
    "pascal_context": (lambda root: PascalContextSource(str(write_context(root))), 59),
}
TINY = ["model.width=0.0625", "model.pretrained=null", "data.augment.crop=[24, 24]", "train.workers=1"]
TINY += ["train.use_gpu=false", "train.sync_batchnorm=false", "data.loader_workers=0", "data.shuffle_buffer=0"]


@pytest.fixture(scope="module", params=sorted(SETUPS))
def setup(request, tmp_path_factory):
    name = request.param
    make_source, num_classes = SETUPS[name]
    tmp = tmp_path_factory.mktemp(name)
    write_dataset(make_source(tmp / "src"), tmp / "shards", shard_size=2, progress=False)
    return name, tmp / "shards", num_classes


def test_paper_setup_trains_one_step_on_its_converted_data(setup):
    name, shards, num_classes = setup
    cfg = load_config(REPO_ROOT / "configs" / name / "ann_resnet101.yaml", [f"data.shards={shards}", *TINY])
    assert cfg.model.backbone == "resnet101" and cfg.model.output_stride == 8 and cfg.loss.ohem
    assert cfg.model.options["aux_weight"] == 0.4
    manifest = validate_experiment(cfg)
    assert len(manifest["classes"]) == num_classes
    torch.manual_seed(0)
    mcfg = model_config(cfg, len(manifest["classes"]))
    model = build_model(mcfg)
    criterion = MultiTaskLoss(
        mcfg["tasks"], cfg.loss.weights, deep_supervision=cfg.loss.deep_supervision, ohem=cfg.loss.ohem
    )
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
    # 2 training images, one per batch: Cityscapes steps on each, ADE20K and PASCAL-Context accumulate both
    assert steps == (2 if name == "cityscapes" else 1)
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
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(steps - 1, cfg, steps))  # the schedule's last step
    assert lr_at(0, cfg, steps) == pytest.approx(cfg.optim.lr)


def test_asking_for_depth_on_a_dataset_without_it_fails_before_ray(setup):
    name, shards, _ = setup
    overrides = [f"data.shards={shards}", *TINY, "data.tasks=[semseg, depth]"]
    with pytest.raises(ConfigError, match=r"data\.tasks: dataset .* lacks \['depth'\]; it has \['rgb', 'semseg'\]"):
        validate_experiment(load_config(REPO_ROOT / "configs" / name / "ann_resnet101.yaml", overrides))
    overrides[-1] = "data.modalities=[rgb, depth]"
    with pytest.raises(ConfigError, match=r"data\.modalities: dataset .* lacks \['depth'\]"):
        validate_experiment(load_config(REPO_ROOT / "configs" / name / "ann_resnet101.yaml", overrides))
