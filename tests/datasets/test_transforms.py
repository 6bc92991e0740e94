"""Joint RGB-D multi-task augmentation: hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    SampleError,
    Warp,
    apply_warp,
    build_transform,
    correct_normals,
    resize_matrix,
    rotation_matrix,
    to_tensors,
    translation_matrix,
)

N_RIGHT = np.array([0.6, 0.0, -0.8], np.float32)  # faces the camera (z forward) and points right


def make_sample(h: int = 6, w: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    depth = rng.uniform(1.0, 5.0, (h, w)).astype(np.float32)
    depth[1:3, 2:5] = 0.0  # a hole
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    normals[..., 2] = -np.abs(normals[..., 2]) - 0.1
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[0, 0] = 0.0  # missing
    return {
        "rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "depth": depth,
        "semseg": rng.choice(np.array([1, 3, 7, 255], np.uint8), (h, w)),
        "normals": normals,
        "edge": (rng.random((h, w)) > 0.7).astype(np.uint8),
        "parts": rng.integers(0, 4, (h, w)).astype(np.uint8),
        "sal": (rng.random((h, w)) > 0.5).astype(np.uint8) * 255,
        "meta": {"id": "s-0", "intrinsics": [10.0, 12.0, 2.0, 2.5]},
    }


def uniform_normals(h: int, w: int, n: np.ndarray) -> np.ndarray:
    return np.broadcast_to(n, (h, w, 3)).astype(np.float32)


def normals_from_depth(depth: np.ndarray) -> np.ndarray:
    """Orthographic surface normals facing the camera: n ∝ (dz/dx, dz/dy, -1)."""
    gy, gx = np.gradient(depth.astype(np.float64))
    n = np.stack([gx, gy, -np.ones_like(gx)], axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


# ---------------------------------------------------------------- flips and rotations
def test_hflip_mirrors_every_map_and_negates_normal_x_exactly():
    s = make_sample()
    out = build_transform({"hflip": 1.0}, train=True)(s, 0)
    for key in ("rgb", "depth", "semseg", "edge", "parts", "sal"):
        np.testing.assert_array_equal(out[key], s[key][:, ::-1], err_msg=key)
    expected = s["normals"][:, ::-1] * np.array([-1, 1, 1], np.float32)
    np.testing.assert_allclose(out["normals"], expected, atol=1e-6)
    assert np.all(out["normals"][0, -1] == 0)  # missing stays missing
    assert out["meta"]["intrinsics"] == pytest.approx([10.0, 12.0, 8 - 1 - 2.0, 2.5])
    assert s["meta"]["intrinsics"] == [10.0, 12.0, 2.0, 2.5]  # input untouched


def test_vflip_negates_normal_y():
    s = make_sample()
    out = build_transform({"hflip": 0.0, "vflip": 1.0}, train=True)(s, 0)
    np.testing.assert_array_equal(out["semseg"], s["semseg"][::-1])
    np.testing.assert_allclose(out["normals"], s["normals"][::-1] * np.array([1, -1, 1], np.float32), atol=1e-6)


def test_rotation_by_90_moves_pixels_ccw_and_turns_right_pointing_normals_up():
    s = make_sample(5, 5)
    s["normals"] = uniform_normals(5, 5, N_RIGHT)
    out = apply_warp(s, Warp(rotation_matrix(5, 5, 90.0), (5, 5)))
    for key in ("rgb", "depth", "semseg", "edge"):
        np.testing.assert_array_equal(out[key], np.rot90(s[key]), err_msg=key)  # np.rot90: CCW as displayed
    # A surface facing right, seen after the image turned 90° counter-clockwise, faces up (-y).
    np.testing.assert_allclose(out["normals"], uniform_normals(5, 5, np.array([0.0, -0.6, -0.8])), atol=1e-6)


def test_rotated_normals_agree_with_normals_of_the_rotated_depth():
    yy, xx = np.mgrid[0:7, 0:7].astype(np.float32)
    depth = (3.0 + 0.2 * xx + 0.05 * yy).astype(np.float32)  # a tilted plane
    s = {"depth": depth, "normals": normals_from_depth(depth).astype(np.float32)}
    for degrees in (90.0, -90.0, 180.0):
        out = apply_warp(s, Warp(rotation_matrix(7, 7, degrees), (7, 7)))
        np.testing.assert_allclose(out["normals"], normals_from_depth(out["depth"]), atol=1e-5, err_msg=str(degrees))


def test_arbitrary_angle_rotates_the_vector_and_pads_corners_as_missing():
    t = np.deg2rad(30.0)
    s = {"normals": uniform_normals(9, 9, N_RIGHT), "semseg": np.full((9, 9), 4, np.uint8)}
    out = apply_warp(s, Warp(rotation_matrix(9, 9, 30.0), (9, 9)))
    valid = out["semseg"] == 4
    assert out["semseg"][0, 0] == 255 and out["semseg"][4, 4] == 4
    expected = np.array([0.6 * np.cos(t), -0.6 * np.sin(t), -0.8])
    np.testing.assert_allclose(out["normals"][valid], np.broadcast_to(expected, (valid.sum(), 3)), atol=1e-6)
    np.testing.assert_array_equal(out["normals"][~valid], 0.0)


# ---------------------------------------------------------------- scaling and normals
def test_correct_normals_known_answers():
    n = np.array([[N_RIGHT, [0.0, 0.6, -0.8], [0.0, 0.0, 0.0]]], np.float32)
    iso = correct_normals(n, np.diag([2.5, 2.5]))
    np.testing.assert_allclose(iso, n, atol=1e-6)
    aniso = correct_normals(n, np.diag([2.0, 0.5]))  # det 1: n' ∝ (n_x / s_x, n_y / s_y, n_z)
    a = np.array([0.3, 0.0, -0.8]) / np.hypot(0.3, 0.8)
    b = np.array([0.0, 1.2, -0.8]) / np.hypot(1.2, 0.8)
    np.testing.assert_allclose(aniso, np.array([[a, b, [0, 0, 0]]]), atol=1e-6)


def test_anisotropic_resize_stretches_normals_and_isotropic_does_not():
    s = {"normals": uniform_normals(4, 8, N_RIGHT), "meta": {"id": "r", "intrinsics": [10.0, 12.0, 3.5, 1.5]}}
    out = build_transform({"resize": (4, 16)}, train=False)(s)  # s_x = 2, s_y = 1
    expected = np.array([0.6 / 2, 0.0, -0.8 / np.sqrt(2.0)])
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(out["normals"], uniform_normals(4, 16, expected), atol=1e-6)
    assert out["meta"]["intrinsics"] == pytest.approx([20.0, 12.0, 2 * 4.0 - 0.5, 1.5])
    same = build_transform({"resize": (8, 16)}, train=False)(s)
    np.testing.assert_allclose(same["normals"], uniform_normals(8, 16, N_RIGHT), atol=1e-6)


def test_intrinsics_follow_scale_then_crop():
    s = {"depth": np.ones((4, 8), np.float32), "meta": {"id": "k", "intrinsics": [10.0, 12.0, 3.5, 1.5]}}
    m = translation_matrix(-3, -1) @ resize_matrix(4, 8, 8, 16)
    out = apply_warp(s, Warp(m, (5, 6)))
    # Scale 2 about pixel corners: c' = 2 (c + 0.5) - 0.5, then shifted by the crop offset.
    assert out["meta"]["intrinsics"] == pytest.approx([20.0, 24.0, 7.5 - 3, 3.5 - 1])
    assert out["depth"].shape == (5, 6)


def test_zoom_draws_a_listed_factor_and_zooms_about_the_centre_keeping_the_size():
    # The official NYUD augmentation: ScaleNRotate(rots=[0], scales=[1.0, 1.2, 1.5]), the size unchanged.
    cols = np.tile(np.arange(9, dtype=np.uint8), (9, 1))  # label = column index
    s = {"semseg": cols, "meta": {"id": "z", "intrinsics": [10.0, 10.0, 4.0, 4.0]}}
    tf = build_transform({"hflip": 0.0, "zoom": [1.0, 2.0]}, train=True)
    seen = {}
    for seed in range(40):
        out = tf(s, seed)
        assert out["semseg"].shape == (9, 9)
        seen[int(out["semseg"][4, 0])] = out
    assert sorted(seen) == [0, 2]  # both factors drawn: column 0 reads column 0 (x1) or column 2 (x2)
    np.testing.assert_array_equal(seen[0]["semseg"], cols)
    # x2 about the centre (4, 4): output column x reads input column 4 + (x - 4) / 2.
    np.testing.assert_array_equal(seen[2]["semseg"][:, ::2], np.tile(np.array([2, 3, 4, 5, 6], np.uint8), (9, 1)))
    assert seen[2]["meta"]["intrinsics"] == pytest.approx([20.0, 20.0, 4.0, 4.0])
    assert build_transform({"zoom": [1.5]}, train=False)(s, 0)["semseg"].tolist() == cols.tolist()  # eval: off


@pytest.mark.parametrize("zoom, message", [([], "at least one factor"), ([1.0, 0.0], r"\[0.001, 1000\], got \[0.0\]")])
def test_zoom_config_errors(zoom, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        AugmentConfig(zoom=zoom)


# ---------------------------------------------------------------- invalid values and padding
@pytest.mark.parametrize("seed", range(6))
def test_depth_and_labels_are_never_interpolated(seed):
    s = make_sample(16, 20, seed)
    cfg = {"scale": (0.6, 1.7), "rotate": {"degrees": 35, "p": 1.0}, "crop": (14, 18)}
    out = build_transform(cfg, train=True)(s, seed)
    allowed_depth = set(np.unique(s["depth"]).tolist()) | {0.0}
    assert set(np.unique(out["depth"]).tolist()) <= allowed_depth
    for key in ("semseg", "parts"):
        assert set(np.unique(out[key]).tolist()) <= set(np.unique(s[key]).tolist()) | {255}, key
    assert set(np.unique(out["edge"]).tolist()) <= {0, 1}
    assert set(np.unique(out["sal"]).tolist()) <= {0, 255}
    norms = np.linalg.norm(out["normals"], axis=-1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


def test_hole_stays_exactly_zero_under_upscaling():
    depth = np.full((6, 6), 2.0, np.float32)
    depth[2:4, 2:4] = 0.0
    out = apply_warp({"depth": depth}, Warp(resize_matrix(6, 6, 12, 12), (12, 12)))
    expected = np.full((12, 12), 2.0, np.float32)
    expected[4:8, 4:8] = 0.0
    np.testing.assert_array_equal(out["depth"], expected)


@pytest.mark.parametrize("rgb_pad, rgb_value", [("zero", (0, 0, 0)), ("mean", (124, 116, 104))])
def test_padding_values_when_crop_exceeds_the_scaled_image(rgb_pad, rgb_value):
    s = make_sample(8, 8)
    s["semseg"][:] = 3
    cfg = {"hflip": 0.0, "scale": (0.5, 0.5), "crop": (6, 7), "rgb_pad": rgb_pad}
    out = build_transform(cfg, train=True)(s, 1)
    pad = out["semseg"] == 255
    assert out["semseg"].shape == (6, 7) and pad.sum() == 6 * 7 - 4 * 4
    assert np.all(out["depth"][pad] == 0) and np.all(out["normals"][pad] == 0)
    assert np.all(out["edge"][pad] == 0) and np.all(out["sal"][pad] == 0) and np.all(out["parts"][pad] == 255)
    assert np.all(out["rgb"][pad] == np.array(rgb_value, np.uint8))


def test_crop_shapes_and_dtypes():
    s = make_sample(10, 12)
    out = build_transform({"scale": (0.8, 1.3), "crop": (7, 9), "rotate": {"degrees": 10}}, train=True)(s, 5)
    assert set(out) == set(s)
    for key, value in s.items():
        if key != "meta":
            assert out[key].dtype == value.dtype, key
            assert out[key].shape[:2] == (7, 9) and out[key].shape[2:] == value.shape[2:], key


def test_area_downscale_of_rgb_does_not_alias():
    checker = ((np.indices((8, 8)).sum(0) % 2) * 255).astype(np.uint8)
    out = build_transform({"resize": (4, 4)}, train=False)({"rgb": np.dstack([checker] * 3)})
    assert np.all(np.abs(out["rgb"].astype(int) - 127) <= 1)


# ---------------------------------------------------------------- photometric and seeds
def test_color_jitter_changes_rgb_only():
    s = make_sample()
    out = build_transform({"hflip": 0.0, "color_jitter": {"brightness": 0.5, "p": 1.0}}, train=True)(s, 3)
    assert np.abs(out["rgb"].astype(int) - s["rgb"].astype(int)).mean() > 1.0
    for key in ("depth", "semseg", "normals", "edge", "parts", "sal"):
        np.testing.assert_array_equal(out[key], s[key], err_msg=key)
    assert build_transform({"color_jitter": {"p": 1.0}}, train=False)(s, 3)["rgb"] is not s["rgb"]
    np.testing.assert_array_equal(build_transform({"color_jitter": {"p": 1.0}}, train=False)(s, 3)["rgb"], s["rgb"])


def test_same_seed_same_output_different_seeds_differ():
    s = make_sample(12, 12)
    t = build_transform(
        {
            "scale": (0.7, 1.4),
            "crop": (10, 10),
            "rotate": {"degrees": 20},
            "color_jitter": {},
            "gaussian_noise": {"p": 1.0},
            "blur": {},
        },
        train=True,
    )
    a, b, c = t(s, 7), t(s, 7), t(s, 8)
    for key in ("rgb", "depth", "semseg", "normals"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["meta"] == b["meta"]
    assert not np.array_equal(a["rgb"], c["rgb"]) and not np.array_equal(a["depth"], c["depth"])


# ---------------------------------------------------------------- validation
def test_config_errors_name_the_field():
    with pytest.raises(pydantic.ValidationError, match="hflp"):
        AugmentConfig.model_validate({"hflp": 0.5})
    with pytest.raises(pydantic.ValidationError, match="set crop or resize"):
        build_transform({"scale": (0.5, 2.0)}, train=True)
    with pytest.raises(pydantic.ValidationError, match="scale must satisfy"):
        build_transform({"scale": (2.0, 0.5), "crop": (4, 4)}, train=True)
    with pytest.raises(pydantic.ValidationError, match="crop"):
        AugmentConfig(crop=(0, 4))
    with pytest.raises(pydantic.ValidationError, match="rotate.p"):
        AugmentConfig.model_validate({"rotate": {"degrees": 10, "p": 1.5}})
    assert AugmentConfig().hflip == 0.5 and AugmentConfig().crop is None


def test_bad_samples_name_member_and_id():
    s = make_sample()
    s["depth"] = s["depth"].astype(np.float64)
    with pytest.raises(SampleError, match=r"s-0.*'depth'.*float32"):
        build_transform({}, train=True)(s, 0)
    s = make_sample()
    s["semseg"] = s["semseg"][:-1]
    with pytest.raises(SampleError, match=r"s-0.*'semseg'"):
        build_transform({}, train=True)(s, 0)
    with pytest.raises(SampleError, match="unknown member 'foo'"):
        build_transform({}, train=True)({"foo": np.zeros((2, 2), np.uint8)}, 0)
    with pytest.raises(SampleError, match="rng_seed"):
        build_transform({}, train=True)(make_sample(), -1)


# ---------------------------------------------------------------- tensors
def test_to_tensors_values_and_dtypes():
    s = make_sample(4, 5)
    inputs, targets = to_tensors(s, ["semseg", "depth", "normals", "edge", "parts", "sal"], ["rgb", "depth"])
    rgb = inputs["rgb"]
    assert rgb.shape == (3, 4, 5) and rgb.dtype == torch.float32
    expected = (s["rgb"][1, 2, 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert rgb[0, 1, 2].item() == pytest.approx(expected, abs=1e-6)
    assert inputs["depth"].shape == (1, 4, 5) and torch.equal(inputs["depth"][0], torch.from_numpy(s["depth"]))
    assert targets["semseg"].dtype == torch.long and torch.equal(
        targets["semseg"], torch.from_numpy(s["semseg"]).long()
    )
    assert targets["parts"].dtype == torch.long
    assert targets["normals"].shape == (3, 4, 5) and targets["normals"][0, 1, 2] == pytest.approx(s["normals"][1, 2, 0])
    assert targets["edge"].shape == (1, 4, 5) and set(targets["edge"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(targets["edge"][0], torch.from_numpy(s["edge"]).float())
    assert torch.equal(targets["sal"][0], torch.from_numpy(s["sal"] == 255).float())


def test_to_tensors_missing_member_names_member_and_id():
    s = make_sample()
    del s["normals"]
    with pytest.raises(SampleError, match=r"sample s-0: member 'normals' is needed as a task"):
        to_tensors(s, ["semseg", "normals"], ["rgb"])
    with pytest.raises(SampleError, match="unknown task 'segm'"):
        to_tensors(s, ["segm"], ["rgb"])
