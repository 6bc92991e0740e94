"""Checks a multi-node Ray cluster must pass before a training run starts.

Ray Train writes every checkpoint through ``checkpoint.storage_path``. On one machine a local
directory is fine; on several machines a local path silently gives each node its own directory,
so a resumed or evaluated run finds checkpoints missing (or, worse, stale ones). A URI
(``s3://...``, ``gs://...``) is shared by construction; a local path is shared only if it is a
network filesystem mounted at the same place on every node. That is checked here, for real: the
driver writes a marker file and a zero-CPU task pinned to each alive node looks for it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError

log = logging.getLogger(__name__)
MARKER_PREFIX = ".fusionpipe-shared-check-"
# node id -> True (sees the marker), False (does not), None (did not answer in time)
Probe = Callable[[str, str, Sequence[str], float], dict[str, bool | None]]


def sees_marker(marker: str, token: str) -> bool:
    """Runs on one node: is the driver's marker there, with the driver's content?"""
    path = Path(marker)
    try:
        return path.is_file() and path.read_text() == token
    except OSError:
        return False


def ray_probe(marker: str, token: str, node_ids: Sequence[str], timeout_s: float) -> dict[str, bool | None]:
    """Ask every node in ``node_ids`` (one pinned task each) whether it sees ``marker``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Zero CPUs: the check must run even while training workers hold every CPU of a node.
    check = ray.remote(num_cpus=0, max_retries=0)(sees_marker)
    refs = {
        nid: check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote(marker, token)
        for nid in node_ids
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    answers: dict[str, bool | None] = {}
    for nid, ref in refs.items():
        try:
            answers[nid] = bool(ray.get(ref)) if ref in ready else None
        except ray.exceptions.RayError:
            answers[nid] = None
    return answers


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_shared_storage(
    storage_path: str, nodes: list[dict[str, Any]] | None = None, probe: Probe = ray_probe, timeout_s: float = 120.0
) -> None:
    """Refuse a local ``storage_path`` that some node of a multi-node cluster cannot see.

    ``nodes`` defaults to the alive nodes of the connected Ray cluster (``ray.nodes()`` entries
    with ``NodeID`` and ``NodeManagerAddress``). A URI (``scheme://``) and a single-node cluster
    pass without a probe.
    """
    if "://" in storage_path:
        return
    nodes = alive_nodes() if nodes is None else nodes
    if len(nodes) <= 1:
        return
    root = Path(storage_path)
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = root / f"{MARKER_PREFIX}{token}"
    tmp = root / f".{marker.name}.tmp"
    tmp.write_text(token)
    os.replace(tmp, marker)
    try:
        answers = probe(str(marker), token, [n["NodeID"] for n in nodes], timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n for n in nodes if answers.get(n["NodeID"]) is not True]
    if blind:
        raise ConfigError(shared_storage_message(storage_path, blind, answers, len(nodes), timeout_s))
    log.info("checkpoint.storage_path %s is visible on all %d nodes", storage_path, len(nodes))


def shared_storage_message(
    storage_path: str, blind: list[dict[str, Any]], answers: dict[str, bool | None], num_nodes: int, timeout_s: float
) -> str:
    def describe(n: dict[str, Any]) -> str:
        why = "does not see it" if answers.get(n["NodeID"]) is False else f"did not answer within {timeout_s:g} s"
        return f"node {n.get('NodeManagerAddress', '?')} (id {n['NodeID'][:12]}) {why}"

    return (
        f"checkpoint.storage_path {storage_path!r} is a local path, and the Ray cluster has {num_nodes} nodes: a file "
        f"the driver wrote there is not visible everywhere: {'; '.join(describe(n) for n in blind)}. Every node must "
        "share the checkpoint storage: set checkpoint.storage_path to a network filesystem mounted at the same path "
        "on every node (e.g. NFS/EFS at /mnt/shared/ray_results) or to a URI such as s3://BUCKET/ray_results "
        "(--set checkpoint.storage_path=...)."
    )
