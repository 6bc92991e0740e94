"""Per-class IoU, depth RMSE and normals angle against hand-computed values; merging is exact."""

from __future__ import annotations

import math

import pytest
import torch

from fusion.metrics import PerClassMetric


def _case():
    # One 2×3 image, 3 classes. Target labels:   predicted labels:
    #   0 0 1                                     0 1 1
    #   1 2 255                                   1 1 0
    target = {"semseg": torch.tensor([[[0, 0, 1], [1, 2, 255]]])}
    pred_ids = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    pred = {"semseg": torch.nn.functional.one_hot(pred_ids, 3).permute(0, 3, 1, 2).float()}
    # Depth: target 0 is missing; errors on valid labelled pixels: class 0: 1, 2; class 1: 0 (missing), 3
    target["depth"] = torch.tensor([[[[1.0, 2.0, 0.0], [2.0, 5.0, 1.0]]]])
    pred["depth"] = torch.tensor([[[[2.0, 4.0, 9.0], [5.0, 5.0, 7.0]]]])
    # Normals: target (0,0,1) everywhere but the class-2 pixel (0,0,0, missing); predictions at
    # 0, 90, 0 / 45, -, 180 degrees from it.
    t = torch.zeros(1, 3, 2, 3)
    t[0, 2] = 1.0
    t[0, :, 1, 1] = 0.0
    p = torch.zeros(1, 3, 2, 3)
    p[0, :, 0, 0] = torch.tensor([0.0, 0.0, 2.0])
    p[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    p[0, :, 0, 2] = torch.tensor([0.0, 0.0, 1.0])
    p[0, :, 1, 0] = torch.tensor([1.0, 0.0, 1.0])
    p[0, :, 1, 1] = torch.tensor([0.0, 1.0, 0.0])
    p[0, :, 1, 2] = torch.tensor([0.0, 0.0, -1.0])
    target["normals"], pred["normals"] = t, p
    return pred, target


def test_per_class_values_are_the_hand_computed_ones():
    pred, target = _case()
    m = PerClassMetric(3, ["semseg", "depth", "normals"])
    m.update(pred, target)
    assert m.confusion().tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    rows = m.rows()
    # IoU = tp / (gt + predicted - tp): class 0: 1/(2+1-1); class 1: 2/(2+4-2); class 2: 0/(1+0-0)
    assert [r["iou"] for r in rows] == pytest.approx([0.5, 0.5, 0.0])
    assert [r["acc"] for r in rows] == pytest.approx([0.5, 1.0, 0.0])
    assert [r["pixels"] for r in rows] == [2, 2, 1]
    # depth: class 0 errors 1, 2 -> sqrt(5/2); class 1 (one valid pixel) error 3 -> 3; class 2 error 0
    assert rows[0]["depth_rmse"] == pytest.approx(math.sqrt(2.5))
    assert rows[1]["depth_rmse"] == pytest.approx(3.0)
    assert rows[2]["depth_rmse"] == pytest.approx(0.0)
    # normals: class 0: 0 and 90 -> 45; class 1: 0 and 45 -> 22.5; class 2: no valid target -> NaN
    assert rows[0]["normals_mean"] == pytest.approx(45.0)
    assert rows[1]["normals_mean"] == pytest.approx(22.5)
    assert math.isnan(rows[2]["normals_mean"])


def test_report_names_the_classes_and_normalises_confusion_rows():
    pred, target = _case()
    m = PerClassMetric(3, ["semseg"])
    m.update(pred, target)
    rep = m.report(["floor", "wall", "chair"])
    assert list(rep["classes"]) == ["floor", "wall", "chair"]
    assert rep["classes"]["wall"]["iou"] == pytest.approx(0.5) and "depth_rmse" not in rep["classes"]["wall"]
    assert rep["confusion"]["normalized"] == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        m.report(["a", "b"])


def test_an_absent_class_has_nan_iou_and_a_nan_confusion_row():
    m = PerClassMetric(3, ["semseg"])
    m.update({"semseg": torch.tensor([[[0, 1]]])}, {"semseg": torch.tensor([[[0, 1]]])})
    assert math.isnan(m.rows()[2]["iou"])
    assert all(math.isnan(v) for v in m.report(["a", "b", "c"])["confusion"]["normalized"][2])


def test_summed_states_of_two_halves_equal_one_pass():
    """What an all-reduce of two ranks' states gives: the metric of the whole set, exactly."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (4, 8, 8), generator=g)
    labels[0, 0, :3] = 255
    target = {
        "semseg": labels,
        "depth": torch.rand(4, 1, 8, 8, generator=g) * (torch.rand(4, 1, 8, 8, generator=g) > 0.2),
        "normals": torch.randn(4, 3, 8, 8, generator=g),
    }
    pred = {
        "semseg": torch.randn(4, 4, 8, 8, generator=g),
        "depth": torch.rand(4, 1, 8, 8, generator=g),
        "normals": torch.randn(4, 3, 8, 8, generator=g),
    }
    tasks = ["semseg", "depth", "normals"]
    whole = PerClassMetric(4, tasks)
    whole.update(pred, target)
    halves = [PerClassMetric(4, tasks) for _ in range(2)]
    for i, h in enumerate(halves):
        h.update(
            {k: v[2 * i : 2 * i + 2] for k, v in pred.items()}, {k: v[2 * i : 2 * i + 2] for k, v in target.items()}
        )
    merged = PerClassMetric(4, tasks)
    merged.load_state(halves[0].state() + halves[1].state())
    assert merged.compute() == pytest.approx(whole.compute(), nan_ok=True)
    assert merged.confusion().sum() == (labels != 255).sum()


def test_it_needs_the_semseg_task_and_ids_in_range():
    with pytest.raises(ValueError, match="needs the semseg task"):
        PerClassMetric(3, ["depth"])
    m = PerClassMetric(2, ["semseg"])
    with pytest.raises(ValueError, match="target class id outside"):
        m.update({"semseg": torch.tensor([[[0, 1]]])}, {"semseg": torch.tensor([[[0, 5]]])})
