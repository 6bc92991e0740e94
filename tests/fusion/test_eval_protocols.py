"""The official evaluation protocols: BSDS edge ODS/OIS, mIoU over all or present classes, saliency mIoU/maxF."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from fusion.metrics import DELTA_M_DIRECTIONS, MetricSet, SegmentationMetric, delta_m
from fusion.metrics.edge import _THIN_LUTS, EdgeMetric, match_count, thin
from fusion.metrics.saliency import SaliencyMetric


def _thin_reference(mask: np.ndarray) -> np.ndarray:
    """The plain full-image loop of the thinning algorithm (as scikit-image's ``thin``)."""
    skel = mask.astype(np.uint8)
    code = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], dtype=np.uint8)
    while True:
        before = int(skel.sum())
        for lut in _THIN_LUTS:
            skel[np.take(lut, ndi.correlate(skel, code, mode="constant")) & (skel == 1)] = 0
        if int(skel.sum()) == before:
            return skel.astype(bool)


def _maps(h=20, w=40):
    return np.zeros((h, w)), np.zeros((h, w), bool)


def _edge(metric, prob, gt):
    metric.update(torch.as_tensor(prob, dtype=torch.float64)[None, None], torch.as_tensor(gt).float()[None, None])
    return metric.compute()


# ---------------------------------------------------------------- thinning and matching
def test_thin_makes_a_thick_bar_one_pixel_wide_and_keeps_lines():
    bar = np.zeros((9, 20), bool)
    bar[3:6, 2:18] = True  # 3 px thick
    lines = thin(bar)
    assert lines.sum() > 0 and (lines.sum(axis=0) <= 1).all()  # at most one pixel per column
    assert lines[:, 4:16].sum(axis=0).tolist() == [1] * 12 and lines[4, 4:16].all()  # the middle row
    line = np.zeros((9, 20), bool)
    line[4, 2:18] = True
    assert np.array_equal(thin(line), line) and np.array_equal(thin(lines), lines)
    assert not thin(np.zeros((4, 4), bool)).any()


@pytest.mark.parametrize("seed", range(5))
def test_thin_equals_the_full_image_algorithm(seed):
    rng = np.random.default_rng(seed)
    mask = ndi.binary_dilation(rng.random((40, 50)) > 0.97, iterations=int(rng.integers(1, 5)))
    assert np.array_equal(thin(mask), _thin_reference(mask))


def test_match_count_is_a_maximum_one_to_one_matching():
    pred, gt = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    gt[2, 1] = gt[2, 3] = True
    pred[2, 2] = True  # within 1 px of both ground-truth pixels: one match only
    assert match_count(pred, gt, 1.0) == 1
    pred[2, 0] = True  # reaches only gt (2, 1): the best matching pairs (2,0)-(2,1) and (2,2)-(2,3)
    assert match_count(pred, gt, 1.0) == 2
    assert match_count(pred, gt, 0.5) == 0 and match_count(np.zeros_like(pred), gt, 3.0) == 0
    diag = np.zeros((5, 5), bool)
    diag[3, 2] = True  # (3, 2) to (2, 1) is sqrt(2) away: a match at 1.5, not at 1.4
    assert match_count(diag, gt, 1.5) == 1 and match_count(diag, gt, 1.4) == 0


# ---------------------------------------------------------------- BSDS ODS / OIS, hand-computed
def test_shifted_line_matches_within_the_distance_only():
    prob, gt = _maps()
    gt[0:20, 10] = True
    prob[0:20, 12] = 0.9  # the same line, 2 px to the right
    r = _edge(EdgeMetric(tolerance_px=2, from_logits=False), prob, gt)
    assert (r["odsF"], r["precision"], r["recall"], r["oisF"]) == (1.0, 1.0, 1.0, 1.0)
    r = _edge(EdgeMetric(tolerance_px=1, from_logits=False), prob, gt)
    assert r["odsF"] == 0.0 and r["oisF"] == 0.0
    # max_dist is a fraction of the diagonal: sqrt(20^2 + 40^2) = 44.7 px; 2 px needs max_dist >= 0.0448
    assert _edge(EdgeMetric(max_dist=0.045, from_logits=False), prob, gt)["odsF"] == 1.0
    assert _edge(EdgeMetric(max_dist=0.044, from_logits=False), prob, gt)["odsF"] == 0.0


def test_doubled_line_one_to_one_halves_precision_where_max_pool_counts_both():
    prob, gt = _maps()
    gt[0:20, 10] = True
    prob[0:20, 9] = prob[0:20, 11] = 0.9  # two lines, one each side of the edge, 1 px away
    r = _edge(EdgeMetric(tolerance_px=1, from_logits=False), prob, gt)
    # 40 predicted pixels, 20 ground-truth pixels, 20 one-to-one matches: P = 1/2, R = 1
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == 1.0
    assert r["odsF"] == pytest.approx(2 * 0.5 / 1.5)
    approx = _edge(EdgeMetric(tolerance_px=1, from_logits=False, protocol="approximate"), prob, gt)
    assert approx["odsF"] == 1.0  # every prediction has an edge in its window, every edge a prediction
    # Two adjacent lines form one 2-px-wide line: thinning leaves one line, column 10 less its top pixel
    # (rows 1-19), so 19 predictions all match: P = 1, R = 19/20 (without thinning P would be 1/2).
    prob[:] = 0
    prob[0:20, 10:12] = 0.9
    assert np.argwhere(thin(prob > 0)).tolist() == [[y, 10] for y in range(1, 20)]
    r = _edge(EdgeMetric(tolerance_px=1, from_logits=False), prob, gt)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(19 / 20)
    assert r["odsF"] == pytest.approx(2 * 19 / 20 / (1 + 19 / 20))


