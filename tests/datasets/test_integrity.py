"""Shards against their manifest: sha256, sizes, sample counts, keys; the manifest's own structure;
what the loader, `data verify` and `data inspect` do with each (docs/data-format.md, "Integrity")."""

import hashlib
import io
import json
import logging
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from datasets.loader import ShardStream
from datasets.manifest import ManifestError, load_manifest
from datasets.shards import ShardReadError, iter_shard, verify
from datasets.writer import write_dataset
from pipelines.cli.main import cli
from tests.conftest import ToySource
from tests.datasets.shard_edits import edit_manifest, flip_meta_bit, reseal, rewrite_member, rewrite_members

TASKS = ["semseg", "depth", "normals", "edge"]


def _stream(root, split="val", **kw):
    args = dict(tasks=TASKS, modalities=["rgb", "depth"], batch_size=1, train=False, shuffle_buffer=4)
    args.update(kw)
    return ShardStream(root, split, **args)


def _read(stream):
    """The ids a stream yields, and the error that stopped it (or None)."""
    ids = []
    try:
        for item in stream:
            ids.append(item["id"])
    except ShardReadError as e:
        return ids, e
    return ids, None


def test_a_changed_meta_json_fails_its_shard_by_sha256_before_the_shards_last_sample(toy_dataset):
    shard = toy_dataset / "val/shard-000000.tar"
    expected = load_manifest(toy_dataset)["splits"]["val"]["shards"][0]["sha256"]
    flip_meta_bit(toy_dataset, "val/shard-000000.tar", 0)
    actual = hashlib.sha256(shard.read_bytes()).hexdigest()
    ids, error = _read(_stream(toy_dataset))
    assert ids == ["val/val0000", "val/val0001"]  # val0002, the shard's last sample, is never handed out
    assert str(error) == (
        f"{shard}: sha256 {actual} does not match the manifest's {expected}: its bytes changed since it "
        "was written (bit rot, an incomplete copy or an edit)"
    )


def test_skip_drops_the_failed_shard_and_says_how_many_of_its_samples_were_used(toy_dataset, caplog):
    flip_meta_bit(toy_dataset, "val/shard-000000.tar", 0)
    s = _stream(toy_dataset, errors="skip")
    with caplog.at_level(logging.WARNING, logger="datasets.loader"):
        ids, error = _read(s)
    assert error is None and ids == ["val/val0000", "val/val0001", "val/val0003", "val/val0004", "val/val0005"]
    assert (s.skipped, s.bad_shards, s.used_from_bad_shards) == (1, 1, 2)
    assert "[shard skipped: 2 of its samples were already used, 0 in the shuffle buffer dropped]" in caplog.text
    assert "epoch 0 of val, rank 0, loader worker 0 (errors=skip): 1 skip(s); 1 shard(s) failed" in caplog.text
    assert "2 of their samples had been used before" in caplog.text


@pytest.mark.parametrize("buffer", [0, 4])
def test_in_training_the_samples_of_a_failed_shard_used_are_counted_and_those_buffered_dropped(
    toy_dataset, buffer, caplog
):
    flip_meta_bit(toy_dataset, "train/shard-000000.tar", 1)
    bad = {"train/train0000", "train/train0001", "train/train0002"}
    s = _stream(toy_dataset, "train", train=True, batch_size=2, errors="skip", shuffle_buffer=buffer, seed=1)
    with caplog.at_level(logging.WARNING, logger="datasets.loader"):
        ids, error = _read(s)
    assert error is None and len(ids) == 10  # the exact batch count holds
    assert s.bad_shards >= 1 and s.skipped == s.bad_shards
    # Every sample of the bad shard that was handed out is counted; none came out of the buffer later.
    assert s.used_from_bad_shards == sum(i in bad for i in ids)
    if buffer == 0:
        assert s.used_from_bad_shards > 0  # read in order: the shard's first samples were used
    else:  # its samples waiting in the shuffle buffer when the shard failed were never used
        assert re.search(r"[1-9] in the shuffle buffer dropped", caplog.text)
    with pytest.raises(ShardReadError, match="train/shard-000000.tar: sha256"):
        _read_raising(_stream(toy_dataset, "train", train=True, batch_size=2, shuffle_buffer=buffer, seed=1))


def _read_raising(stream):
    return [item["id"] for item in stream]


def test_a_training_pass_that_stops_inside_a_shard_still_checks_the_rest_of_it(tmp_path):
    root = tmp_path / "ds"
    write_dataset(ToySource(num_train=11, num_val=2), root, shard_size=3, progress=False)
    s = _stream(root, "train", train=True, batch_size=2, shuffle_buffer=0)
    path, entry = s._train_shards(0, 0)[-1]  # the last shard read; the quota (10 of 11) ends inside it
    flip_meta_bit(root, path.relative_to(root).as_posix(), entry["num_samples"] - 1)  # its last, unread sample
    ids, error = _read(_stream(root, "train", train=True, batch_size=2, shuffle_buffer=0))
    assert len(ids) == 10 and error is not None and f"{path}: sha256" in str(error)


