"""Deep supervision at the aux prediction's resolution (MultiTaskLoss(aux_resolution="prediction"))."""

from __future__ import annotations

import pytest
import torch

from fusion.losses import AUX_TARGET_POOL, MultiTaskLoss, downsample_target


def test_class_maps_keep_ids_and_ignore_and_take_the_block_centre():
    t = torch.arange(16).view(1, 4, 4) % 7
    t[0, 1, 1] = 255
    out = downsample_target(t, (2, 2), "nearest")
    assert out.dtype == t.dtype and out.shape == (1, 2, 2)
    # nearest-exact: output (i, j) reads input (2i + 1, 2j + 1), the lower-right of each block's centre
    assert out.tolist() == [[[255, t[0, 1, 3].item()], [t[0, 3, 1].item(), t[0, 3, 3].item()]]]


def test_depth_averages_valid_pixels_only_and_a_block_without_one_stays_missing():
    d = torch.tensor([[[[2.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 0.0]]]])
    out = downsample_target(d, (2, 2), "valid_mean")
    assert out.tolist() == [[[[3.0, 0.0], [1.0, 3.0]]]]  # 0 (missing) never drags a mean down


def test_normals_average_valid_vectors_and_renormalise():
    n = torch.zeros(1, 3, 2, 2)
    n[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    n[0, :, 0, 1] = torch.tensor([0.0, 1.0, 0.0])
    out = downsample_target(n, (1, 1), "valid_mean_unit")
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]) / 2**0.5)
    assert downsample_target(torch.zeros(1, 3, 2, 2), (1, 1), "valid_mean_unit").abs().sum() == 0


def test_a_thin_edge_survives():
    e = torch.zeros(1, 1, 4, 4)
    e[0, 0, :, 1] = 1.0  # a one-pixel-wide vertical edge
    assert downsample_target(e, (2, 2), "any").tolist() == [[[[1.0, 0.0], [1.0, 0.0]]]]


def test_unknown_rule_is_a_named_error():
    with pytest.raises(ValueError, match="unknown rule 'bogus'"):
        downsample_target(torch.zeros(1, 1, 2, 2), (1, 1), "bogus")
    with pytest.raises(ValueError, match="aux_resolution must be 'target' or 'prediction'"):
        MultiTaskLoss(["depth"], aux_resolution="half")


def _outputs_and_targets(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = 32, 48
    targets = {
        "semseg": torch.randint(0, 4, (2, h, w), generator=g),
        "depth": torch.rand(2, 1, h, w, generator=g) + 0.5,
        "normals": torch.nn.functional.normalize(torch.randn(2, 3, h, w, generator=g), dim=1),
        "edge": (torch.rand(2, 1, h, w, generator=g) > 0.9).float(),
    }
    targets["semseg"][:, :4] = 255
    targets["depth"][:, :, :, :5] = 0.0

    def pred(c, s):
        return torch.randn(2, c, h // s, w // s, generator=g, requires_grad=True)

    outputs = {"semseg": pred(4, 1), "depth": pred(1, 1), "normals": pred(3, 1), "edge": pred(1, 1)}
    outputs["aux"] = {
        f"scale_{k}": {"semseg": pred(4, s), "depth": pred(1, s), "edge": pred(1, s)} for k, s in enumerate((2, 4))
    }
    return outputs, targets


def test_final_outputs_are_scored_alike_and_aux_terms_differ_but_stay_close():
    outputs, targets = _outputs_and_targets()
    tasks = ["semseg", "depth", "normals", "edge"]
    _, official = MultiTaskLoss(tasks)(outputs, targets)
    total, low = MultiTaskLoss(tasks, aux_resolution="prediction")(outputs, targets)
    for t in tasks:
        assert low[t] == official[t]  # the final outputs: always at the target's resolution
    for k in ("scale_0/semseg", "scale_0/depth", "scale_1/semseg", "scale_1/depth"):
        assert low[k] != official[k]
        # Random logits: the upsampled (smoothed) and the low-resolution losses are of one size.
        assert float(low[k]) == pytest.approx(float(official[k]), rel=0.5), k
    total.backward()
    assert all(p.grad is not None for p in outputs["aux"]["scale_1"].values())


def test_at_the_targets_resolution_both_modes_are_identical():
    outputs, targets = _outputs_and_targets()
    for preds in outputs["aux"].values():
        for t, p in list(preds.items()):
            preds[t] = torch.nn.functional.interpolate(p.detach(), size=(32, 48), mode="bilinear")
    a = MultiTaskLoss(["semseg", "depth"])(outputs, targets)[1]
    b = MultiTaskLoss(["semseg", "depth"], aux_resolution="prediction")(outputs, targets)[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_builtin_task_but_edge_has_a_rule_and_edge_keeps_the_official_term():
    from fusion.tasks import TASKS

    assert {"semseg", "parts", "depth", "normals", "edge", "sal"} <= set(TASKS)
    assert set(AUX_TARGET_POOL) == {"semseg", "parts", "depth", "normals", "sal"}
    outputs, targets = _outputs_and_targets()
    a = MultiTaskLoss(["edge"])(outputs, targets)[1]
    b = MultiTaskLoss(["edge"], aux_resolution="prediction")(outputs, targets)[1]
    assert torch.equal(a["scale_1/edge"], b["scale_1/edge"])
