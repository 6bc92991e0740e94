import pytest
import torch

from fusion import build_model, list_models
from fusion.backbones import build_backbone

TASKS = ["semseg", "depth", "normals"]


def _inputs(b=2, size=64):
    torch.manual_seed(0)
    return {"rgb": torch.randn(b, 3, size, size), "depth": torch.rand(b, 1, size, size) * 5}


def _cfg(name, modalities=("rgb", "depth"), **kw):
    return {"name": name, "modalities": list(modalities), "tasks": TASKS, "width": 0.25, **kw}


def test_registered():
    assert {"single_modal", "early_fusion", "late_fusion", "cen"} <= set(list_models())


@pytest.mark.parametrize(
    "cfg",
    [
        _cfg("single_modal", ["rgb"]),
        _cfg("single_modal", ["depth"]),
        _cfg("early_fusion"),
        _cfg("late_fusion"),
        _cfg("late_fusion", options={"aux_weight": 0.5}),
        _cfg("early_fusion", backbone="hrnet18", options={"head_mid": 16}),
        _cfg("single_modal", ["rgb"], output_stride=8, options={"deep_stem": True}),
    ],
)
def test_forward_backward_every_task_at_input_resolution(cfg):
    model = build_model(cfg)
    out = model(_inputs())
    assert {k: tuple(v.shape) for k, v in out.items() if k != "aux"} == {
        "semseg": (2, 13, 64, 64),
        "depth": (2, 1, 64, 64),
        "normals": (2, 3, 64, 64),
    }
    loss = sum(out[t].mean() for t in TASKS)
    loss = loss + sum(p.mean() for preds in out["aux"].values() for p in preds.values())
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert set(out["aux"]) == set(model.aux_weights)


def test_single_modal_uses_only_its_modality():
    model = build_model(_cfg("single_modal", ["depth"])).eval()
    assert model.net.backbone.conv1.in_channels == 1
    x = _inputs()
    a = model(x)["semseg"]
    b = model({"depth": x["depth"], "rgb": torch.zeros_like(x["rgb"])})["semseg"]
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="'single_modal' takes exactly one modality, got \\['rgb', 'depth'\\]"):
        build_model(_cfg("single_modal"))


def test_early_fusion_concatenates_rgb_then_depth():
    model = build_model(_cfg("early_fusion")).eval()
    assert model.net.backbone.conv1.in_channels == 4
    x = _inputs()
    seen = {}
    model.net.backbone.register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0]))
    model(x)
    torch.testing.assert_close(seen["x"], torch.cat([x["rgb"], x["depth"]], dim=1))


def test_late_fusion_averages_the_per_modality_logits():
    model = build_model(_cfg("late_fusion", options={"aux_weight": 0.5})).eval()
    x = _inputs()
    out = model(x)
    rgb, depth = model.nets["rgb"](x["rgb"]), model.nets["depth"](x["depth"])
    for t in TASKS:
        torch.testing.assert_close(out[t], (rgb[t] + depth[t]) / 2)
        torch.testing.assert_close(out["aux"]["depth"][t], depth[t])
    assert model.aux_weights == {"rgb": 0.5, "depth": 0.5}
    assert model.nets["rgb"].backbone.conv1.weight is not model.nets["depth"].backbone.conv1.weight
    assert build_model(_cfg("late_fusion")).aux_weights == {}


def test_pretrained_path_reaches_every_encoder(tmp_path):
    state = {k: torch.randn_like(v.float()) for k, v in build_backbone("resnet18", width=0.25).state_dict().items()}
    torch.save(state, tmp_path / "r18.pth")
    model = build_model(_cfg("late_fusion", pretrained=str(tmp_path / "r18.pth")))
    w = state["conv1.weight"]
    torch.testing.assert_close(model.nets["rgb"].backbone.conv1.weight, w)
    torch.testing.assert_close(model.nets["depth"].backbone.conv1.weight, w.mean(dim=1, keepdim=True))


@pytest.mark.parametrize("name", ["early_fusion", "late_fusion"])
def test_clear_errors(name):
    model = build_model(_cfg(name))
    x = _inputs()
    with pytest.raises(KeyError, match=f"model '{name}' needs input modality 'depth'; given: rgb"):
        model({"rgb": x["rgb"]})
    with pytest.raises(ValueError, match="input 'depth' must be B×1×H×W, got shape \\(2, 3, 64, 64\\)"):
        model({"rgb": x["rgb"], "depth": x["rgb"]})
    with pytest.raises(ValueError, match="modalities differ in size: rgb \\(64, 64\\), depth \\(32, 32\\)"):
        model({"rgb": x["rgb"], "depth": x["depth"][..., :32, :32]})
    with pytest.raises(ValueError, match=f"model '{name}': unknown option\\(s\\) dep_stem"):
        build_model(_cfg(name, options={"dep_stem": True}))
