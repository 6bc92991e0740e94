import math

import pytest
import torch
from torch import nn

from fusion.losses import (
    MultiTaskLoss,
    balanced_bce,
    cross_entropy,
    depth_l1,
    normals_l1,
    ohem_cross_entropy,
)


def _logits_for_probs(p_first: float) -> torch.Tensor:
    """2-class logits whose softmax gives class 0 probability ``p_first``."""
    return torch.tensor([math.log(p_first), math.log(1 - p_first)])


def test_cross_entropy_ignores_255_and_matches_hand_value():
    pred = torch.zeros(1, 2, 1, 3)
    pred[0, :, 0, 0] = _logits_for_probs(0.8)
    pred[0, :, 0, 1] = _logits_for_probs(0.4)
    pred[0, :, 0, 2] = _logits_for_probs(0.01)  # would dominate if not ignored
    target = torch.tensor([[[0, 0, 255]]])
    expected = (-math.log(0.8) - math.log(0.4)) / 2
    assert cross_entropy(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # B×1×H×W targets are accepted too
    assert cross_entropy(pred, target[:, None]).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_gradient():
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = cross_entropy(pred, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(pred.grad) == 0


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    probs = [0.9, 0.6, 0.3, 0.95]
    pred = torch.stack([_logits_for_probs(p) for p in probs], dim=1)[None, :, None, :]  # 1×2×1×4
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    hard = (-math.log(0.6) - math.log(0.3)) / 2  # only p < 0.7
    assert ohem_cross_entropy(pred, target, thresh=0.7, min_kept=1).item() == pytest.approx(hard, rel=1e-5)
    # min_kept=3 forces the three hardest (0.3, 0.6, 0.9)
    three = (-math.log(0.6) - math.log(0.3) - math.log(0.9)) / 3
    assert ohem_cross_entropy(pred, target, thresh=0.7, min_kept=3).item() == pytest.approx(three, rel=1e-5)
    assert ohem_cross_entropy(pred, torch.full_like(target, 255)).item() == 0.0


def test_depth_l1_over_valid_pixels_only():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 100.0]]]])
    target = torch.tensor([[[[1.5, 1.0], [3.0, 0.0]]]])
    assert depth_l1(pred, target).item() == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert depth_l1(pred, torch.zeros_like(target)).item() == 0.0


def test_invalid_pixels_add_nothing_even_when_not_finite_and_get_no_gradient():
    # The losses mask instead of indexing (no device-to-host sync on a GPU): a masked-out pixel must
    # still contribute an exact 0, also where the prediction there is inf or NaN.
    pred = torch.tensor([[[[1.0, float("nan")], [3.0, float("inf")]]]], requires_grad=True)
    target = torch.tensor([[[[1.5, 0.0], [2.0, 0.0]]]])
    loss = depth_l1(pred, target)
    assert loss.item() == pytest.approx((0.5 + 1.0) / 2)
    loss.backward()
    assert pred.grad.tolist() == [[[[-0.5, 0.0], [0.5, 0.0]]]]
    logits = torch.tensor([[[[0.0, float("nan")]], [[0.0, 0.0]]]], requires_grad=True)  # 1×2×1×2
    ce = cross_entropy(logits, torch.tensor([[[0, 255]]]))
    assert ce.item() == pytest.approx(math.log(2))
    normals = torch.tensor([[[[0.0, float("nan")]], [[0.0, 1.0]], [[2.0, 1.0]]]])  # 1×3×1×2
    target_n = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]], [[1.0, 0.0]]]])
    assert normals_l1(normals, target_n).item() == 0.0


def test_normals_l1_normalises_prediction_and_skips_zero_targets():
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, :, 0, 0] = torch.tensor([0.0, 0.0, 5.0])  # normalises to (0,0,1)
    pred[0, :, 0, 1] = torch.tensor([3.0, 0.0, 4.0])  # invalid target below
    target = torch.zeros(1, 3, 1, 2)
    target[0, :, 0, 0] = torch.tensor([0.6, 0.0, 0.8])
    # |0-0.6| + |0-0| + |1-0.8| over 3 valid elements
    assert normals_l1(pred, target).item() == pytest.approx((0.6 + 0.0 + 0.2) / 3, rel=1e-6)
    assert normals_l1(pred, torch.zeros_like(target)).item() == 0.0


