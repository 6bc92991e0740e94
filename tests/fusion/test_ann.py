import pytest
import torch
import torch.nn.functional as F

import fusion.models.ann  # noqa: F401  (registers ann, fcn, nonlocal)
from fusion import build_model
from fusion.attention import AsymmetricFusion, IdentitySampler, PyramidPooledAttention, PyramidSampler


def _cfg(name, **kw):
    base = {"name": name, "num_classes": 5, "width": 0.25, "output_stride": 8}
    base.update(kw)
    return base


def _rgb(b=2, size=64, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["ann", "fcn", "nonlocal"])
def test_forward_shapes_and_aux(name):
    torch.manual_seed(0)
    model = build_model(_cfg(name)).eval()
    with torch.no_grad():
        out = model({"rgb": _rgb(size=48)})
    assert out["semseg"].shape == (2, 5, 48, 48)
    assert out["aux"]["stage4"]["semseg"].shape == (2, 5, 48, 48)
    assert model.aux_weights == {"stage4": 0.4}


def test_ann_uses_afnb_and_apnb_with_paper_pyramid():
    model = build_model(_cfg("ann"))
    assert isinstance(model.head.fusion, AsymmetricFusion)
    assert isinstance(model.head.context, PyramidPooledAttention)
    assert model.head.context.attention.sampler.sizes == (1, 3, 6, 8)
    # AFNB: queries from stage 5 (128 ch at width 0.25), keys/values from stage 4 (64 ch).
    assert model.head.fusion.attention.query_project[0].in_channels == model.backbone.channels[-1]
    assert model.head.fusion.attention.key_project[0].in_channels == model.backbone.channels[-2]
    assert model.backbone.strides[-2:] == [8, 8]
    nl = build_model(_cfg("nonlocal"))
    assert nl.head.fusion is None and isinstance(nl.head.context.attention.sampler, IdentitySampler)


def test_sdpa_option_gives_the_same_output():
    torch.manual_seed(0)
    explicit = build_model(_cfg("ann"))
    fused = build_model(_cfg("ann", options={"use_sdpa": True}))
    with torch.no_grad():  # make the attention terms non-zero so the comparison means something
        for m in explicit.modules():
            if isinstance(m, (AsymmetricFusion, PyramidPooledAttention)):
                torch.nn.init.normal_(m.attention.out_project.weight, std=0.1)
    fused.load_state_dict(explicit.state_dict())
    explicit.eval(), fused.eval()
    x = _rgb(size=40)
    with torch.no_grad():
        a, b = explicit({"rgb": x})["semseg"], fused({"rgb": x})["semseg"]
    assert torch.allclose(a, b, atol=1e-4)


def test_pyramid_sizes_option_reaches_both_blocks():
    model = build_model(_cfg("ann", options={"pyramid_sizes": [1, 2]}))
    assert model.head.fusion.attention.sampler.sizes == (1, 2)
    assert model.head.context.attention.sampler.sizes == (1, 2)


def test_backward_reaches_backbone_heads_and_output_projections():
    torch.manual_seed(0)
    model = build_model(_cfg("ann")).train()
    out = model({"rgb": _rgb()})
    target = torch.randint(0, 5, (2, 64, 64))
    loss = F.cross_entropy(out["semseg"], target) + 0.4 * F.cross_entropy(out["aux"]["stage4"]["semseg"], target)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    for name in (
        "backbone.conv1.weight",
        "head.fusion.attention.out_project.weight",
        "head.context.attention.out_project.weight",
        "aux_head.2.weight",
        "head.classifier.weight",
    ):
        assert grads[name].abs().sum() > 0, name


def test_ann_learns_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model(_cfg("ann", num_classes=2, options={"dropout": 0.0})).train()
    # Piecewise-constant images (4×4 blocks of 8×8 pixels) labelled by the sign of their red channel.
    x = F.interpolate(_rgb(b=2, size=4), scale_factor=8, mode="nearest")
    target = (x[:, 0] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model({"rgb": x})["semseg"], target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_depth_is_fused_early():
    torch.manual_seed(0)
    model = build_model(_cfg("fcn", modalities=["rgb", "depth"])).eval()
    assert model.backbone.conv1.in_channels == 4
    x = _rgb(b=1, size=32)
    d = torch.rand(1, 1, 32, 32) * 5
    with torch.no_grad():
        a = model({"rgb": x, "depth": d})["semseg"]
        b = model({"rgb": x, "depth": d + 1.0})["semseg"]
    assert not torch.allclose(a, b)
    with pytest.raises(KeyError, match="missing modality depth"):
        model({"rgb": x})


def test_zero_aux_weight_drops_the_aux_head():
    model = build_model(_cfg("fcn", options={"aux_weight": 0.0})).eval()
    assert model.aux_head is None and model.aux_weights == {}
    with torch.no_grad():
        assert model({"rgb": _rgb(b=1, size=32)})["aux"] == {}


def test_other_tasks_are_rejected_by_name():
    with pytest.raises(ValueError, match="unsupported task.*depth"):
        build_model(_cfg("ann", tasks=["semseg", "depth"]))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"key_chanels": 8}, "unknown option.*key_chanels"),
        ({"key_channels": 0}, "key_channels must be an int >= 1"),
        ({"pyramid_sizes": []}, "pyramid_sizes must be a non-empty list"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"aux_weight": -1}, "aux_weight must be >= 0"),
        ({"use_sdpa": "yes"}, "use_sdpa must be true or false"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        build_model(_cfg("ann", options=options))


def test_channel_options_scale_with_width():
    model = build_model(_cfg("ann", width=0.5))
    assert model.head.classifier.in_channels == 256  # 512 * 0.5
    assert model.head.context.attention.key_project[0].out_channels == 128
    assert isinstance(model.head.context.attention.sampler, PyramidSampler)
