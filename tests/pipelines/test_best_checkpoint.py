"""train --best-checkpoint: the best checkpoint copied into a directory (the main job's DVC output)."""

from __future__ import annotations

import pytest

from pipelines.checkpoints import CheckpointError
from pipelines.storage import copy_checkpoint_to


def test_the_copy_replaces_what_was_there_only_when_complete(tmp_path):
    src = tmp_path / "ray" / "checkpoint_000001"
    src.mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    (src / "meta.json").write_text('{"epoch": 1}')
    dest = tmp_path / "outputs" / "best"
    dest.mkdir(parents=True)
    (dest / "stale.pt").write_bytes(b"old")
    copy_checkpoint_to(str(src), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["meta.json", "model.pt"]
    assert (dest / "model.pt").read_bytes() == b"weights"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["best"]  # no temporary folder left


def test_a_missing_checkpoint_is_named_and_the_old_copy_kept(tmp_path):
    dest = tmp_path / "best"
    dest.mkdir()
    (dest / "model.pt").write_bytes(b"old")
    with pytest.raises(CheckpointError, match="checkpoint_9: no such checkpoint directory"):
        copy_checkpoint_to(str(tmp_path / "checkpoint_9"), dest)
    assert (dest / "model.pt").read_bytes() == b"old"
