"""Every shipped config (configs/**.yaml, params.yaml) validates, builds, and its loss runs."""

from pathlib import Path

import pytest
import torch

from fusion import build_model
from fusion.losses import MultiTaskLoss
from pipelines.config import load_config, model_config
from tests import REPO_ROOT

# Experiment configs (sweep specs under configs/sweeps/ are tested in test_sweep.py, study specs under
# configs/studies/ in test_study.py).
CONFIGS = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if not {"sweeps", "studies"} & set(p.parts)) + [
    REPO_ROOT / "params.yaml"
]


def test_every_registered_model_has_a_synthetic_config():
    from fusion import list_models

    names = {load_config(p).model.name for p in CONFIGS}
    assert set(list_models()) <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(Path(p).relative_to(REPO_ROOT)))
def test_config_builds_and_trains_one_step(path):
    cfg = load_config(path)
    mcfg = model_config(cfg, num_classes=13)
    mcfg["pretrained"] = None  # paper configs name ImageNet weights the user provides
    if cfg.model.pretrained is not None:  # the GPU-sized paper set-ups (NYUDv2, Cityscapes, ADE20K, ...)
        mcfg["width"] = 0.125  # the GPU-sized nets' structure, at a CPU-test size
    model = build_model(mcfg)
    x = {"rgb": torch.randn(2, 3, 64, 64), "depth": torch.rand(2, 1, 64, 64) * 5}
    targets = {
        "semseg": torch.randint(0, 13, (2, 64, 64)),
        "depth": torch.rand(2, 1, 64, 64) * 5,
        "normals": torch.nn.functional.normalize(torch.randn(2, 3, 64, 64), dim=1),
        "edge": (torch.rand(2, 1, 64, 64) > 0.9).float(),
        "parts": torch.randint(0, 7, (2, 64, 64)),  # PASCAL-MT's extra tasks
        "sal": (torch.rand(2, 1, 64, 64) > 0.5).float(),
    }
    out = model({m: x[m] for m in cfg.data.modalities})
    loss, parts = MultiTaskLoss(mcfg["tasks"], cfg.loss.weights, ohem=cfg.loss.ohem)(out, targets, model)
    loss.backward()
    assert torch.isfinite(loss) and set(mcfg["tasks"]) <= set(parts)
    aux = set(cfg.model.options.get("auxiliary_tasks") or [])
    assert not aux & set(out) and all(t in out for t in mcfg["tasks"])