def test_balanced_bce_matches_official_formula():
    pred = torch.tensor([[[[0.0, 2.0, -1.0, 0.5]]]])
    target = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    loss_pos = sp(-0.0) + sp(-2.0)
    loss_neg = sp(-1.0) + sp(0.5)
    expected_edge = (0.95 * loss_pos + 0.05 * loss_neg) / 4
    assert balanced_bce(pred, target, pos_weight=0.95).item() == pytest.approx(expected_edge, rel=1e-6)
    # automatic HED weight: w = #neg / #all = 0.5
    assert balanced_bce(pred, target).item() == pytest.approx((0.5 * loss_pos + 0.5 * loss_neg) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        balanced_bce(pred, target[..., :2])


def test_the_edge_task_uses_the_official_positive_weight():
    from fusion.losses import MultiTaskLoss

    pred = torch.tensor([[[[0.3, -0.2], [1.5, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # one edge pixel in four: 0.95 differs from HED's 0.75
    _, parts = MultiTaskLoss(["edge"])({"edge": pred}, {"edge": target})
    assert parts["edge"].item() == pytest.approx(balanced_bce(pred, target, pos_weight=0.95).item(), rel=1e-6)
    assert parts["edge"].item() != pytest.approx(balanced_bce(pred, target).item(), rel=1e-3)


class _Model(nn.Module):
    aux_weights = {"initial": 0.5}

    def regularization(self):
        return {"bn_l1": torch.tensor(0.25)}


def test_multitask_loss_sums_weighted_final_aux_and_regularisation():
    depth_t = torch.full((1, 1, 4, 4), 2.0)
    outputs = {
        "depth": torch.full((1, 1, 4, 4), 3.0),  # L1 = 1
        "aux": {"initial": {"depth": torch.full((1, 1, 2, 2), 4.0)}},  # upsampled, L1 = 2
    }
    loss_fn = MultiTaskLoss(["depth"], weights={"depth": 2.0})
    total, parts = loss_fn(outputs, {"depth": depth_t}, model=_Model())
    assert total.item() == pytest.approx(2.0 * 1.0 + 0.5 * 2.0 * 2.0 + 0.25)
    assert parts["depth"].item() == pytest.approx(1.0)
    assert parts["initial/depth"].item() == pytest.approx(2.0)
    assert parts["reg/bn_l1"].item() == pytest.approx(0.25)
    assert not parts["total"].requires_grad
    no_ds, _ = MultiTaskLoss(["depth"], weights={"depth": 2.0}, deep_supervision=False)(outputs, {"depth": depth_t})
    assert no_ds.item() == pytest.approx(2.0)


def test_multitask_loss_reads_aux_weights_through_ddp_style_wrapper():
    wrapper = nn.Module()
    wrapper.module = _Model()
    outputs = {"depth": torch.full((1, 1, 2, 2), 3.0), "aux": {"initial": {"depth": torch.full((1, 1, 2, 2), 4.0)}}}
    total, _ = MultiTaskLoss(["depth"])(outputs, {"depth": torch.full((1, 1, 2, 2), 2.0)}, model=wrapper)
    assert total.item() == pytest.approx(1.0 + 0.5 * 2.0 + 0.25)


def test_multitask_loss_errors_name_the_missing_key():
    with pytest.raises(ValueError, match="'depht'"):
        MultiTaskLoss(["depht"])
    loss_fn = MultiTaskLoss(["depth"])
    with pytest.raises(KeyError, match="outputs have no 'depth'"):
        loss_fn({}, {"depth": torch.ones(1, 1, 2, 2)})
    outputs = {"depth": torch.ones(1, 1, 2, 2), "aux": {"scale_0": {"edge": torch.ones(1, 1, 2, 2)}}}
    with pytest.raises(KeyError, match="no 'edge'.*scale_0"):
        loss_fn(outputs, {"depth": torch.ones(1, 1, 2, 2)})


def test_multitask_loss_backward_reaches_all_predictions():
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    aux = torch.randn(2, 3, 2, 2, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    total, _ = MultiTaskLoss(["semseg"], ohem=True, ohem_min_kept=4)(
        {"semseg": pred, "aux": {"a": {"semseg": aux}}}, {"semseg": target}
    )
    total.backward()
    assert pred.grad.abs().sum() > 0 and aux.grad.abs().sum() > 0


def test_ohem_applies_to_the_final_prediction_only():
    # Half the pixels easy (confidently right), half hard: OHEM keeps the hard ones for the final
    # output; the aux head's term is the plain cross-entropy over every pixel (ANN's FSAuxOhemCELoss).
    from fusion.losses import ohem_cross_entropy

    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0, :2] = 8.0  # top half: class 0 with p ~ 1
    outputs = {"semseg": logits, "aux": {"stage4": {"semseg": logits.clone()}}}
    _, parts = MultiTaskLoss(["semseg"], ohem=True, ohem_thresh=0.7, ohem_min_kept=2)(outputs, {"semseg": target})
    plain = torch.nn.functional.cross_entropy(logits, target).item()
    hard = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2).item()
    assert hard == pytest.approx(math.log(2), rel=1e-5) and plain < hard  # the hard half: p = 1/2
    assert parts["semseg"].item() == pytest.approx(hard, rel=1e-6)
    assert parts["stage4/semseg"].item() == pytest.approx(plain, rel=1e-6)
