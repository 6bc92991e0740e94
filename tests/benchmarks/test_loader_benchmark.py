import math
from pathlib import Path

import pytest
import torch

from benchmarks.loader import (
    METHODS,
    LooseFiles,
    augment_config,
    build_shards,
    decode_pass,
    integrity_pass,
    loader_pass,
    measure,
    ratios,
    read_members,
    write_loose,
)
from datasets.codec import decode_sample
from datasets.transforms import build_transform, to_tensors

H, W = 24, 32
N, SHARD = 16, 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("bench") / "shards", N, SHARD, H, W)


def test_loose_files_hold_the_shard_bytes_and_give_the_decode_loop_tensors(shards, tmp_path):
    samples = read_members(shards)
    assert [k for k, _ in samples] == [f"{i:06d}" for i in range(N)]
    write_loose(samples, tmp_path / "loose")
    for key, members in samples:
        assert sorted(p.name for p in (tmp_path / "loose" / key).iterdir()) == sorted(members)
        for name, data in members.items():
            assert (tmp_path / "loose" / key / name).read_bytes() == data
    transform = build_transform(augment_config(H, W), train=True)
    ds = LooseFiles(tmp_path / "loose", transform, ["semseg", "depth", "normals", "edge"], ["rgb", "depth"])
    ds.epoch = 3
    for i in (0, 5, N - 1):
        key, members = samples[i]
        # Same bytes and the seed decode_pass uses for sample i of epoch 3 -> identical tensors.
        inputs, targets = to_tensors(
            transform(decode_sample(members, key), 3 * N + i), ["semseg", "depth", "normals", "edge"], ["rgb", "depth"]
        )
        got = ds[i]
        assert got["id"] == f"train_{key}"
        for k in inputs:
            assert torch.equal(got["inputs"][k], inputs[k])
        for k in targets:
            assert torch.equal(got["targets"][k], targets[k])
        assert got["inputs"]["rgb"].shape == (3, H, W)


def test_passes_process_every_sample_once_per_epoch(shards):
    transform = build_transform(augment_config(H, W), train=True)
    assert loader_pass(shards, transform, batch_size=4, epoch=0) == N
    assert loader_pass(shards, transform, batch_size=4, epoch=0, verify=False) == N
    assert decode_pass(read_members(shards), transform, epoch=0) == N
    assert integrity_pass([b"shard"], read_members(shards)) == N


def test_the_unverified_pass_skips_the_checks_and_the_verified_one_runs_them(shards, tmp_path):
    import shutil

    from datasets.shards import ShardReadError

    root = tmp_path / "copy"
    shutil.copytree(shards, root)
    shard = root / "train/shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[data.index(b'"source":"synthetic"') + 12] ^= 0x01  # valid JSON still: only the sha256 can tell
    shard.write_bytes(bytes(data))
    transform = build_transform(augment_config(H, W), train=True)
    assert loader_pass(root, transform, batch_size=4, epoch=0, verify=False) == N
    with pytest.raises(ShardReadError, match="sha256"):
        loader_pass(root, transform, batch_size=4, epoch=0)


def test_measure_reports_every_method_and_ratios_come_from_its_rates(shards, tmp_path):
    results = measure(shards, tmp_path / "loose", H, W, rounds=2, batch_size=4)
    assert [r["name"] for r in results] == list(METHODS)
    assert [r["verify"] for r in results] == [True, False, None, None, None]
    for r in results:
        assert r["samples"] == N and r["timed_rounds"] == 1 and r["dataset_samples"] == N and r["shards"] == 2
        assert (r["height"], r["width"], r["num_workers"]) == (H, W, 0)
        for field in ("samples_per_s_cpu", "samples_per_s_wall", "cpu_ms_per_sample", "wall_ms_per_sample"):
            assert math.isfinite(r[field]) and r[field] > 0
        assert r["samples_per_s_cpu"] == pytest.approx(1000 / r["cpu_ms_per_sample"], rel=0.01)
        assert len(r["round_samples_per_s_cpu"]) == 1
    rate = {r["name"]: r["samples_per_s_cpu"] for r in results}
    got = ratios(results)
    assert set(got) == {
        "loader_vs_decode_limit",
        "loader_vs_loose_files",
        "verified_vs_unverified",
        "integrity_cpu_share",
    }
    assert all(math.isfinite(v) and v > 0 for v in got.values())
    assert got["loader_vs_decode_limit"] == pytest.approx(rate["loader"] / rate["decode_limit"], abs=1e-4)
    assert got["loader_vs_loose_files"] == pytest.approx(rate["loader"] / rate["loose_files"], abs=1e-4)
    assert got["verified_vs_unverified"] == pytest.approx(rate["loader"] / rate["loader_unverified"], abs=1e-4)
    assert got["integrity_cpu_share"] == pytest.approx(rate["loader"] / rate["integrity_checks"], abs=1e-4)


def test_ratios_on_hand_made_rates_and_bad_input():
    results = [
        {"name": "loader", "samples_per_s_cpu": 60.0},
        {"name": "loader_unverified", "samples_per_s_cpu": 62.5},
        {"name": "decode_limit", "samples_per_s_cpu": 80.0},
        {"name": "loose_files", "samples_per_s_cpu": 40.0},
        {"name": "integrity_checks", "samples_per_s_cpu": 3000.0},
    ]
    assert ratios(results) == {
        "loader_vs_decode_limit": 0.75,
        "loader_vs_loose_files": 1.5,
        "verified_vs_unverified": 0.96,
        "integrity_cpu_share": 0.02,
    }
    with pytest.raises(ValueError, match="loose_files"):
        ratios(results[:3])
    with pytest.raises(ValueError, match="decode_limit"):
        ratios([*results[:2], {"name": "decode_limit", "samples_per_s_cpu": 0.0}, *results[3:]])
    with pytest.raises(ValueError, match="rounds"):
        measure(Path("unused"), Path("unused"), H, W, rounds=1)
