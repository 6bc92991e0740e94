import io
import re
import struct
import zlib

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


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunks(png):
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _seal(chunks):
    """A PNG from chunks, each with its correct CRC."""
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def test_every_single_bit_flip_of_a_png_member_is_refused(toy_source):
    members = encode_sample(toy_source.load("val", "val0002"))
    for name in ("rgb.png", "depth.png"):
        png = members[name]
        for i in range(len(png)):
            for bit in range(8):
                flipped = bytearray(png)
                flipped[i] ^= 1 << bit
                with pytest.raises(ShardFormatError, match=rf"member '{name}'"):
                    decode_member(name, bytes(flipped), "w")


def test_a_flipped_bit_in_image_data_is_caught_by_the_crc_and_would_otherwise_change_pixels():
    gradient = (np.add.outer(np.arange(24), np.arange(32))[..., None] * [1, 2, 3] % 256).astype(np.uint8)
    png = _png(gradient)
    start = png.index(b"IDAT") + 4
    silently_different = 0
    for i in range(start, len(png) - 16):  # the image data (its CRC and IEND follow)
        for bit in range(8):
            flipped = bytearray(png)
            flipped[i] ^= 1 << bit
            with pytest.raises(ShardFormatError, match=r"w: member 'rgb.png': CRC mismatch in its IDAT chunk"):
                decode_member("rgb.png", bytes(flipped), "w")
            try:  # without the CRC check: zlib and Pillow do not check it
                pixels = decode_member("rgb.png", bytes(flipped), "w", verify=False)
            except ShardFormatError:
                continue
            silently_different += not np.array_equal(pixels, gradient)
    assert silently_different > 0


@pytest.mark.parametrize(
    ("name", "arr", "mode"),
    [
        ("rgb.png", np.full((4, 4), 40000, np.uint16), "I;16 (16-bit)"),
        ("rgb.png", np.full((4, 4), 7, np.uint8), "L (8-bit)"),
        ("rgb.png", np.zeros((4, 4, 4), np.uint8), "RGBA (8-bit)"),
        ("normals.png", np.zeros((4, 4), np.uint8), "L (8-bit)"),
        ("semseg.png", np.zeros((4, 4, 3), np.uint8), "RGB (8-bit)"),
        ("edge.png", np.zeros((4, 4), np.uint16), "I;16 (16-bit)"),
        ("depth.png", np.zeros((4, 4, 3), np.uint8), "RGB (8-bit)"),
    ],
)
def test_a_png_of_another_pixel_format_is_refused_naming_member_and_mode(name, arr, mode):
    base = name.split(".")[0]
    with pytest.raises(ShardFormatError, match=rf"k: member '{name}' is {re.escape(mode)}; {base} must be"):
        decode_member(name, _png(arr), "k")


def test_a_palette_rgb_png_is_refused():
    img = Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert("P")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with pytest.raises(ShardFormatError, match=r"member 'rgb.png' is P \(8-bit\); rgb must be 8-bit RGB"):
        decode_member("rgb.png", buf.getvalue(), "k")


def test_a_header_that_declares_more_pixels_than_the_data_can_hold_is_refused_before_decoding():
    chunks = _chunks(_png(np.zeros((4, 4), np.uint8)))
    width, height, *rest = struct.unpack(">IIBBBBB", chunks[0][1])
    chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, *rest))  # 3.6 GB of pixels from a few bytes
    with pytest.raises(ShardFormatError, match=r"declares 60000x60000 \(3600060000 bytes of pixel data\), more than"):
        decode_member("semseg.png", _seal(chunks), "k")


@pytest.mark.parametrize(
    ("chunks_of", "match"),
    [
        (lambda c: c[:-1], "cut short"),  # no IEND
        (lambda c: [c[1], c[0], *c[2:]], "not a 13-byte IHDR"),
        (lambda c: [*c[:-1], (b"ABCD", b"x"), c[-1]], "unknown critical chunk"),
        (lambda c: [*c, (b"tEXt", b"a\0b")], "after its IEND chunk"),
    ],
)
def test_png_structure_is_checked(chunks_of, match):
    png = _seal(chunks_of(_chunks(_png(np.zeros((4, 4), np.uint8)))))
    with pytest.raises(ShardFormatError, match=match):
        decode_member("semseg.png", png, "k")


def test_an_ancillary_chunk_with_a_good_crc_is_accepted():
    chunks = _chunks(_png(np.full((4, 4), 3, np.uint8)))
    png = _seal([chunks[0], (b"tEXt", b"comment\0fine"), *chunks[1:]])
    np.testing.assert_array_equal(decode_member("semseg.png", png), np.full((4, 4), 3, np.uint8))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"id": "\xff"}', "is not valid JSON"),  # not UTF-8: was a bare UnicodeDecodeError
        (b"[" * 100000 + b"]" * 100000, "is not valid JSON"),  # nesting too deep
        (b"1" * 5000, "is not valid JSON"),  # an integer too long to convert
        (b"[1, 2]", "must hold a JSON object, got list"),
        (b"null", "must hold a JSON object, got NoneType"),
    ],
)
def test_a_bad_meta_json_is_a_shard_format_error(data, match):
    with pytest.raises(ShardFormatError, match=rf"k: member 'meta.json' {match}"):
        decode_member("meta.json", data, "k")
