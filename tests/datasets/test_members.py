"""Shard members beyond the built-in ones: a registered member is stored, read, augmented and turned
into a target tensor the way its kind says (datasets.codec.Member)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.codec import (
    MEMBERS,
    ShardFormatError,
    decode_member,
    decode_sample,
    encode_sample,
    register_member,
)
from datasets.sources.base import SourceError
from datasets.sources.folder import FolderSource
from datasets.transforms import SampleError, Warp, apply_warp, build_transform, to_tensors


@pytest.fixture
def members():
    """``add(name, kind, **kw)`` registers a member for this test only."""
    added: list[str] = []

    def add(name: str, kind: str, **kw):
        added.append(name)
        return register_member(name, kind, **kw)

    yield add
    for name in added:
        MEMBERS.pop(name, None)


def _png_mode(data: bytes) -> str:
    return Image.open(io.BytesIO(data)).mode


def test_built_in_members_keep_their_kinds():
    kinds = {name: m.kind for name, m in MEMBERS.items()}
    assert kinds == {
        "rgb": "rgb",
        "depth": "scalar16",
        "semseg": "labels",
        "normals": "normals",
        "edge": "binary",
        "parts": "labels",
        "sal": "gray",
    }
    assert MEMBERS["depth"].scale == 0.001 and MEMBERS["semseg"].pad == 255 and MEMBERS["edge"].pad == 0


def test_each_kind_round_trips_through_a_png(members):
    members("elevation", "scalar16", scale=0.01, unit="centimetres")
    members("instances", "labels")
    members("occlusion", "binary")
    members("confidence", "gray")
    members("albedo", "rgb")
    members("flow_normals", "normals")
    rng = np.random.default_rng(0)
    elevation = np.array([[0.0, 1.234], [655.35, 700.0]], np.float32)  # 700 m is beyond 16 bits: missing
    n = rng.normal(size=(2, 2, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    sample = {
        "elevation": elevation,
        "instances": np.array([[0, 7], [255, 3]], np.uint8),
        "occlusion": np.array([[0, 1], [1, 0]], np.uint8),
        "confidence": np.array([[0, 128], [255, 9]], np.uint8),
        "albedo": rng.integers(0, 256, (2, 2, 3), dtype=np.uint8),
        "flow_normals": n,
    }
    encoded = encode_sample(sample)
    assert {_png_mode(encoded[f"{k}.png"]) for k in ("instances", "occlusion", "confidence")} == {"L"}
    assert _png_mode(encoded["elevation.png"]).startswith("I;16") and _png_mode(encoded["albedo.png"]) == "RGB"
    assert np.asarray(Image.open(io.BytesIO(encoded["elevation.png"]))).tolist() == [[0, 123], [65535, 0]]
    assert np.asarray(Image.open(io.BytesIO(encoded["occlusion.png"]))).tolist() == [[0, 255], [255, 0]]
    back = decode_sample(encoded, "w")
    np.testing.assert_allclose(back["elevation"], [[0.0, 1.23], [655.35, 0.0]], atol=1e-4)
    assert back["elevation"].dtype == np.float32
    for key in ("instances", "occlusion", "confidence", "albedo"):
        np.testing.assert_array_equal(back[key], sample[key])
    np.testing.assert_allclose(back["flow_normals"], n, atol=2 / 127)


def test_a_scalar16_member_must_be_16_bit_and_says_in_what(members):
    members("elevation", "scalar16", scale=0.01, unit="centimetres")
    buf = io.BytesIO()
    Image.fromarray(np.full((2, 2), 9, np.uint8)).save(buf, format="PNG")
    with pytest.raises(
        ShardFormatError,
        match=r"shard-000003.tar key 'k': member 'elevation.png' is L \(8-bit\); "
        r"elevation must be a 16-bit PNG in centimetres",
    ):
        decode_member("elevation.png", buf.getvalue(), "shard-000003.tar key 'k'")


def test_unknown_members_point_at_register_member():
    with pytest.raises(ShardFormatError, match=r"unknown sample key 'elevation'.*register_member"):
        encode_sample({"elevation": np.zeros((2, 2), np.float32)})
    with pytest.raises(
        ShardFormatError,
        match=r"w: unknown member 'elevation.png' \(a module that registers it "
        r".*pass --plugin MODULE or list it under plugins\)",
    ):
        decode_member("elevation.png", b"", "w")


def test_a_reader_decodes_only_the_members_it_needs(toy_source):
    members = encode_sample(toy_source.load("train", "train0001"))
    members["elevation.png"] = b"not even a png"  # a member of a plugin this process has not imported
    with pytest.raises(ShardFormatError, match="unknown member 'elevation.png'"):
        decode_sample(members, "w")
    sample = decode_sample(members, "w", only=["rgb", "semseg"])
    assert set(sample) == {"rgb", "semseg", "meta"}
    # Without rgb among the needed maps, the needed maps must still agree in size.
    small = encode_sample({"depth": np.ones((3, 3), np.float32)})["depth.png"]
    with pytest.raises(ShardFormatError, match=r"w: member 'semseg' is \(12, 16\), depth is \(3, 3\)"):
        decode_sample({**members, "depth.png": small}, "w", only=["depth", "semseg"])
    members["x.pyd"] = b"\x80\x04K\x01."
    with pytest.raises(ShardFormatError, match="pickle"):  # refused even when not needed
        decode_sample(members, "w", only=["rgb"])


@pytest.mark.parametrize(
    "args, match",
    [
        (("rgb", "rgb"), "already registered"),
        (("meta", "gray"), "identifier other than 'meta'"),
        (("a.b", "gray"), "identifier"),
        (("x", "float"), "unknown kind 'float'; kinds: rgb, scalar16"),
        (("x", "scalar16"), "needs a finite scale > 0"),
        (("x", "scalar16", 0.0), "needs a finite scale > 0"),
        (("x", "labels", 0.5), "scale is only for scalar16"),
        (("x", "scalar16", float("inf")), "needs a finite scale > 0"),
        (("x", "scalar16", 1e-60), "needs a finite scale > 0"),  # 0 in float32
        (("images", "rgb"), "other than 'meta', 'images', 'splits'"),
        (("splits", "labels"), "other than"),
    ],
)
def test_bad_registrations_are_refused(args, match):
    before = dict(MEMBERS)
    with pytest.raises(ValueError, match=match):
        register_member(*args)
    assert MEMBERS == before


def test_a_registered_member_is_warped_nearest_and_padded_by_kind(members):
    members("elevation", "scalar16", scale=0.001)
    members("instances", "labels")
    members("confidence", "gray")
    members("albedo", "rgb")
    elevation = np.arange(16, dtype=np.float32).reshape(4, 4) / 4 + 0.25
    albedo = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5 + 1
    instances = np.arange(16, dtype=np.uint8).reshape(4, 4)
    confidence = np.full((4, 4), 200, np.uint8)
    sample = {
        "elevation": elevation,
        "instances": instances,
        "confidence": confidence,
        "albedo": albedo,
        "meta": {"id": "s"},
    }
    # Mirror, then shift right by one pixel into a 4×5 canvas: column 0 is padding.
    m = np.array([[-1.0, 0.0, 4.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = apply_warp(sample, Warp(matrix=m, size=(4, 5)))
    np.testing.assert_array_equal(out["elevation"][:, 1:], elevation[:, ::-1])
    np.testing.assert_array_equal(out["instances"][:, 1:], instances[:, ::-1])
    assert np.all(out["elevation"][:, 0] == 0) and np.all(out["instances"][:, 0] == 255)
    assert np.all(out["confidence"][:, 0] == 0) and np.all(out["confidence"][:, 1:] == 200)
    np.testing.assert_array_equal(out["albedo"][:, 1:], albedo[:, ::-1])  # an rgb-kind target: nearest, exact
    assert np.all(out["albedo"][:, 0] == 0)
    # Random geometry never invents a value: every output is an input value or the padding.
    cfg = {"scale": (0.7, 1.6), "rotate": {"degrees": 30}, "crop": (5, 5)}
    for seed in range(5):
        o = build_transform(cfg, train=True)(sample, seed)
        assert set(np.unique(o["elevation"])) <= set(np.unique(elevation)) | {0.0}
        assert set(np.unique(o["instances"])) <= set(range(16)) | {255}


def test_to_tensors_turns_each_kind_into_its_target(members):
    members("elevation", "scalar16", scale=0.001)
    members("instances", "labels")
    members("occlusion", "binary")
    members("confidence", "gray")
    members("albedo", "rgb")
    sample = {
        "rgb": np.zeros((2, 3, 3), np.uint8),
        "elevation": np.full((2, 3), 1.5, np.float32),
        "instances": np.full((2, 3), 4, np.uint8),
        "occlusion": np.eye(2, 3, dtype=np.uint8),
        "confidence": np.full((2, 3), 51, np.uint8),
        "albedo": np.full((2, 3, 3), 255, np.uint8),
        "meta": {"id": "s"},
    }
    tasks = ["elevation", "instances", "occlusion", "confidence", "albedo"]
    _, t = to_tensors(sample, tasks, ["rgb"])
    assert t["elevation"].shape == (1, 2, 3) and torch.all(t["elevation"] == 1.5)
    assert t["instances"].dtype == torch.long and t["instances"].shape == (2, 3) and torch.all(t["instances"] == 4)
    assert t["occlusion"].dtype == torch.float32 and t["occlusion"][0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert torch.allclose(t["confidence"], torch.full((1, 2, 3), 0.2))
    assert t["albedo"].shape == (3, 2, 3) and torch.all(t["albedo"] == 1.0)
    with pytest.raises(SampleError, match=r"unknown task 'rgb'"):
        to_tensors(sample, ["rgb"], ["rgb"])


def test_folder_source_reads_a_registered_member_by_its_kind(tmp_path, members):
    members("elevation", "scalar16", scale=0.001, unit="millimetres")
    members("occlusion", "binary")
    (tmp_path / "images").mkdir()
    (tmp_path / "elevation").mkdir()
    (tmp_path / "occlusion").mkdir()
    rgb = np.zeros((3, 4, 3), np.uint8)
    for stem in ("a", "b"):
        Image.fromarray(rgb).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray((np.arange(12).reshape(3, 4) * 3).astype(np.uint8)).save(tmp_path / "occlusion" / f"{stem}.png")
    np.save(tmp_path / "elevation" / "a.npy", np.array([[1.5, np.nan, -2.0, 0.25]] * 3, np.float32))
    Image.fromarray(np.full((3, 4), 2500, np.uint16)).save(tmp_path / "elevation" / "b.png")
    src = FolderSource(root=str(tmp_path), val_fraction=0.0)
    assert src.members == ["rgb", "elevation", "occlusion"]
    got = {src.load("train", k)["meta"]["stem"]: src.load("train", k) for k in src.keys("train")}
    np.testing.assert_allclose(got["a"]["elevation"][0], [1.5, 0.0, 0.0, 0.25])  # NaN, negative: missing
    np.testing.assert_allclose(got["b"]["elevation"], np.full((3, 4), 2.5), atol=1e-6)
    assert got["a"]["occlusion"].tolist()[0] == [0, 1, 1, 1]
    assert decode_sample(encode_sample(got["b"]), "w")["elevation"].max() == pytest.approx(2.5)

    # Written to shards, the member stays readable for a config that does not use it, once unregistered.
    from datasets.loader import ShardStream, make_loader
    from datasets.writer import write_dataset

    write_dataset(src, tmp_path / "shards", shard_size=2, progress=False)
    MEMBERS.pop("elevation")
    stream = ShardStream(
        tmp_path / "shards", "train", tasks=["occlusion"], modalities=["rgb"], batch_size=2, train=False, num_workers=0
    )
    (batch,) = list(make_loader(stream))
    assert batch["targets"]["occlusion"].shape == (2, 1, 3, 4) and "elevation" not in batch["targets"]
    members("elevation", "scalar16", scale=0.001)

    Image.fromarray(np.full((3, 4), 7, np.uint8)).save(tmp_path / "elevation" / "b.png")
    with pytest.raises(SourceError, match=r"elevation/b.png: elevation PNG must be 16-bit single-channel"):
        FolderSource(root=str(tmp_path), val_fraction=0.0).load("train", "b")