def test_empty_prediction_scores_zero_and_nothing_seen_is_nan():
    prob, gt = _maps()
    gt[5, 0:30] = True
    r = _edge(EdgeMetric(from_logits=False), prob, gt)
    assert r["odsF"] == 0.0 and r["recall"] == 0.0 and r["precision"] == 1.0 and r["oisF"] == 0.0
    assert all(math.isnan(v) for v in EdgeMetric().compute().values())


def test_ods_pools_counts_per_threshold_and_ois_takes_each_images_best():
    # thresholds .25 .5 .75; image A: its edge at 0.8 and a far false line at 0.4; image B: its edge at 0.3
    a, gt_a = _maps()
    gt_a[5:15, 5] = True
    a[5:15, 5] = 0.8
    a[5:15, 30] = 0.4
    b, gt_b = _maps()
    gt_b[5:15, 5] = True
    b[5:15, 5] = 0.3
    m = EdgeMetric(num_thresholds=3, tolerance_px=1, from_logits=False)
    m.update(torch.tensor(np.stack([a, b]))[:, None], torch.tensor(np.stack([gt_a, gt_b])).float()[:, None])
    r = m.compute()
    # t=.25: matched 20 of 30 predicted, 20 edges: F(2/3, 1) = 0.8; t=.5 and .75: F(1, 1/2) = 2/3
    assert r["odsF"] == pytest.approx(0.8) and r["threshold"] == 0.25
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0
    # OIS: A at .5 (10/10/10), B at .25 (10/10/10): F = 1
    assert r["oisF"] == pytest.approx(1.0)


def test_bsds_state_sums_exactly_across_ranks():
    rng = np.random.default_rng(0)
    prob = torch.tensor(ndi.gaussian_filter(rng.random((4, 1, 24, 32)), (0, 0, 1, 1)))
    gt = torch.tensor(rng.random((4, 1, 24, 32)) > 0.9).float()
    whole = EdgeMetric(from_logits=False, max_dist=0.05)
    whole.update(prob, gt)
    ranks = [EdgeMetric(from_logits=False, max_dist=0.05) for _ in range(2)]
    ranks[0].update(prob[:1], gt[:1])
    ranks[1].update(prob[1:], gt[1:])
    summed = EdgeMetric(from_logits=False, max_dist=0.05)
    summed.load_state(ranks[0].state() + ranks[1].state())
    assert torch.equal(summed.state(), whole.state()) and summed.compute() == whole.compute()


def test_metric_set_passes_the_edge_protocol_and_rejects_an_unknown_one():
    assert MetricSet(["edge"]).metrics["edge"].protocol == "bsds"
    assert MetricSet(["edge"], edge_protocol="approximate").metrics["edge"].protocol == "approximate"
    assert (
        "edge/oisF" in MetricSet(["edge"]).compute()
        and "edge/oisF" not in MetricSet(["edge"], edge_protocol="approximate").compute()
    )
    with pytest.raises(ValueError, match="protocol must be one of"):
        EdgeMetric(protocol="exact")


# ---------------------------------------------------------------- mIoU: all classes or present ones
def _segmentation(miou_classes):
    # target 0 x4 (predicted 0 0 0 1), target 1 x6 (predicted 0 0 1 1 1 1); class 2 never occurs
    target = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]])
    pred = torch.tensor([[[0, 0, 0, 1, 0, 0, 1, 1, 1, 1]]])
    m = SegmentationMetric(3, miou_classes=miou_classes)
    m.update(pred, target)
    assert m.confusion().tolist() == [[3, 1, 0], [2, 4, 0], [0, 0, 0]]
    return m.compute()["miou"]


def test_miou_present_skips_an_absent_class_and_all_counts_it_as_zero():
    iou0, iou1 = 3 / (4 + 5 - 3), 4 / (6 + 5 - 4)  # 1/2 and 4/7
    assert _segmentation("present") == pytest.approx((iou0 + iou1) / 2)  # CEN, ANN: nanmean
    assert _segmentation("all") == pytest.approx((iou0 + iou1 + 0) / 3)  # MTI-Net: every class
    assert MetricSet(["semseg"], num_classes=3, miou_classes="all").metrics["semseg"].miou_classes == "all"
    with pytest.raises(ValueError, match="miou_classes must be one of"):
        SegmentationMetric(3, miou_classes="some")


# ---------------------------------------------------------------- saliency
def test_saliency_miou_and_maxf_average_per_image_values():
    gt = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32).view(3, 1, 1, 4)
    prob = torch.tensor([[0.95, 0.95, 0.05, 0.05], [0.95, 0, 0, 0], [0.05] * 4], dtype=torch.float64).view(3, 1, 1, 4)
    m = SaliencyMetric(from_logits=False)
    m.update(prob, gt)
    # at every threshold: J = 1, 0, 1 (both empty); P = 1, 0, 0; R = 1, 0, 0
    r = m.compute()
    assert r["miou"] == pytest.approx(2 / 3) and r["maxF"] == pytest.approx(1 / 3)
    assert math.isnan(SaliencyMetric().compute()["miou"])


def test_saliency_enters_delta_m_by_miou():
    assert DELTA_M_DIRECTIONS["sal/miou"] == "higher" and "sal/maxF" not in DELTA_M_DIRECTIONS
    assert set(MetricSet(["sal"]).compute()) == {"sal/miou", "sal/maxF"}
    assert delta_m({"sal/miou": 0.66, "sal/maxF": 0.1}, {"sal/miou": 0.6, "sal/maxF": 0.9}) == pytest.approx(10.0)
