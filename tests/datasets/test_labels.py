import numpy as np

from datasets.labels import edges_from_labels


def test_vertical_boundary_band():
    lab = np.zeros((6, 8), np.uint8)
    lab[:, 4:] = 1
    e = edges_from_labels(lab, thickness=2)
    expected = np.zeros((6, 8), np.uint8)
    expected[:, 3:5] = 1
    np.testing.assert_array_equal(e, expected)


def test_thicker_band_and_instances():
    sem = np.zeros((10, 10), np.uint8)
    inst = np.zeros((10, 10), np.uint8)
    inst[:, 5:] = 1  # same class, two instances: still an edge
    e = edges_from_labels(sem, inst, thickness=4)
    assert e[:, 3:7].all() and not e[:, :2].any() and not e[:, 8:].any()


def test_ignore_boundary_is_not_an_edge():
    lab = np.zeros((6, 6), np.uint8)
    lab[:, 3:] = 255
    assert edges_from_labels(lab).sum() == 0
