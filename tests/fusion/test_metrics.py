import math

import pytest
import torch

from fusion.metrics import (
    DepthMetric,
    EdgeMetric,
    MetricSet,
    NormalsMetric,
    SegmentationMetric,
    delta_m,
)


def test_segmentation_confusion_2x2_gives_hand_computed_scores():
    # target 0 0 1 1 255 ; pred 0 1 1 1 0  -> cm [[1,1],[0,2]], ignored pixel skipped
    target = torch.tensor([[[0, 0, 1, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1, 0]]])
    m = SegmentationMetric(2)
    m.update(pred, target)
    assert m.confusion().tolist() == [[1, 1], [0, 2]]
    r = m.compute()
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["pixel_acc"] == pytest.approx(3 / 4)
    assert r["mean_acc"] == pytest.approx((1 / 2 + 1) / 2)


def test_segmentation_accepts_logits_and_skips_absent_classes():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0, 0, 0] = 1.0
    logits[0, 1, 0, 1] = 1.0
    m = SegmentationMetric(3)
    m.update(logits, torch.tensor([[[0, 1]]]))
    assert m.compute()["miou"] == 1.0  # class 2 never occurs: not averaged in
    with pytest.raises(ValueError, match="target class id outside"):
        m.update(torch.tensor([[[0]]]), torch.tensor([[[7]]]))


def test_depth_metrics_exact_values():
    pred = torch.tensor([[[[1.0, 2.0], [4.0, 9.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [5.0, 0.0]]]])  # last pixel invalid
    m = DepthMetric()
    m.update(pred, target)
    r = m.compute()
    assert r["rmse"] == pytest.approx(math.sqrt((0 + 1 + 1) / 3))
    assert r["abs_rel"] == pytest.approx((0 + 1 + 0.2) / 3)
    assert r["log_rmse"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(0.8) ** 2) / 3))
    # ratios max(p/t, t/p) = 1, 2, 1.25; the thresholds are strict
    assert r["delta1"] == pytest.approx(1 / 3)
    assert r["delta2"] == pytest.approx(2 / 3)  # 1.25 < 1.5625 <= 2
    assert r["delta3"] == pytest.approx(2 / 3)  # 1.953125 < 2
    empty = DepthMetric()
    empty.update(pred, torch.zeros_like(target))
    assert math.isnan(empty.compute()["rmse"])


def _random_batch():
    g = torch.Generator().manual_seed(0)
    outputs = {
        "semseg": torch.randn(4, 5, 6, 7, generator=g),
        "depth": torch.rand(4, 1, 6, 7, generator=g) * 3,
        "normals": torch.randn(4, 3, 6, 7, generator=g),
        "edge": torch.randn(4, 1, 6, 7, generator=g),
    }
    targets = {
        "semseg": torch.randint(0, 5, (4, 6, 7), generator=g),
        "depth": torch.rand(4, 1, 6, 7, generator=g) * 3,
        "normals": torch.randn(4, 3, 6, 7, generator=g),
        "edge": (torch.rand(4, 1, 6, 7, generator=g) > 0.8).float(),
    }
    targets["depth"][:, :, :2] = 0
    return outputs, targets


