"""Sliding-window, multi-scale and flip inference (fusion.inference), as the official ANN code does it."""

import pytest
import torch
import torch.nn.functional as F

from fusion import build_model
from fusion.inference import TestTimeAugmented, predict_tta, sliding_window, window_starts


def tiny_ann():
    torch.manual_seed(0)
    cfg = {"name": "ann", "tasks": ["semseg"], "modalities": ["rgb"], "num_classes": 5, "backbone": "resnet18"}
    cfg |= {"width": 0.125, "output_stride": 8, "options": {"pyramid_sizes": [1, 3]}}
    return build_model(cfg).eval()


def test_window_starts_follow_the_official_decide_intersection():
    # Cityscapes: 2048 wide, window 864, stride int(864 * 0.667) = 576; the last window flush right.
    assert window_starts(2048, 864) == [0, 576, 1152, 1184]
    assert window_starts(1024, 864) == [0, 160]
    assert window_starts(864, 864) == [0]
    assert window_starts(1000, 500, 0.5) == [0, 250, 500]  # already flush: no extra window
    with pytest.raises(ValueError, match="at most the length"):
        window_starts(10, 20)


@torch.no_grad()
def test_sliding_window_on_an_image_the_size_of_the_window_is_a_plain_forward():
    net = tiny_ann()
    x = {"rgb": torch.randn(2, 3, 33, 41)}
    plain = net(x)["semseg"]
    assert torch.equal(sliding_window(net, x, ["semseg"], (33, 41))["semseg"], plain)
    assert torch.equal(predict_tta(net, x, ["semseg"], window=(33, 41))["semseg"], plain)
    assert torch.equal(predict_tta(net, x, ["semseg"])["semseg"], plain)  # one scale, no flip, no window
    # A window larger than the image: predicted whole, as the official code does
    assert torch.equal(sliding_window(net, x, ["semseg"], (64, 64))["semseg"], plain)


@torch.no_grad()
def test_windows_are_stitched_where_they_belong_and_overlaps_averaged():
    # A per-pixel model sees nothing outside a pixel: windows stitched right give the plain forward.
    conv = torch.nn.Conv2d(3, 4, 1)
    forward = lambda inp: {"semseg": conv(inp["rgb"])}  # noqa: E731
    x = {"rgb": torch.randn(1, 3, 50, 70)}
    out = sliding_window(forward, x, ["semseg"], (20, 30))
    torch.testing.assert_close(out["semseg"], conv(x["rgb"]), rtol=0, atol=1e-6)
    # A model that adds a constant per window call: overlaps get the mean of their windows' values.
    calls = []

    def counting(inp):
        calls.append(inp["rgb"].shape[-2:])
        return {"semseg": torch.full((1, 1, *inp["rgb"].shape[-2:]), float(len(calls)))}

    out = sliding_window(counting, {"rgb": torch.zeros(1, 3, 10, 25)}, ["semseg"], (10, 15), stride_ratio=0.667)
    assert window_starts(25, 15) == [0, 10] and len(calls) == 2
    assert out["semseg"][0, 0, 0, 5].item() == 1.0 and out["semseg"][0, 0, 0, 20].item() == 2.0
    assert out["semseg"][0, 0, 0, 12].item() == 1.5  # held by both windows


@torch.no_grad()
def test_flip_averaging_is_symmetric():
    net = tiny_ann()
    x = {"rgb": torch.randn(1, 3, 40, 56)}
    mirrored = {"rgb": x["rgb"].flip(-1)}
    for kw in ({}, {"scales": (0.75, 1.0, 1.25)}, {"scales": (0.75, 1.0), "window": (32, 32)}):
        a = predict_tta(net, x, ["semseg"], flip=True, **kw)["semseg"]
        b = predict_tta(net, mirrored, ["semseg"], flip=True, **kw)["semseg"]
        assert (b - a.flip(-1)).abs().max() < 1e-6
        # without flip averaging the network itself is not mirror-symmetric: 1e-4 and more apart
        c = predict_tta(net, x, ["semseg"], **kw)["semseg"]
        d = predict_tta(net, mirrored, ["semseg"], **kw)["semseg"]
        assert (d - c.flip(-1)).abs().max() > 1e-4


@torch.no_grad()
def test_a_flipped_normals_prediction_has_its_x_component_negated():
    def forward(inp):  # a mirror-equivariant normals predictor: x from the horizontal gradient
        v = inp["rgb"][:, :1]
        p = F.pad(v, (1, 1, 0, 0), mode="replicate")
        return {"normals": torch.cat([p[..., 2:] - p[..., :-2], inp["rgb"][:, 1:3]], dim=1)}

    x = {"rgb": torch.randn(1, 3, 8, 12)}
    out = predict_tta(forward, x, ["normals"], flip=True)["normals"]
    torch.testing.assert_close(out, forward(x)["normals"], rtol=0, atol=1e-6)


@torch.no_grad()
def test_multi_scale_resizes_back_to_the_input():
    net = tiny_ann()
    x = {"rgb": torch.randn(1, 3, 40, 48)}
    out = TestTimeAugmented(net, ["semseg"], scales=[0.5, 1.75], flip=True)(x)
    assert out["semseg"].shape == (1, 5, 40, 48) and set(out) == {"semseg"}
    one = predict_tta(net, x, ["semseg"], scales=[0.5])["semseg"]
    assert not torch.allclose(one, net(x)["semseg"], atol=1e-3)  # another scale gives another prediction
    assert one.shape == (1, 5, 40, 48)


def test_bad_settings_are_named():
    net = tiny_ann()
    with pytest.raises(ValueError, match="scales must be"):
        TestTimeAugmented(net, ["semseg"], scales=[])
    with pytest.raises(ValueError, match="stride_ratio must be"):
        TestTimeAugmented(net, ["semseg"], window=(8, 8), stride_ratio=1.5)
    with pytest.raises(ValueError, match="window must be"):
        TestTimeAugmented(net, ["semseg"], window=(0, 8))
    with pytest.raises(ValueError, match="no task 'depth'"):
        predict_tta(net, {"rgb": torch.randn(1, 3, 16, 16)}, ["depth"])
