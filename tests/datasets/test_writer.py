import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from datasets.manifest import ManifestError, load_manifest, manifest_digest, verify
from datasets.sources.base import SourceError
from datasets.writer import clean_up_killed_builds, write_dataset
from tests import REPO_ROOT
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


_SLOW_BUILD = """
import pathlib, sys, time
from datasets.writer import write_dataset
from tests.conftest import ToySource

class Slow(ToySource):
    def load(self, split, key):
        if key == "train0003":  # two samples are in the temp directory: say so, and hang until killed
            pathlib.Path(sys.argv[2]).touch()
            time.sleep(120)
        return super().load(split, key)

write_dataset(Slow(), sys.argv[1], shard_size=2, progress=False)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_build_removes_what_a_killed_build_left(tmp_path, capsys):
    out, started = tmp_path / "ds", tmp_path / "started"
    build = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(out), str(started)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert build.poll() is None and time.monotonic() < deadline, "the build did not start"
            time.sleep(0.1)
    finally:
        build.kill()  # SIGKILL: no chance to clean up
        build.wait()
    left = tmp_path / f".ds.tmp-{build.pid}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [left.name, "started"]
    assert (left / "train" / "shard-000000.tar").is_file() and not out.exists()
    manifest = write_dataset(ToySource(), out, shard_size=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "started"]
    assert f"removed {left}, left by a build of ds (process {build.pid}) that was killed" in capsys.readouterr().err
    # The same shards as a build that nothing interrupted.
    assert manifest == write_dataset(ToySource(), tmp_path / "clean", shard_size=2, progress=False)
    assert manifest_digest(out) == manifest_digest(tmp_path / "clean") and verify(out).ok


def test_only_dead_builds_of_the_same_output_are_cleaned_up(tmp_path):
    out = tmp_path / "ds"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead, other_dead = _dead_pid(), _dead_pid()
        keep = [
            tmp_path / f".ds.tmp-{live.pid}",  # a build still running
            tmp_path / f".ds.tmp-{os.getpid()}x",  # not the pattern
            tmp_path / ".ds.tmp-",
            tmp_path / f".dsx.tmp-{dead}",  # another output's
            tmp_path / f"ds.tmp-{dead}",  # not hidden: not a name the writer uses
        ]
        for d in keep:
            (d / "train").mkdir(parents=True)
        (tmp_path / f".ds.old-{other_dead}").write_text("a file, not a build's directory")
        target = tmp_path / "target"
        (target / "train").mkdir(parents=True)
        (tmp_path / f".ds.tmp-{other_dead}").symlink_to(target)  # a link is never followed
        (tmp_path / f".ds.tmp-{dead}" / "train").mkdir(parents=True)
        assert clean_up_killed_builds(out) == [tmp_path / f".ds.tmp-{dead}"]
        assert all((d / "train").is_dir() for d in keep) and (target / "train").is_dir()
        assert (tmp_path / f".ds.old-{other_dead}").is_file() and not (tmp_path / f".ds.tmp-{dead}").exists()
    finally:
        live.kill()
        live.wait()


def test_a_build_killed_while_swapping_datasets_gets_the_previous_one_back(tmp_path, toy_source):
    out = tmp_path / "ds"
    write_dataset(toy_source, out, shard_size=4, progress=False)
    before = manifest_digest(out)
    dead = _dead_pid()
    # Killed between moving the old dataset aside and moving the new one in (writer._replace_dir).
    os.replace(out, tmp_path / f".ds.old-{dead}")
    (tmp_path / f".ds.tmp-{dead}" / "train").mkdir(parents=True)
    assert sorted(p.name for p in clean_up_killed_builds(out)) == [f".ds.old-{dead}", f".ds.tmp-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert manifest_digest(out) == before and verify(out).ok
    # Killed after the new one was in place: the old one is only removed.
    shutil.copytree(out, tmp_path / f".ds.old-{dead}")
    assert clean_up_killed_builds(out) == [tmp_path / f".ds.old-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"] and manifest_digest(out) == before


class _CountingSource(ToySource):
    """Counts its loads in memory shared with forked workers."""

    def __init__(self, counter, **kw):
        super().__init__(**kw)
        self.counter = counter

    def load(self, split, key):
        with self.counter.get_lock():
            self.counter.value += 1
        return super().load(split, key)


def test_parallel_build_holds_at_most_max_pending_samples():
    import multiprocessing as mp

    from datasets.writer import _encoded

    counter = mp.get_context("fork").Value("i", 0)
    source = _CountingSource(counter, num_train=40)
    keys = source.keys("train")
    gen = _encoded(source, "train", keys, workers=2, max_pending=3)
    first = next(gen)
    time.sleep(1.0)  # the workers would run ahead here if nothing bounded them
    assert first == _encoded(ToySource(), "train", keys[:1], workers=1, max_pending=1).__next__()
    assert 1 <= counter.value <= 4  # the sample handed on plus at most 3 submitted
    rest = list(gen)
    assert len(rest) == 39 and counter.value == 40


def test_parallel_build_gives_the_same_bytes_for_any_worker_count(tmp_path):
    one = write_dataset(ToySource(num_train=21), tmp_path / "one", shard_size=5, progress=False, workers=1)
    two = write_dataset(ToySource(num_train=21), tmp_path / "two", shard_size=5, progress=False, workers=2)
    three = write_dataset(
        ToySource(num_train=21), tmp_path / "three", shard_size=5, progress=False, workers=3, max_pending=1
    )
    sha = [[s["sha256"] for s in m["splits"]["train"]["shards"]] for m in (one, two, three)]
    assert sha[0] == sha[1] == sha[2] and len(sha[0]) == 5


def test_a_failing_sample_in_a_worker_is_the_named_error_and_leaves_nothing(tmp_path):
    with pytest.raises(SourceError, match=r"val/val0004: semseg class id 9 out of range"):
        write_dataset(_BadAt(num_val=12), tmp_path / "out", shard_size=4, progress=False, workers=2)
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch):
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr("datasets.writer.time.monotonic", lambda: next(clock))
    write_dataset(ToySource(num_train=4, num_val=2), tmp_path / "out", progress=False, log_every=2.0)
    lines = capsys.readouterr().err.splitlines()
    # monotonic() ticks one second per call: a line every second sample; train's last line is its total
    assert lines == [
        "toy/train: 2/4 samples (50.0%), 1.0 samples/s",
        "toy/train: 4/4 samples (100.0%), 1.0 samples/s",
        "toy/val: 2/2 samples (100.0%), 1.0 samples/s",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers must be >= 1, got 0"),
        ({"max_pending": 0}, "max_pending must be >= 1, got 0"),
        ({"log_every": 0.0}, "log_every must be > 0 seconds, got 0.0"),
    ],
)
def test_bad_build_options_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_dataset(ToySource(), tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


class _DiesAt(ToySource):
    def load(self, split, key):
        if key == "train0005" and os.getpid() != self.parent:
            os._exit(1)  # a worker killed mid-sample (as by the OOM killer)
        return super().load(split, key)


def test_a_worker_that_dies_is_a_named_error_and_leaves_nothing(tmp_path):
    source = _DiesAt(num_train=12)
    source.parent = os.getpid()
    with pytest.raises(SourceError, match=r"toy train/train\d{4}: a worker process died while encoding"):
        write_dataset(source, tmp_path / "out", shard_size=4, progress=False, workers=2)
    assert list(tmp_path.iterdir()) == []
