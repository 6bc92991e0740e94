"""The synthetic RGB-D source: determinism, geometry, labels, sensor model, validation, codec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets import codec
from datasets.sources.base import SourceError
from datasets.sources.synthetic import CLASSES, SyntheticSource, intrinsics, render
from datasets.synthetic.appearance import CHECKER, STRIPES, lambert, pattern, value_noise
from datasets.synthetic.raycast import BOX, CYLINDER, NEAR, SPHERE, Prim, camera_rays, cast, ray_lengths
from datasets.synthetic.render import SPLIT_CODES
from datasets.synthetic.scene import CLS, camera_rotation, sample_scene
from datasets.synthetic.sensor import kinect_depth

H, W = 60, 80
ROOM_CLS = (CLS["wall"], CLS["floor"], CLS["ceiling"])


def _scene_hits(seed, split, index, height, width):
    """The exact geometry behind render(seed, split, index): the scene is the first thing drawn."""
    scene = sample_scene(np.random.default_rng([seed, SPLIT_CODES[split], index]))
    return scene, cast(scene.prims, scene.room, scene.cam_pos, scene.R, height, width, ROOM_CLS)


def _backproject(depth, height, width):
    fx, fy, cx, cy = intrinsics(height, width)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)


def _fit_plane(pts):
    """(unit normal, offset) with n.p = offset, by least squares (SVD)."""
    mean = pts.mean(axis=0)
    n = np.linalg.svd(pts - mean, full_matrices=False)[2][-1]
    return n, float(n @ mean)


def _boundary(lab):
    b = np.zeros(lab.shape, bool)
    dv, dh = lab[1:] != lab[:-1], lab[:, 1:] != lab[:, :-1]
    b[1:] |= dv
    b[:-1] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b


# -- determinism, shapes, intrinsics -------------------------------------------------------------


def test_same_arguments_give_identical_arrays_and_other_indices_differ():
    a, b = render(7, "train", 3, H, W), render(7, "train", 3, H, W)
    for key in ("rgb", "depth", "semseg", "normals", "edge"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["meta"] == b["meta"]
    for other in (render(7, "train", 4, H, W), render(7, "val", 3, H, W), render(8, "train", 3, H, W)):
        assert not np.array_equal(a["rgb"], other["rgb"])
        assert not np.array_equal(a["depth"], other["depth"])


def test_shapes_dtypes_and_meta():
    s = render(0, "val", 1, H, W)
    assert s["rgb"].shape == (H, W, 3) and s["rgb"].dtype == np.uint8
    assert s["depth"].shape == (H, W) and s["depth"].dtype == np.float32
    assert s["semseg"].shape == (H, W) and s["semseg"].dtype == np.uint8
    assert s["normals"].shape == (H, W, 3) and s["normals"].dtype == np.float32
    assert s["edge"].shape == (H, W) and set(np.unique(s["edge"])) <= {0, 1}
    m = s["meta"]
    assert (m["id"], m["source"], m["split"], m["depth_scale"]) == ("val_000001", "synthetic", "val", 0.001)
    assert m["intrinsics"] == pytest.approx(list(intrinsics(H, W)), abs=1e-5)
    assert 3 <= m["num_objects"] == len(m["objects"]) <= 12
    json.dumps(m)


def test_intrinsics_are_nyud_scaled_to_the_image():
    assert intrinsics(480, 640) == pytest.approx((518.8579, 519.4696, 325.5824, 253.7362))
    assert intrinsics(240, 320) == pytest.approx((259.42895, 259.7348, 162.7912, 126.8681))
    assert intrinsics(120, 640) == pytest.approx((518.8579, 129.8674, 325.5824, 63.43405))


# -- geometry ------------------------------------------------------------------------------------


def test_hand_made_room_box_sphere_cylinder_depth_and_normals():
    # Camera at (2, 0.5, 1.5) looking along +y, level: the far wall y = 4 is fronto-parallel,
    # so its z-depth is 3.5 m at every pixel (a ray length would grow towards the borders).
    R = camera_rotation(np.pi / 2, 0.0, 0.0)
    cam = np.array([2.0, 0.5, 1.5])
    room = (4.0, 4.0, 3.0)
    box = Prim(BOX, (1.5, 2.0, 1.5), (0.3, 0.5, 0.3), 0.0, CLS["cabinet"], 7, 0)
    sphere = Prim(SPHERE, (2.7, 2.5, 1.5), (0.4, 0.4, 0.4), 0.0, CLS["objects"], 8, 0)
    cyl = Prim(CYLINDER, (2.0, 3.0, 1.4), (0.2, 0.2, 0.5), 0.0, CLS["lamp"], 9, 0)
    h, w = 120, 160
    hits = cast([box, sphere, cyl], room, cam, R, h, w, ROOM_CLS)
    wall = hits.inst == 5  # WALL_YMAX face id 4 -> instance 5
    assert wall.sum() > 1000
    np.testing.assert_allclose(hits.depth[wall], 3.5, atol=1e-5)
    np.testing.assert_allclose(hits.normal_cam[wall], np.tile([0, 0, -1.0], (wall.sum(), 1)), atol=1e-6)
    # The box face y = 1.5 faces the camera: z-depth 1.0 m; its class and instance are the box's.
    front = (hits.inst == 7) & (hits.normal_cam[..., 2] < -0.999)
    assert front.sum() > 100 and np.all(hits.cls[hits.inst == 7] == CLS["cabinet"])
    np.testing.assert_allclose(hits.depth[front], 1.0, atol=1e-5)
    # Sphere and cylinder pixels back-project onto their surfaces, with the analytic normal.
    to_world = lambda p: p @ R.T + cam  # noqa: E731
    pts = to_world(_backproject(hits.depth.astype(np.float64), h, w))
    n_world = hits.normal_cam.astype(np.float64) @ R.T
    on_s = hits.inst == 8
    np.testing.assert_allclose(np.linalg.norm(pts[on_s] - sphere.center, axis=-1), 0.4, atol=2e-4)
    np.testing.assert_allclose(n_world[on_s], (pts[on_s] - sphere.center) / 0.4, atol=2e-3)
    on_c = hits.inst == 9
    radial = np.linalg.norm(pts[on_c][:, :2] - cyl.center[:2], axis=-1)
    side = np.abs(n_world[on_c][:, 2]) < 0.5
    assert on_c.sum() > 50 and side.all()  # the camera is level with the cylinder: side only
    np.testing.assert_allclose(radial, 0.2, atol=2e-4)
    assert np.all(np.abs(pts[on_c][:, 2] - 1.4) <= 0.5 + 1e-4)


def test_floor_pixels_lie_on_one_plane_at_camera_height_with_matching_normals():
    scene, hits = _scene_hits(0, "train", 5, 120, 160)
    floor = hits.cls == CLS["floor"]
    assert floor.sum() > 500
    pts = _backproject(hits.depth.astype(np.float64), 120, 160)[floor]
    n, off = _fit_plane(pts)
    n, off = (n, off) if off > 0 else (-n, -off)  # normal pointing from the plane to the camera side
    assert np.abs(pts @ n - off).max() < 2e-3
    assert off == pytest.approx(scene.cam_pos[2], abs=2e-3)  # camera height above the floor
    np.testing.assert_allclose(n, -scene.R[2], atol=1e-3)  # world up in camera axes, pointing up
    assert np.all(hits.normal_cam[floor] @ -n > 0.999)
    # The rendered (noisy, holed) depth still agrees with the exact geometry.
    s = render(0, "train", 5, 120, 160)
    ok = floor & (s["depth"] > 0)
    assert ok.sum() > 0.7 * floor.sum()
    noisy = _backproject(s["depth"].astype(np.float64), 120, 160)[ok]
    assert np.median(np.abs(noisy @ n - off)) < 0.02
    assert np.all(s["normals"][floor] @ -n > 0.999)


def test_normals_are_unit_and_face_the_camera_and_classes_are_known():
    for i in range(4):
        s = render(1, "train", i, H, W)
        norm = np.linalg.norm(s["normals"], axis=-1)
        np.testing.assert_allclose(norm, 1.0, atol=1e-5)
        assert np.all(np.einsum("hwc,hwc->hw", s["normals"], camera_rays(H, W)) < 0)
        assert s["semseg"].max() < len(CLASSES)
        assert {CLS["wall"], CLS["floor"]} <= set(np.unique(s["semseg"]).tolist())


# -- labels --------------------------------------------------------------------------------------


def test_edges_are_exactly_the_semantic_and_instance_boundaries():
    for i in range(3):
        s = render(2, "train", i, H, W)
        _, hits = _scene_hits(2, "train", i, H, W)
        np.testing.assert_array_equal(s["semseg"], hits.cls)
        expected = _boundary(hits.cls) | _boundary(hits.inst)
        np.testing.assert_array_equal(s["edge"].astype(bool), expected)
        assert 0 < expected.mean() < 0.3


def test_tables_and_cabinets_share_wood_and_beds_and_sofas_share_fabric():
    checked = 0
    for i in range(60):
        scene = sample_scene(np.random.default_rng([0, 0, i]))
        mats = {}
        for p in scene.prims:
            mats.setdefault(CLASSES[p.cls], set()).add(p.mat)
        for a, b in (("table", "cabinet"), ("sofa", "bed")):
            if a in mats and b in mats:
                checked += 1
                assert mats[a] & mats[b]
    assert checked >= 3


def test_some_scenes_are_dim_or_low_contrast_and_objects_are_3_to_12():
    scenes = [sample_scene(np.random.default_rng([3, 1, i])) for i in range(80)]
    assert any(s.lighting["dim"] for s in scenes) and any(s.lighting["contrast"] < 1 for s in scenes)
    assert all(3 <= len(s.objects) <= 12 for s in scenes)


def test_texture_noise_patterns_and_lambert_on_hand_made_inputs():
    grid = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    x, y = np.array([0.0, 1.0, 3.0, 4.0, 1.5], np.float32), np.array([0.0, 2.0, 1.0, 0.0, 0.0], np.float32)
    # Lattice points return grid values (periodic: x = 4 wraps to 0); x = 1.5 is halfway.
    np.testing.assert_allclose(value_noise(grid, x, y), [0, 9 / 16, 7 / 16, 0, 1.5 / 16], atol=1e-6)
    s, t = np.array([0.1, 0.6, 0.1, 0.6], np.float32), np.array([0.1, 0.1, 0.6, 0.6], np.float32)
    f = np.full(4, 1.0, np.float32)  # cycles per metre
    np.testing.assert_array_equal(pattern(CHECKER, s, t, 2 * f, grid), [0, 1, 1, 0])  # 0.5 m cells
    np.testing.assert_array_equal(pattern(STRIPES, s, t, f, grid), [1, 0, 1, 0])
    # A light 2 m straight above an upward-facing point: ambient + I * 1 / (1 + 4 / 4).
    point = np.zeros((3, 2), np.float32)
    normal = np.array([[0, 1.0], [0, 0], [1.0, 0]], np.float32)  # up, and sideways (n.l = 0)
    irr = lambert(point, normal, [((0.0, 0.0, 2.0), 3.0)], 0.2)
    np.testing.assert_allclose(irr, [0.2 + 1.5, 0.2], atol=1e-6)


# -- depth sensor model --------------------------------------------------------------------------


def test_kinect_depth_holes_at_far_range_grazing_glass_and_discontinuities():
    h, w = 40, 60
    rays, lens = camera_rays(h, w), ray_lengths(h, w)
    z = np.full((h, w), 2.0, np.float32)
    z[:, 30:] = 4.0  # a depth step at column 30
    z[:5] = 12.0  # beyond the range
    n = np.zeros((h, w, 3), np.float32)
    n[..., 2] = -1.0
    # Rows 30-34: surfaces seen edge-on (normal perpendicular to the view ray, tilted by 3 degrees).
    side = np.stack([np.zeros((5, w)), rays[30:35, :, 2], -rays[30:35, :, 1]], -1)
    side /= np.linalg.norm(side, axis=-1, keepdims=True)
    view = rays[30:35] / lens[30:35, :, None]
    n[30:35] = np.cos(np.radians(3)) * side - np.sin(np.radians(3)) * view
    glass = np.zeros((h, w), bool)
    glass[36:, :10] = True
    d = kinect_depth(z, n, rays, lens, glass, 9.0, np.random.default_rng(0))
    assert np.all(d[:5] == 0) and np.all(d[30:35] == 0) and np.all(d[36:, :10] == 0)
    band = d[6:29, 28:32]
    assert 0 < (band == 0).sum() < band.size
    flat = d[6:29, 2:26]
    assert np.all(flat > 0)
    np.testing.assert_allclose(flat, 2.0, atol=0.05)
    assert len(np.unique(flat)) <= 5  # disparity quantisation: a few levels around 2 m


def test_missing_depth_is_present_but_a_minority():
    fractions = [np.mean(render(4, "val", i, H, W)["depth"] == 0) for i in range(5)]
    assert all(f < 0.3 for f in fractions) and sum(fractions) > 0


# -- source API and validation -------------------------------------------------------------------


def test_source_keys_params_and_load():
    src = SyntheticSource(num_train=3, num_val=2, height=H, width=W, seed=9)
    assert src.name == "synthetic" and src.classes == CLASSES and len(CLASSES) == 13
    assert src.members == ["rgb", "depth", "semseg", "normals", "edge"]
    assert src.splits() == ["train", "val"] and src.keys("val") == ["000000", "000001"]
    p = src.params()
    assert json.loads(json.dumps(p)) == p and p["generator_version"] >= 1
    assert (p["num_train"], p["num_val"], p["height"], p["width"], p["seed"]) == (3, 2, H, W, 9)
    s = src.load("val", "000001")
    np.testing.assert_array_equal(s["rgb"], render(9, "val", 1, H, W)["rgb"])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"height": 0}, "height"),
        ({"width": -5}, "width"),
        ({"width": 64.0}, "width"),
        ({"num_train": -1}, "num_train"),
        ({"num_val": True}, "num_val"),
        ({"seed": -1}, "seed"),
        ({"num_train": 0, "num_val": 0}, "both 0"),
    ],
)
def test_bad_options_are_rejected_by_name(kwargs, words):
    with pytest.raises(SourceError, match=words):
        SyntheticSource(**{"num_train": 2, "num_val": 1, **kwargs})


def test_bad_split_key_and_render_arguments_are_rejected():
    src = SyntheticSource(num_train=2, num_val=1, height=H, width=W)
    for split, key, words in (
        ("test", "000000", "split"),
        ("val", "000001", "000001"),
        ("train", "1", "'1'"),
        ("train", "a.b", "a.b"),
    ):
        with pytest.raises(SourceError, match=words):
            src.load(split, key)
    with pytest.raises(SourceError, match="split"):
        render(0, "test", 0, H, W)
    with pytest.raises(SourceError, match="height"):
        render(0, "train", 0, 8, W)
    with pytest.raises(SourceError, match="index"):
        render(0, "train", -1, H, W)


# -- codec round trip ----------------------------------------------------------------------------


def test_round_trip_through_the_codec():
    s = render(5, "train", 2, H, W)
    back = codec.decode_sample(codec.encode_sample(s))
    np.testing.assert_array_equal(back["rgb"], s["rgb"])
    np.testing.assert_array_equal(back["semseg"], s["semseg"])
    np.testing.assert_array_equal(back["edge"], s["edge"])
    assert np.abs(back["depth"] - s["depth"]).max() <= 0.001
    np.testing.assert_array_equal(back["depth"] == 0, s["depth"] == 0)
    assert np.abs(back["normals"] - s["normals"]).max() <= 1 / 127
    assert back["meta"] == s["meta"]


def test_object_straddling_the_camera_plane_is_still_cast():
    # Its bounding box projects to no finite rectangle, so the whole image is tested.
    R = camera_rotation(0.0, 0.0, 0.0)  # looking along +x; camera right is -y
    box = Prim(BOX, (0.5, 1.65, 1.0), (1.0, 0.15, 0.3), 0.0, CLS["objects"], 7, 0)
    hits = cast([box], (4.0, 4.0, 3.0), np.array([0.5, 2.0, 1.0]), R, 30, 40, ROOM_CLS)
    seen = hits.inst == 7
    assert seen.sum() > 10 and np.all(hits.depth[seen] > NEAR) and np.all(hits.depth[seen] <= 1.0 + 1e-5)


@pytest.mark.parametrize(
    "args, named", [(["--workers", "0"], "--workers"), (["--seed", "-1"], "--seed"), (["--height", "5000"], "--height")]
)
def test_the_cli_refuses_bad_options_before_building(tmp_path, args, named):
    from click.testing import CliRunner

    from pipelines.cli.main import cli

    out = CliRunner().invoke(cli, ["data", "build", "synthetic", "--out", str(tmp_path / "ds"), *args])
    assert out.exit_code == 2 and named in out.output, out.output
    assert not (tmp_path / "ds").exists()
