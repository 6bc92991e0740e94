"""pipelines.train.cluster.check_shared_storage with stand-in nodes (the real two-node run is in
test_cluster_integration.py, where a node in its own mount namespace cannot see the path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError
from pipelines.train.cluster import MARKER_PREFIX, check_shared_storage, sees_marker

NODES = [{"NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"}, {"NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"}]


def node_views(views: dict[str, Path | None], calls: list):
    """A probe where each node sees the filesystem under its own root (None: never answers)."""

    def probe(marker: str, token: str, node_ids, timeout_s):
        calls.append(marker)
        out = {}
        for nid in node_ids:
            root = views[nid]
            out[nid] = None if root is None else sees_marker(str(root / Path(marker).name), token)
        return out

    return probe


def test_every_node_sees_it_passes_and_cleans_up(tmp_path):
    calls: list = []
    check_shared_storage(str(tmp_path), NODES, node_views({n["NodeID"]: tmp_path for n in NODES}, calls))
    assert len(calls) == 1 and Path(calls[0]).name.startswith(MARKER_PREFIX)
    assert list(tmp_path.iterdir()) == [], "the marker is removed"


def test_node_without_the_path_is_named_with_what_to_set(tmp_path):
    elsewhere = tmp_path / "node-b-local"
    elsewhere.mkdir()
    shared = tmp_path / "ckpt"
    with pytest.raises(ConfigError) as e:
        check_shared_storage(str(shared), NODES, node_views({"a" * 56: shared, "b" * 56: elsewhere}, []))
    msg = str(e.value)
    assert f"checkpoint.storage_path {str(shared)!r}" in msg and "2 nodes" in msg
    assert "node 10.0.0.2 (id bbbbbbbbbbbb) does not see it" in msg and "10.0.0.1" not in msg
    assert "s3://" in msg and "NFS" in msg
    assert list(shared.iterdir()) == []


def test_node_that_does_not_answer_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"node 10.0.0.1 \(id aaaaaaaaaaaa\) did not answer within 5 s"):
        check_shared_storage(str(tmp_path), NODES, node_views({"a" * 56: None, "b" * 56: tmp_path}, []), timeout_s=5)


def test_uris_and_single_nodes_need_no_probe(tmp_path):
    def never(*a):
        raise AssertionError("probe must not run")

    check_shared_storage("s3://bucket/ray_results", NODES, never)
    check_shared_storage(str(tmp_path / "x"), NODES[:1], never)
    assert not (tmp_path / "x").exists()


def test_marker_with_other_content_does_not_count(tmp_path):
    m = tmp_path / f"{MARKER_PREFIX}t"
    m.write_text("someone else's")
    assert not sees_marker(str(m), "mine") and sees_marker(str(m), "someone else's")
    assert not sees_marker(str(tmp_path / "missing"), "mine")
