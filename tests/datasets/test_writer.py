import json
import tarfile

import numpy as np
import pytest

from datasets.manifest import ManifestError, load_manifest, manifest_digest, verify
from datasets.sources.base import SourceError
from datasets.writer import write_dataset
from tests.conftest import ToySource


def test_layout_and_manifest(toy_dataset):
    m = load_manifest(toy_dataset)
    assert m["source"] == "toy" and m["classes"] == ["a", "b", "c", "d"] and m["ignore_index"] == 255
    assert [s["path"] for s in m["splits"]["train"]["shards"]] == [f"train/shard-{i:06d}.tar" for i in range(4)]
    assert [s["num_samples"] for s in m["splits"]["train"]["shards"]] == [3, 3, 3, 1]
    assert m["splits"]["val"]["num_samples"] == 6
    with tarfile.open(toy_dataset / "train/shard-000000.tar") as tf:
        names = tf.getnames()
        assert names[:6] == [
            "train0000.depth.png",
            "train0000.edge.png",
            "train0000.meta.json",
            "train0000.normals.png",
            "train0000.rgb.png",
            "train0000.semseg.png",
        ]
        assert {ti.mtime for ti in tf.getmembers()} == {0}


def test_rebuild_is_byte_identical(tmp_path, toy_source):
    a = write_dataset(toy_source, tmp_path / "a", shard_size=4, progress=False)
    b = write_dataset(ToySource(), tmp_path / "b", shard_size=4, progress=False, workers=2)
    assert a == b
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    assert manifest_digest(tmp_path / "a") == manifest_digest(tmp_path / "b")


def test_verify_names_the_first_bad_shard(toy_dataset):
    assert verify(toy_dataset).ok
    shard = toy_dataset / "val/shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = verify(toy_dataset)
    assert not result.ok and result.problems[0].startswith("val/shard-000001.tar: sha256")
    (toy_dataset / "train/shard-000002.tar").unlink()
    (toy_dataset / "train/extra.tar").write_bytes(b"x")
    probs = verify(toy_dataset).problems
    assert "train/shard-000002.tar: missing" in probs and "train/extra.tar: not listed in the manifest" in probs


def test_manifest_errors_name_file_and_field(tmp_path, toy_dataset):
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(tmp_path)
    m = json.loads((toy_dataset / "manifest.json").read_text())
    del m["splits"]["val"]["shards"][0]["sha256"]
    (toy_dataset / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"splits.val.shards\[0\] lacks field 'sha256'"):
        load_manifest(toy_dataset)


class _BadAt(ToySource):
    def load(self, split, key):
        s = super().load(split, key)
        if key == "val0004":
            s["semseg"] = np.full_like(s["semseg"], 9)
        return s


def test_failed_build_keeps_previous_dataset_and_leaves_no_temp(tmp_path, toy_dataset):
    before = (toy_dataset / "manifest.json").read_bytes()
    with pytest.raises(SourceError, match=r"val/val0004: semseg class id 9 out of range"):
        write_dataset(_BadAt(), toy_dataset, shard_size=3, progress=False)
    assert (toy_dataset / "manifest.json").read_bytes() == before
    assert verify(toy_dataset).ok
    assert sorted(p.name for p in toy_dataset.parent.iterdir()) == ["toy"]


class _Missing(ToySource):
    def load(self, split, key):
        s = super().load(split, key)
        del s["normals"]
        return s


def test_missing_member_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="lacks member.*normals"):
        write_dataset(_Missing(), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_directory_that_is_not_a_dataset_is_never_replaced(tmp_path, toy_source):
    parent = tmp_path / "shards"
    (parent / "other").mkdir(parents=True)
    (parent / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"shards: exists, is not empty and holds no manifest.json"):
        write_dataset(toy_source, parent, shard_size=4, progress=False)
    assert (parent / "other" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no temp directory left behind
    # An empty directory, or an earlier dataset, is replaced.
    (tmp_path / "empty").mkdir()
    write_dataset(toy_source, tmp_path / "empty", shard_size=4, progress=False)
    write_dataset(toy_source, tmp_path / "empty", shard_size=4, progress=False)
    assert verify(tmp_path / "empty").ok
