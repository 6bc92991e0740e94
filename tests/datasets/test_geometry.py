import numpy as np
import pytest

from datasets.geometry import axis_agreement, backproject, normals_from_depth

INTR = [50.0, 40.0, 15.5, 11.0]  # fx, fy, cx, cy for a 24×32 image


def plane_depth(n, d, shape=(24, 32), intr=INTR):
    """z-depth of the plane n·P = d seen through a pinhole camera (z = d / (n·ray))."""
    fx, fy, cx, cy = intr
    v, u = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    ray = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)
    return (d / (ray @ np.asarray(n, dtype=np.float64))).astype(np.float32)


def angle_deg(a, b):
    cos = np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def test_backproject_known_points():
    depth = np.zeros((24, 32), np.float32)
    depth[11, 15] = 2.0  # a pixel one column left of the principal point's column 15.5
    depth[0, 0] = 1.0
    p = backproject(depth, INTR)
    assert p.shape == (24, 32, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p[11, 15], [(15 - 15.5) / 50 * 2, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(p[0, 0], [-15.5 / 50, -11.0 / 40, 1.0], atol=1e-6)
    assert np.all(p[5, 5] == 0)


@pytest.mark.parametrize("n", [(0.3, -0.4, -1.0), (-0.5, 0.2, -1.0), (0.0, 0.0, -1.0), (0.0, -0.8, -1.0)])
def test_tilted_plane_gives_analytic_normal_facing_camera(n):
    n = np.asarray(n) / np.linalg.norm(n)
    depth = plane_depth(n, d=-2.0)
    assert np.all(depth > 0)
    est = normals_from_depth(depth, INTR)
    inner = est[1:-1, 1:-1]
    assert np.all(angle_deg(inner, n) < 1.0)
    # Facing the camera: the normal points against the viewing ray to the point.
    assert np.all(np.sum(inner * backproject(depth, INTR)[1:-1, 1:-1], axis=-1) < 0)
    # The one-pixel border has no central difference: undefined.
    assert np.all(est[0] == 0) and np.all(est[:, -1] == 0)


def test_wider_step_same_plane_and_wider_border():
    n = np.array([0.2, 0.1, -1.0]) / np.linalg.norm([0.2, 0.1, -1.0])
    est = normals_from_depth(plane_depth(n, -1.5), INTR, step=3)
    assert np.all(est[:3] == 0) and np.all(est[:, -3:] == 0)
    assert np.all(angle_deg(est[3:-3, 3:-3], n) < 1.0)


def test_missing_depth_and_neighbours_are_zero():
    depth = plane_depth((0.0, 0.0, -1.0), -2.0)
    depth[10, 12] = 0.0
    est = normals_from_depth(depth, INTR)
    for y, x in [(10, 12), (9, 12), (11, 12), (10, 11), (10, 13)]:
        assert np.all(est[y, x] == 0), (y, x)
    np.testing.assert_allclose(est[10, 15], [0, 0, -1], atol=1e-6)
    assert np.all(normals_from_depth(np.zeros((5, 5), np.float32), INTR) == 0)


def test_depth_discontinuity_is_zero_but_planes_beside_it_are_not():
    depth = np.full((24, 32), 1.0, np.float32)
    depth[:, 16:] = 2.0  # two fronto-parallel planes, a step between columns 15 and 16
    est = normals_from_depth(depth, INTR)
    assert np.all(est[1:-1, 15:17] == 0)
    np.testing.assert_allclose(est[1:-1, 1:15], np.broadcast_to([0, 0, -1], (22, 14, 3)), atol=1e-6)
    np.testing.assert_allclose(est[1:-1, 17:-1], np.broadcast_to([0, 0, -1], (22, 14, 3)), atol=1e-6)
    # A looser threshold keeps the step as a (meaningless) surface.
    assert np.all(np.any(normals_from_depth(depth, INTR, max_rel_jump=2.0)[1:-1, 15] != 0, axis=-1))


def test_axis_agreement_detects_flipped_axis():
    n = np.array([0.3, -0.4, -1.0]) / np.linalg.norm([0.3, -0.4, -1.0])
    est = normals_from_depth(plane_depth(n, -2.0), INTR)
    flipped = est * np.array([1.0, 1.0, -1.0], np.float32)
    np.testing.assert_allclose(axis_agreement(est, est), [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(axis_agreement(est, flipped), [1, 1, -1], atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="intrinsics"):
        backproject(np.ones((3, 3), np.float32), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="fx"):
        backproject(np.ones((3, 3), np.float32), [0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="step"):
        normals_from_depth(np.ones((3, 3), np.float32), INTR, step=0)
