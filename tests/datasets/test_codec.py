import io

import numpy as np
import pytest
from PIL import Image

from datasets.codec import ShardFormatError, decode_member, decode_normals, decode_sample, encode_normals, encode_sample


def test_round_trip_exact_where_the_format_is_exact(toy_source):
    s = toy_source.load("train", "train0003")
    back = decode_sample(encode_sample(s), "t")
    np.testing.assert_array_equal(back["rgb"], s["rgb"])
    np.testing.assert_array_equal(back["semseg"], s["semseg"])
    np.testing.assert_array_equal(back["edge"], s["edge"])
    assert np.abs(back["depth"] - s["depth"]).max() <= 0.0005 + 1e-6
    assert (back["depth"] == 0).sum() == (s["depth"] == 0).sum() == 3
    assert np.abs(back["normals"] - s["normals"]).max() < 1 / 127 * 2
    assert back["meta"] == s["meta"]


def test_depth_png_is_16_bit_millimetres():
    depth = np.array([[1.0, 0.0], [12.345, 65.535]], np.float32)
    png = encode_sample({"depth": depth})["depth.png"]
    img = Image.open(io.BytesIO(png))
    assert img.mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(img), [[1000, 0], [12345, 65535]])
    np.testing.assert_allclose(decode_member("depth.png", png), depth, atol=1e-6)


def test_normals_encoding_follows_contract():
    n = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0]]], np.float32)
    c = encode_normals(n)
    np.testing.assert_array_equal(c[0], [[255, 128, 128], [128, 128, 0], [0, 0, 0]])
    back = decode_normals(c)
    np.testing.assert_allclose(back[0, 0], [1, 0, 0], atol=0.01)
    np.testing.assert_array_equal(back[0, 2], [0, 0, 0])


def test_8bit_depth_is_refused_with_member_name():
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(buf, format="PNG")
    with pytest.raises(ShardFormatError, match=r"shard-000001.tar key 'k'.*depth.png.*8-bit"):
        decode_member("depth.png", buf.getvalue(), "shard-000001.tar key 'k'")


@pytest.mark.parametrize("name", ["x.pyd", "x.pickle", "state.pth", "a.npy"])
def test_pickle_capable_members_are_refused(name):
    with pytest.raises(ShardFormatError, match="pickle"):
        decode_member(name, b"\x80\x04K\x01.", "w")


def test_size_mismatch_names_member(toy_source):
    s = toy_source.load("val", "val0000")
    members = encode_sample(s)
    members["semseg.png"] = encode_sample({"semseg": np.zeros((3, 3), np.uint8)})["semseg.png"]
    with pytest.raises(ShardFormatError, match="semseg"):
        decode_sample(members, "where")


def test_encoding_is_deterministic(toy_source):
    s = toy_source.load("train", "train0001")
    assert encode_sample(s) == encode_sample(toy_source.load("train", "train0001"))
