"""Every registered model through build, forward and backward on CPU (timm's ``test_models`` idea)."""

import pytest
import torch

import fusion
from fusion.config import ModelConfig

BASE = {"tasks": ["semseg", "depth"], "modalities": ["rgb"], "backbone": "resnet18", "width": 0.125, "num_classes": 3}
# Models with narrower scope than BASE; a model not listed here is built with BASE.
OVERRIDES = {
    "single_task": {"tasks": ["semseg"]},
    "ann": {"tasks": ["semseg"]},
    "fcn": {"tasks": ["semseg"]},
    "nonlocal": {"tasks": ["semseg"]},
    "cen": {"modalities": ["rgb", "depth"]},
    "early_fusion": {"modalities": ["rgb", "depth"]},
    "late_fusion": {"modalities": ["rgb", "depth"]},
    "mtinet": {"backbone": "hrnet18", "width": 0.25, "options": {"auxiliary_tasks": ["edge"]}},
    "padnet": {"options": {"channels": 16}},
}


def _config(name: str) -> ModelConfig:
    return ModelConfig.from_dict({"name": name, **BASE, **OVERRIDES.get(name, {})})


def test_registry_lists_the_multitask_models():
    assert {"single_task", "mtl_baseline", "padnet", "mtinet"} <= set(fusion.list_models())


@pytest.mark.parametrize("name", fusion.list_models())
def test_model_builds_runs_and_backpropagates(name):
    torch.manual_seed(0)
    cfg = _config(name)
    model = fusion.build_model(cfg)
    b, h, w = 2, 32, 48
    inputs = {"rgb": torch.rand(b, 3, h, w), "depth": torch.rand(b, 1, h, w) * 5}
    out = model({m: inputs[m] for m in cfg.modalities})
    assert set(out) == set(cfg.tasks) | {"aux"}
    for t in cfg.tasks:
        assert out[t].shape == (b, cfg.task_channels(t), h, w), t
        assert torch.isfinite(out[t]).all(), t
    for aux_name, preds in out["aux"].items():
        assert isinstance(aux_name, str) and isinstance(preds, dict)
        for t, p in preds.items():
            assert p.shape[:2] == (b, cfg.task_channels(t)), (aux_name, t)
    assert all(isinstance(v, float) for v in getattr(model, "aux_weights", {}).values())
    reg = model.regularization() if hasattr(model, "regularization") else {}
    total = sum(out[t].float().square().mean() for t in cfg.tasks)
    total = total + sum(p.float().square().mean() for preds in out["aux"].values() for p in preds.values())
    total = total + sum(reg.values())
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", fusion.list_models())
def test_model_trains_under_bf16_autocast(name):
    # The GPU path with train.amp: the model under bf16 autocast, the losses in float32 outside it.
    # CPU autocast has the same dtype rules for mixing bf16 activations with float32 weights and buffers.
    from fusion.losses import MultiTaskLoss
    from pipelines.train.steps import float32_outputs

    torch.manual_seed(0)
    cfg = _config(name)
    model = fusion.build_model(cfg)
    b, h, w = 2, 32, 48
    g = torch.Generator().manual_seed(0)
    inputs = {"rgb": torch.rand(b, 3, h, w, generator=g), "depth": torch.rand(b, 1, h, w, generator=g) * 5}
    targets = {
        "semseg": torch.randint(0, 3, (b, h, w), generator=g),
        "depth": torch.rand(b, 1, h, w, generator=g) * 5 + 0.1,
        "edge": (torch.rand(b, 1, h, w, generator=g) > 0.9).float(),
    }  # MTI-Net's auxiliary task
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model({m: inputs[m] for m in cfg.modalities})
    assert all(out[t].dtype == torch.bfloat16 for t in cfg.tasks)  # autocast reached the heads
    total, parts = MultiTaskLoss(cfg.tasks)(float32_outputs(out), targets, model)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(gr is not None and gr.dtype == torch.float32 and torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("name", fusion.list_models())
def test_unknown_task_or_modality_is_named_for_dict_and_typed_configs(name):
    for field, bad, message in [
        ("tasks", ["semseg", "shading"], r"tasks: unknown task\(s\) \['shading'\]"),
        ("modalities", ["rgb", "thermal"], r"modalities: unknown modality\(s\) \['thermal'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            fusion.build_model({**BASE, "name": name, field: bad})
        typed = _config(name)
        setattr(typed, field, bad)
        with pytest.raises(ValueError, match=message):
            fusion.build_model(typed)


def test_a_dict_config_names_every_bad_key_and_value():
    with pytest.raises(ValueError) as e:
        fusion.build_model(
            {"name": "fcn", "widht": 1, "width": 0, "output_stride": 4, "num_classes": 0, "modalities": ["rgb", "rgb"]}
        )
    msg = str(e.value)
    for needle in (
        "model config 'fcn': unknown key(s) widht; known keys: backbone, ",
        "width: ",
        "got 0",
        "output_stride: ",
        "got 4",
        "num_classes: ",
        "duplicate modality in ['rgb', 'rgb']",
    ):
        assert needle in msg
    with pytest.raises(ValueError, match="model config: missing required key 'name'"):
        fusion.build_model({"tasks": ["semseg"]})