def test_a_sample_count_that_disagrees_with_the_manifest_is_an_error(toy_dataset):
    def two(m):
        m["splits"]["val"]["shards"][0]["num_samples"] = 2
        m["splits"]["val"]["num_samples"] = 5

    edit_manifest(toy_dataset, two)
    ids, error = _read(_stream(toy_dataset))
    assert ids == ["val/val0000", "val/val0001"]
    assert str(error).endswith("val/shard-000000.tar: holds 3 samples, the manifest says 2")
    result = verify(toy_dataset)
    assert [p for p in result.problems if "holds" in p] == [
        f"{toy_dataset}/val/shard-000000.tar: holds 3 samples, the manifest says 2"
    ]


def test_a_repeated_key_is_refused(toy_dataset):
    rewrite_members(
        toy_dataset, "val/shard-000000.tar", lambda ms: ms + [m for m in ms if m[0].name.startswith("val0000.")]
    )
    with pytest.raises(ShardReadError, match=r"val/shard-000000.tar: key 'val0000' appears twice"):
        _read_raising(_stream(toy_dataset))


def test_data_verify_finds_a_key_repeated_across_shards(toy_dataset):
    shutil.copy(toy_dataset / "val/shard-000000.tar", toy_dataset / "val/shard-000001.tar")
    reseal(toy_dataset, "val/shard-000001.tar")
    out = CliRunner().invoke(cli, ["data", "verify", str(toy_dataset), "--json"])
    problems = json.loads(out.stdout)["problems"]
    assert out.exit_code == 1
    assert problems == [
        f"val/shard-000001.tar: key 'val000{i}' is also in val/shard-000000.tar (split 'val')" for i in range(3)
    ]


@pytest.mark.parametrize("name", ["val 0000.rgb.png", "../val0000.rgb.png", "val0000"])
def test_a_member_name_that_is_not_key_dot_member_is_refused(toy_dataset, name):
    def rename(ms):
        ms[0][0].name = name
        return ms

    rewrite_members(toy_dataset, "val/shard-000000.tar", rename)
    with pytest.raises(ShardReadError, match="val/shard-000000.tar: tar member .*(does not match|no extension)"):
        list(iter_shard(toy_dataset / "val/shard-000000.tar"))


def test_a_shard_of_another_size_is_refused_before_any_sample_is_read(toy_dataset):
    shard = toy_dataset / "val/shard-000000.tar"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes() + bytes(512))
    s = _stream(toy_dataset, errors="skip")
    ids, _ = _read(s)
    assert ids == ["val/val0003", "val/val0004", "val/val0005"] and s.used_from_bad_shards == 0
    with pytest.raises(ShardReadError, match=rf"shard-000000.tar: {size + 512} bytes, the manifest says {size} \("):
        _read_raising(_stream(toy_dataset))


def test_a_16_bit_rgb_png_in_a_shard_is_refused_naming_member_and_mode(toy_dataset):
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 16), 60000, np.uint16)).save(buf, format="PNG")
    rewrite_member(toy_dataset, "val/shard-000001.tar", "val0004", "rgb.png", buf.getvalue())
    with pytest.raises(
        ShardReadError,
        match=r"shard-000001.tar key 'val0004': member 'rgb.png' is I;16 \(16-bit\); rgb must be 8-bit RGB",
    ):
        _read_raising(_stream(toy_dataset))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(splits=[]), "field splits must be an object {split: {num_samples, shards}}, got []"),
        (
            lambda m: m["splits"]["val"].update(num_samples="3"),
            'field splits.val.num_samples must be an integer >= 0, got "3"',
        ),
        (
            lambda m: m["splits"]["val"]["shards"][1].update(bytes=-1),
            "field splits.val.shards[1].bytes must be an integer >= 0, got -1",
        ),
        (
            lambda m: m["splits"]["val"]["shards"][0].update(sha256="XYZ"),
            'field splits.val.shards[0].sha256 must be 64 lowercase hex digits, got "XYZ"',
        ),
        (lambda m: m.update(classes="abc"), 'field classes must be a list of strings, got "abc"'),
        (lambda m: m.update(ignore_index=300), "field ignore_index must be an integer in 0..255, got 300"),
        (lambda m: m.update(schema_version=True), "schema_version True is not supported (expected 1)"),
        (
            lambda m: m["splits"]["val"].update(num_samples=8),
            "field splits.val.num_samples must be the sum of its shards' num_samples (6), got 8",
        ),
        (
            lambda m: m["splits"]["val"]["shards"].append(m["splits"]["train"]["shards"][0]),
            'field splits.val.shards[2].path is listed twice (also in splits.train.shards[0]), got "train/shard-000000.tar"',
        ),
        (
            lambda m: m["splits"]["val"]["shards"][0].update(path="../outside.tar"),
            "field splits.val.shards[0].path must stay inside the dataset directory (no '..', '.' or empty parts), "
            'got "../outside.tar"',
        ),
        (
            lambda m: m["splits"]["val"]["shards"][0].update(path="/tmp/outside.tar"),
            "field splits.val.shards[0].path must be a relative path inside the dataset directory",
        ),
    ],
)
def test_a_malformed_manifest_is_a_manifest_error_everywhere(toy_dataset, edit, message):
    edit_manifest(toy_dataset, edit)
    where = f"{toy_dataset / 'manifest.json'}: "
    with pytest.raises(ManifestError) as e:
        load_manifest(toy_dataset)
    assert str(e.value).startswith(where) and message in str(e.value)
    with pytest.raises(ManifestError, match="manifest.json: "):
        _stream(toy_dataset)
    for command in (["data", "verify"], ["data", "inspect"]):
        out = CliRunner().invoke(cli, [*command, str(toy_dataset), "--json"])
        assert out.exit_code == 2 and message in json.loads(out.stdout)["error"], command


