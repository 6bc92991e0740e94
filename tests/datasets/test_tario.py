import io
import tarfile

import pytest

from datasets.tario import TarFormatError, iter_tar

LONG = "d/" + "x" * 150 + ".rgb.png"  # needs ustar's prefix field, a pax path or a GNU long name


def _tar(members, fmt=tarfile.PAX_FORMAT, extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        if extra:
            extra(tf)
    return buf.getvalue()


MEMBERS = [
    ("k0.rgb.png", b"\x89PNG" + bytes(range(256)) * 3),
    ("k0.meta.json", b"{}"),
    ("k1.empty.png", b""),
    ("k1.block.png", b"b" * 512),
    ("k1.big.png", b"z" * 70001),
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_members_as_tarfile(fmt):
    data = _tar(MEMBERS, fmt)
    assert list(iter_tar(io.BytesIO(data))) == MEMBERS


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names(fmt):
    name = LONG if fmt != tarfile.USTAR_FORMAT else "p" * 120 + "/k.rgb.png"  # ustar: prefix + name
    data = _tar([(name, b"abc"), ("short.rgb.png", b"d")], fmt)
    assert list(iter_tar(io.BytesIO(data))) == [(name, b"abc"), ("short.rgb.png", b"d")]


def test_pax_unicode_path_and_global_header():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "g"}) as tf:
        ti = tarfile.TarInfo("sämple.rgb.png")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"ok"))
    assert list(iter_tar(io.BytesIO(buf.getvalue()))) == [("sämple.rgb.png", b"ok")]


def test_directories_and_links_are_skipped():
    def extra(tf):
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        s = tarfile.TarInfo("link.png")
        s.type, s.linkname = tarfile.SYMTYPE, "k0.rgb.png"
        tf.addfile(s)

    data = _tar(MEMBERS[:1], extra=extra)
    assert list(iter_tar(io.BytesIO(data))) == MEMBERS[:1]


def test_truncated_member_is_an_error():
    data = _tar(MEMBERS)
    with pytest.raises(TarFormatError, match="cut short"):
        list(iter_tar(io.BytesIO(data[: 512 + 100])))


def test_missing_end_marker_is_an_error():
    data = _tar(MEMBERS[:1])
    header_and_data = 512 + 1024  # 772 bytes of data padded to two blocks
    with pytest.raises(TarFormatError, match="end-of-archive marker"):
        list(iter_tar(io.BytesIO(data[:header_and_data])))


def test_corrupt_header_and_non_tar():
    data = bytearray(_tar(MEMBERS))
    data[10] ^= 0x20  # a byte of the first name
    with pytest.raises(TarFormatError, match="header at byte 0: checksum mismatch"):
        list(iter_tar(io.BytesIO(bytes(data))))
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_tar(io.BytesIO(b"PK\x03\x04" + bytes(1020))))
    with pytest.raises(TarFormatError, match="empty file"):
        list(iter_tar(io.BytesIO(b"")))


def test_bad_size_field_names_its_offset():
    data = bytearray(_tar(MEMBERS))
    data[124:136] = b"0000000z777\0"
    chk = sum(data[:148]) + sum(data[156:512]) + 256
    data[148:156] = b"%06o\0 " % chk
    with pytest.raises(TarFormatError, match=r"header at byte 0: size field .* not an octal number"):
        list(iter_tar(io.BytesIO(bytes(data))))


def test_signed_checksum_of_old_writers_is_accepted():
    data = bytearray(_tar([("k.rgb.png", b"x")], tarfile.USTAR_FORMAT))
    data[300] = 0xE9  # a byte >= 128 in an unused field, then the checksum as a signed-char writer sums it
    signed = sum(b - 256 if b >= 128 else b for b in data[:148] + data[156:512]) + 256
    data[148:156] = b"%06o\0 " % signed
    assert list(iter_tar(io.BytesIO(bytes(data)))) == [("k.rgb.png", b"x")]
    data[148:156] = b"%06o\0 " % (signed + 1)
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_tar(io.BytesIO(bytes(data))))


def _forge_size(data: bytearray, field: bytes) -> bytes:
    data[124:136] = field
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + sum(data[156:512]) + 256)
    return bytes(data)


class _Stream:
    """A stream of unknown length (no file descriptor, not seekable)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(n)


@pytest.mark.parametrize(
    "field",
    [
        b"77777777777\0",  # 8 GiB in octal
        b"\x80" + (2**86).to_bytes(11, "big"),  # GNU base-256: beyond any index (OverflowError in read)
        b"%011o\0" % 70001,  # a little more than the file holds
    ],
)
def test_a_forged_size_is_refused_before_anything_is_allocated(tmp_path, field):
    data = _forge_size(bytearray(_tar(MEMBERS[:1], tarfile.USTAR_FORMAT)), field)
    path = tmp_path / "forged.tar"
    path.write_bytes(data)
    with (
        open(path, "rb") as f,
        pytest.raises(TarFormatError, match=r"member at byte 0 is cut short: its header declares"),
    ):
        list(iter_tar(f))
    with pytest.raises(TarFormatError, match=r"its header declares \d+ bytes, the file holds \d+ after the header"):
        list(iter_tar(io.BytesIO(data)))
    # A stream of unknown length is read in bounded chunks: it ends, and says so.
    with pytest.raises(TarFormatError, match="cut short"):
        list(iter_tar(_Stream(data)))


def test_a_stream_of_unknown_length_reads_the_same_members():
    data = _tar(MEMBERS, tarfile.PAX_FORMAT)
    assert list(iter_tar(_Stream(data))) == MEMBERS


def test_names_that_are_not_utf8_do_not_raise():
    data = bytearray(_tar([("k.rgb.png", b"x")], tarfile.USTAR_FORMAT))
    data[0:1] = b"\xff"  # k.rgb.png -> \xff.rgb.png
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + sum(data[156:512]) + 256)
    [(name, payload)] = list(iter_tar(io.BytesIO(bytes(data))))
    assert name.encode("utf-8", "surrogateescape") == b"\xff.rgb.png" and payload == b"x"
