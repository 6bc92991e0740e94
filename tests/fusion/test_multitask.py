import pytest
import torch

import fusion
from fusion.losses import MultiTaskLoss
from fusion.models.multitask.layers import FeaturePropagation, MultiModalDistillation, SqueezeExcitation

TINY = {"backbone": "hrnet18", "width": 0.25, "num_classes": 5}


def _inputs(b=2, h=32, w=48):
    g = torch.Generator().manual_seed(0)
    return {"rgb": torch.rand(b, 3, h, w, generator=g), "depth": torch.rand(b, 1, h, w, generator=g) * 5}


def _build(name, tasks, **kw):
    return fusion.build_model({"name": name, "tasks": tasks, **TINY, **kw})


def test_mtinet_outputs_deep_supervision_and_auxiliary_tasks_only_in_aux():
    model = _build("mtinet", ["semseg", "depth"], options={"auxiliary_tasks": ["edge", "normals"]})
    out = model(_inputs())
    assert set(out) == {"semseg", "depth", "aux"}
    assert out["semseg"].shape == (2, 5, 32, 48) and out["depth"].shape == (2, 1, 32, 48)
    assert sorted(out["aux"]) == ["scale_0", "scale_1", "scale_2", "scale_3"]
    for s, preds in out["aux"].items():
        assert sorted(preds) == ["depth", "edge", "normals", "semseg"]
        stride = 4 * 2 ** int(s[-1])
        assert preds["normals"].shape == (2, 3, -(-32 // stride), -(-48 // stride))  # ceil: padded convs
    assert model.aux_weights == {f"scale_{s}": 1.0 for s in range(4)}


def test_padnet_initial_predictions_and_distillation_sources():
    model = _build("padnet", ["semseg", "depth"], options={"auxiliary_tasks": ["edge"], "channels": 32})
    out = model(_inputs())
    assert set(out) == {"semseg", "depth", "aux"} and sorted(out["aux"]["initial"]) == ["depth", "edge", "semseg"]
    assert out["aux"]["initial"]["edge"].shape == (2, 1, 8, 12)
    # semseg receives messages from depth and the auxiliary edge task, never from itself
    assert sorted(model.distillation.messages["semseg"]) == ["depth", "edge"]
    # The concatenated scales go through the official HighResolutionFuse (1×1 conv, BN, ReLU, same width).
    width = sum(model.encoder.channels)
    conv, bn, relu = model.fuse
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (width, width, (1, 1))
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    plain = _build("padnet", ["semseg", "depth"], options={"channels": 32, "fuse": False})
    assert isinstance(plain.fuse, torch.nn.Identity)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model.fuse) == width * width + 2 * width


def test_single_task_rejects_extra_tasks_and_baseline_has_a_head_per_task():
    with pytest.raises(ValueError, match=r"extra: \['depth'\]"):
        _build("single_task", ["semseg", "depth"])
    model = _build("mtl_baseline", ["semseg", "depth", "normals"])
    out = model(_inputs())
    assert sorted(model.heads) == ["depth", "normals", "semseg"] and out["aux"] == {}
    assert out["normals"].shape == (2, 3, 32, 48)


def test_clear_errors_for_bad_config_and_missing_modality():
    with pytest.raises(ValueError, match="'edge' is already in tasks"):
        _build("mtinet", ["semseg", "edge"], options={"auxiliary_tasks": ["edge"]})
    with pytest.raises(ValueError, match="auxiliary task 'foo' is unknown"):
        _build("padnet", ["semseg", "depth"], options={"auxiliary_tasks": ["foo"]})
    with pytest.raises(ValueError, match="at least two"):
        _build("mtinet", ["semseg"])
    with pytest.raises(ValueError, match="fpm_softmax"):
        _build("mtinet", ["semseg", "depth"], options={"fpm_softmax": "channel"})
    with pytest.raises(ValueError, match="unknown option"):
        _build("mtinet", ["semseg", "depth"], options={"fusoin": "early"})
    with pytest.raises(ValueError, match="fusion 'early' or 'cen'"):
        _build("mtl_baseline", ["semseg"], modalities=["rgb", "depth"])
    model = _build("mtl_baseline", ["semseg"], modalities=["rgb", "depth"], options={"fusion": "early"})
    with pytest.raises(KeyError, match="no modality 'depth'"):
        model({"rgb": torch.rand(1, 3, 32, 32)})


def test_early_and_cen_fusion_use_both_modalities():
    x = _inputs()
    early = _build("mtinet", ["semseg", "depth"], modalities=["rgb", "depth"], options={"fusion": "early"}).eval()
    first = early.encoder.backbone.conv1
    assert first.in_channels == 4
    out1 = early(x)["depth"]
    out2 = early({**x, "depth": x["depth"] + 1.0})["depth"]
    assert not torch.allclose(out1, out2)  # depth reaches the prediction
    cen = fusion.build_model(
        {
            "name": "mtinet",
            "tasks": ["semseg", "depth"],
            "modalities": ["rgb", "depth"],
            "backbone": "resnet18",
            "width": 0.25,
            "num_classes": 5,
            "options": {"fusion": "cen", "cen_l1_weight": 1.0},
        }
    )
    reg = cen.regularization()
    assert set(reg) == {"cen_l1"} and reg["cen_l1"].item() > 0
    out = cen(x)
    total, parts = MultiTaskLoss(["semseg", "depth"])(
        out, {"semseg": torch.randint(0, 5, (2, 32, 48)), "depth": torch.rand(2, 1, 32, 48) + 0.5}, model=cen
    )
    assert "reg/cen_l1" in parts and "scale_3/depth" in parts
    total.backward()
    with pytest.raises(ValueError, match="ResNet"):
        _build("mtinet", ["semseg", "depth"], modalities=["rgb", "depth"], options={"fusion": "cen"})


def test_fpm_softmax_task_normalises_over_tasks_reference_over_adjacent_channels():
    fpm_task = FeaturePropagation(["a", "b", "c"], channels=4, softmax="task")
    fpm_ref = FeaturePropagation(["a", "b", "c"], channels=4, softmax="reference")
    logits = torch.randn(2, 12, 3, 3)
    m = fpm_task.attention(logits).view(2, 3, 4, 3, 3)  # task-major layout
    torch.testing.assert_close(m.sum(dim=1), torch.ones(2, 4, 3, 3))
    r = fpm_ref.attention(logits).view(2, 4, 3, 3, 3)  # groups of 3 adjacent channels
    torch.testing.assert_close(r.sum(dim=2), torch.ones(2, 4, 3, 3))
    assert not torch.allclose(fpm_task.attention(logits), fpm_ref.attention(logits))
    feats = {t: torch.randn(2, 4, 5, 5) for t in "abc"}
    out = fpm_task(feats)
    assert set(out) == {"a", "b", "c"} and out["a"].shape == (2, 4, 5, 5)


def test_mtinet_fpm_defaults_to_the_official_adjacent_channel_softmax():
    model = _build("mtinet", ["semseg", "depth"], options={"auxiliary_tasks": ["edge"]})
    fpms = [m for m in model.modules() if isinstance(m, FeaturePropagation)]
    assert len(fpms) == 3 and all(f.softmax == "reference" for f in fpms)
    assert all(p.softmax == "reference" for p in model.propagation.values())
    assert FeaturePropagation(["a", "b"], channels=2).softmax == "reference"
    # The official FPM: F.softmax(shared.view(B, C // N, N, H, W), dim=2), with N = 3 tasks.
    logits = torch.randn(2, 3 * 4, 3, 3)
    official = torch.softmax(logits.view(2, 4, 3, 3, 3), dim=2).view(2, 12, 3, 3)
    torch.testing.assert_close(fpms[0].attention(logits), official)
    task = _build("mtinet", ["semseg", "depth"], options={"auxiliary_tasks": ["edge"], "fpm_softmax": "task"})
    assert {m.softmax for m in task.modules() if isinstance(m, FeaturePropagation)} == {"task"}


def test_distillation_adds_attention_messages_from_other_tasks():
    mmd = MultiModalDistillation(["a"], ["a", "b"], channels=2)
    for p in mmd.parameters():
        torch.nn.init.zeros_(p)
    feats = {"a": torch.randn(1, 2, 3, 3), "b": torch.randn(1, 2, 3, 3)}
    torch.testing.assert_close(mmd(feats)["a"], feats["a"])  # zero conv -> zero message
    msg = mmd.messages["a"]["b"]
    torch.nn.init.dirac_(msg.features.weight)  # identity features, zero attention logits -> gate 0.5
    torch.testing.assert_close(mmd(feats)["a"], feats["a"] + 0.5 * feats["b"])


def test_fpm_adds_its_message_to_each_task_as_a_residual():
    torch.manual_seed(0)
    fpm = FeaturePropagation(["a", "b"], channels=4)
    feats = {t: torch.randn(2, 4, 5, 5) for t in "ab"}
    with torch.no_grad():
        for se in fpm.se.values():  # close every SE gate: the FPM's message is ~0, the task's own features pass
            se.gate[2].weight.zero_()
            se.gate[2].bias.fill_(-60.0)
    out = fpm(feats)
    for t in "ab":
        torch.testing.assert_close(out[t], feats[t], atol=1e-6, rtol=0)
    with torch.no_grad():
        fpm.se["a"].gate[2].bias.fill_(60.0)  # open a's gate: a gets the shared message on top of its own features
    out = fpm(feats)
    shared = fpm.reduction(
        fpm.attention(fpm.non_linear(torch.cat([feats["a"], feats["b"]], 1))) * torch.cat([feats["a"], feats["b"]], 1)
    )
    torch.testing.assert_close(out["a"], feats["a"] + shared)


def test_squeeze_excitation_gate_is_the_papers_formula():
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=4)  # 8 hidden units, so mean and max pooling give other gates
    x = torch.rand(2, 32, 5, 5)
    gate = torch.sigmoid(se.gate[2](torch.relu(se.gate[0](x.mean(dim=(2, 3))))))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert not torch.allclose(gate, torch.sigmoid(se.gate[2](torch.relu(se.gate[0](x.amax(dim=(2, 3)))))))


def test_squeeze_excitation_gates_channels_in_unit_interval():
    se = SqueezeExcitation(8)
    x = torch.rand(2, 8, 4, 4) + 0.1
    y = se(x)
    ratio = y / x
    assert torch.all(ratio > 0) and torch.all(ratio < 1)
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))  # one gate per channel


def test_mtinet_learns_a_tiny_batch():
    torch.manual_seed(0)
    model = fusion.build_model(
        {"name": "mtinet", "tasks": ["semseg", "depth"], "backbone": "resnet18", "width": 0.125, "num_classes": 2}
    )
    x = _inputs(b=2, h=32, w=32)
    targets = {"semseg": (x["rgb"][:, 0] > 0.5).long(), "depth": x["depth"] + 0.1}
    loss_fn = MultiTaskLoss(["semseg", "depth"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(10):
        total, _ = loss_fn(model(x), targets, model=model)
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.7 * first