def test_a_shard_path_outside_the_dataset_is_never_opened(toy_dataset, tmp_path):
    outside = tmp_path / "outside.tar"
    shutil.copy(toy_dataset / "val/shard-000000.tar", outside)  # a valid shard, hash and all
    edit_manifest(toy_dataset, lambda m: m["splits"]["val"]["shards"][0].update(path=str(outside)))
    with pytest.raises(ManifestError, match="must be a relative path inside the dataset directory"):
        _stream(toy_dataset)


def test_a_manifest_that_is_not_utf8_or_not_an_object_is_a_manifest_error(toy_dataset):
    (toy_dataset / "manifest.json").write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ManifestError, match="manifest.json: not valid JSON"):
        load_manifest(toy_dataset)
    (toy_dataset / "manifest.json").write_text("[]")
    with pytest.raises(ManifestError, match="manifest.json: must hold a JSON object, got list"):
        load_manifest(toy_dataset)


def test_data_verify_exit_codes_and_one_pass_checks(toy_dataset):
    runner = CliRunner()
    out = runner.invoke(cli, ["data", "verify", str(toy_dataset), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout) == {"ok": True, "checked_shards": 6, "problems": []}
    # A tar whose manifest entry was updated to match it is still parsed: its structure is checked too.
    shard = toy_dataset / "train/shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0x01  # inside the first member's data: the tar is fine, the PNG's CRC is not (verify does not decode)
    data[100] ^= 0x01  # the first header's mode field: its checksum fails
    shard.write_bytes(bytes(data))
    reseal(toy_dataset, "train/shard-000001.tar")
    out = runner.invoke(cli, ["data", "verify", str(toy_dataset), "--json"])
    assert out.exit_code == 1
    [problem] = json.loads(out.stdout)["problems"]
    assert "train/shard-000001.tar: corrupt or truncated shard after key None" in problem and "checksum" in problem
    out = runner.invoke(cli, ["data", "verify", str(toy_dataset / "nothing-here")])
    assert out.exit_code == 2 and "no manifest" in out.output


def test_a_forged_member_size_in_a_shard_is_a_named_error_and_skip_skips_the_shard(toy_dataset):
    shard = toy_dataset / "val/shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[124:136] = b"\x80" + (2**86).to_bytes(11, "big")  # GNU base-256 size of the first member
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + sum(data[156:512]) + 256)
    shard.write_bytes(bytes(data))
    reseal(toy_dataset, "val/shard-000000.tar")
    with pytest.raises(
        ShardReadError,
        match=rf"val/shard-000000.tar: corrupt or truncated shard after key None: "
        rf"member at byte 0 is cut short: its header declares {2**86} bytes, the file holds \d+ after the header",
    ):
        _read_raising(_stream(toy_dataset))
    s = _stream(toy_dataset, errors="skip")
    ids, error = _read(s)
    assert error is None and ids == ["val/val0003", "val/val0004", "val/val0005"] and s.bad_shards == 1


def test_a_stream_stopped_inside_a_shard_can_still_be_pickled_for_a_spawned_worker(toy_dataset):
    import pickle

    s = _stream(toy_dataset)
    next(iter(s))  # a shard read in progress: a generator, which pickle cannot copy
    copy = pickle.loads(pickle.dumps(s))
    assert [item["id"] for item in copy] == [f"val/val000{i}" for i in range(6)]