def test_merged_halves_equal_one_pass_for_every_metric():
    outputs, targets = _random_batch()
    whole = MetricSet(list(outputs), num_classes=5, edge_tolerance_px=1)
    whole.update(outputs, targets)
    halves = [MetricSet(list(outputs), num_classes=5, edge_tolerance_px=1) for _ in range(2)]
    for i, ms in enumerate(halves):
        ms.update(
            {k: v[2 * i : 2 * i + 2] for k, v in outputs.items()}, {k: v[2 * i : 2 * i + 2] for k, v in targets.items()}
        )
    # the DDP path: sum the flat states (all_reduce) and load the sum
    reduced = MetricSet(list(outputs), num_classes=5, edge_tolerance_px=1)
    reduced.load_state(halves[0].state() + halves[1].state())
    halves[0].merge(halves[1])
    expected = whole.compute()
    for got in (halves[0].compute(), reduced.compute()):
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k] == pytest.approx(expected[k], rel=1e-12), k
    assert whole.state().dtype == torch.float64 and whole.state().dim() == 1
    with pytest.raises(ValueError, match="expected"):
        reduced.load_state(torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_equal_metrics_on_cpu():
    # Validation on a GPU hands the metrics CUDA outputs and targets; every count must stay on their device.
    outputs, targets = _random_batch()
    on_cpu, on_cuda = (MetricSet(list(outputs), num_classes=5, edge_tolerance_px=1) for _ in range(2))
    on_cpu.update(outputs, targets)
    on_cuda.update({k: v.cuda() for k, v in outputs.items()}, {k: v.cuda() for k, v in targets.items()})
    torch.testing.assert_close(on_cuda.state(), on_cpu.state(), rtol=1e-9, atol=1e-9)


def test_normals_angles_of_known_vectors():
    target = torch.zeros(1, 3, 1, 4)
    target[0, 2] = 1.0  # all facing (0, 0, 1)
    target[0, :, 0, 3] = 0.0  # invalid pixel
    pred = torch.zeros(1, 3, 1, 4)
    pred[0, :, 0, 0] = torch.tensor([0.0, 0.0, 2.0])  # 0 deg
    pred[0, :, 0, 1] = torch.tensor([1.0, 0.0, 1.0])  # 45 deg
    pred[0, :, 0, 2] = torch.tensor([1.0, 0.0, 0.0])  # 90 deg
    pred[0, :, 0, 3] = torch.tensor([0.0, 0.0, -1.0])  # ignored
    m = NormalsMetric()
    m.update(pred, target)
    r = m.compute()
    assert r["mean"] == pytest.approx(45.0, abs=1e-6)
    assert r["median"] == pytest.approx(45.0, abs=0.1)
    assert r["rmse"] == pytest.approx(math.sqrt((0 + 45**2 + 90**2) / 3), abs=1e-6)
    assert r["11.25"] == pytest.approx(100 / 3)
    assert r["22.5"] == pytest.approx(100 / 3)
    assert r["30"] == pytest.approx(100 / 3)


def test_normals_median_of_many_angles_is_within_a_bin():
    angles = torch.tensor([3.0, 7.0, 10.0, 20.0, 80.0, 100.0, 170.0])
    rad = torch.deg2rad(angles)
    pred = torch.stack([torch.sin(rad), torch.zeros_like(rad), torch.cos(rad)])[None, :, None, :]
    target = torch.zeros_like(pred)
    target[:, 2] = 1.0
    m = NormalsMetric()
    m.update(pred, target)
    assert m.compute()["median"] == pytest.approx(20.0, abs=0.1)
    zero = NormalsMetric()
    zero.update(torch.zeros_like(pred), target)
    assert zero.compute()["mean"] == pytest.approx(90.0)


def test_edge_ods_on_hand_made_map_with_tolerance():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, :, 2] = 1.0  # vertical edge, 5 pixels
    prob = torch.zeros(1, 1, 5, 5)
    prob[0, 0, :, 3] = 0.8  # predicted one pixel to the right
    prob[0, 0, 0, 0] = 0.3  # weak false positive far (2 px) from the edge
    exact = EdgeMetric(tolerance_px=0, from_logits=False)
    exact.update(prob, target)
    assert exact.compute()["odsF"] == 0.0
    tol = EdgeMetric(tolerance_px=1, from_logits=False)
    tol.update(prob, target)
    r = tol.compute()
    # thresholds above 0.3 keep the 5 shifted pixels: P = R = 1
    assert r["odsF"] == pytest.approx(1.0)
    assert 0.3 < r["threshold"] <= 0.8
    three = EdgeMetric(num_thresholds=3, tolerance_px=1, from_logits=False)  # thresholds .25 .5 .75
    three.update(prob.clamp(max=0.6), target)  # edge prob 0.6: 0.25 -> F(5/6, 1), 0.5 -> F(1, 1), 0.75 -> 0
    assert three.compute()["odsF"] == pytest.approx(1.0)
    assert three.compute()["threshold"] == 0.5
    only_low = EdgeMetric(num_thresholds=3, tolerance_px=1, from_logits=False)
    only_low.update(prob.clamp(max=0.3), target)  # all 6 predictions at 0.3: only t=0.25 fires
    p, rc = 5 / 6, 1.0
    assert only_low.compute()["odsF"] == pytest.approx(2 * p * rc / (p + rc))


def test_edge_radius_from_image_diagonal():
    assert EdgeMetric(max_dist=0.0075).radius(480, 640) == 6
    assert EdgeMetric(tolerance_px=2).radius(480, 640) == 2


def test_delta_m_hand_example():
    base = {"semseg/miou": 0.40, "depth/rmse": 0.60, "edge/odsF": 0.5}
    model = {"semseg/miou": 0.44, "depth/rmse": 0.66, "extra": 1.0}
    # (+10% - 10%) / 2 over the two metrics both dicts hold
    assert delta_m(model, base) == pytest.approx(0.0)
    model["depth/rmse"] = 0.57
    assert delta_m(model, base) == pytest.approx((10 + 5) / 2)
    with pytest.raises(ValueError, match="no metric"):
        delta_m({"a": 1.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="direction"):
        delta_m({"a": 1.0}, {"a": 1.0}, {"a": "up"})


def test_metric_set_errors_name_missing_task():
    ms = MetricSet(["depth"])
    with pytest.raises(KeyError, match="outputs have no 'depth'"):
        ms.update({}, {"depth": torch.ones(1, 1, 2, 2)})
    with pytest.raises(ValueError, match="'foo'"):
        MetricSet(["foo"])


def test_edge_tolerance_follows_the_configured_max_dist():
    # A prediction 3 px from a ground-truth edge on a 100×100 map (diagonal 141 px): PASCAL's 0.0075
    # gives r = 1 (a miss), NYUD's 0.011 gives r = 2 (still a miss), 0.03 gives r = 4 (a hit).
    pred = torch.full((1, 1, 100, 100), -20.0)
    pred[..., 50, 53] = 20.0
    target = torch.zeros(1, 1, 100, 100)
    target[..., 50, 50] = 1.0
    for max_dist, radius, f in [(0.0075, 1, 0.0), (0.011, 2, 0.0), (0.03, 4, 1.0)]:
        ms = MetricSet(["edge"], edge_max_dist=max_dist)
        assert ms.metrics["edge"].radius(100, 100) == radius
        ms.update({"edge": pred}, {"edge": target})
        assert ms.compute()["edge/odsF"] == pytest.approx(f), max_dist


def test_an_empty_edge_metric_is_nan_and_predictions_without_edges_score_zero():
    from fusion.metrics.edge import EdgeMetric

    m = EdgeMetric()
    assert all(math.isnan(v) for v in m.compute().values())  # nothing seen
    m.update(torch.full((1, 1, 4, 4), -9.0), torch.zeros(1, 1, 4, 4))  # no edge to find, none predicted
    assert math.isnan(m.compute()["odsF"])
    m.update(torch.full((1, 1, 4, 4), 9.0), torch.zeros(1, 1, 4, 4))  # edges predicted where there are none
    assert m.compute()["odsF"] == 0.0 and m.compute()["precision"] == 0.0
