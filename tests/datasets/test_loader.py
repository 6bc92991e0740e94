import io
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from datasets.loader import ShardReadError, ShardStream, iter_shard, make_loader
from datasets.writer import write_dataset
from tests.conftest import ToySource
from tests.datasets.shard_edits import rewrite_member

TASKS = ["semseg", "depth", "normals", "edge"]


def _stream(root, split="val", **kw):
    args = dict(tasks=TASKS, modalities=["rgb", "depth"], batch_size=2, train=False, shuffle_buffer=4)
    args.update(kw)
    return ShardStream(root, split, **args)


def _ids(loader):
    out, batches = [], 0
    for batch in loader:
        batches += 1
        out.extend(batch["id"])
    return out, batches


def test_batch_contents_and_dtypes(toy_dataset, toy_source):
    loader = make_loader(_stream(toy_dataset))
    batch = next(iter(loader))
    assert batch["inputs"]["rgb"].shape == (2, 3, 12, 16) and batch["inputs"]["rgb"].dtype == torch.float32
    assert batch["inputs"]["depth"].shape == (2, 1, 12, 16)
    t = batch["targets"]
    assert t["semseg"].dtype == torch.int64 and t["semseg"].shape == (2, 12, 16)
    assert t["normals"].shape == (2, 3, 12, 16) and t["edge"].shape == (2, 1, 12, 16)
    ref = toy_source.load("val", "val0000")
    # 16-bit depth survives: metres to the millimetre, not squashed to 8 bits.
    np.testing.assert_allclose(t["depth"][0, 0].numpy(), ref["depth"], atol=6e-4)
    assert t["depth"].max() > 1.0
    np.testing.assert_array_equal(t["semseg"][0].numpy(), ref["semseg"].astype(np.int64))
    assert batch["id"][0] == "val/val0000"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_reads_every_sample_exactly_once_across_ranks(toy_dataset, num_workers):
    seen = []
    for rank in range(2):
        s = _stream(toy_dataset, rank=rank, world_size=2, num_workers=num_workers)
        ids, _ = _ids(make_loader(s))
        assert len(ids) == len(s)
        seen += ids
    assert sorted(seen) == [f"val/val{i:04d}" for i in range(6)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_gives_equal_batches_per_rank_on_uneven_shards(tmp_path, num_workers):
    # 11 samples in shards of 3,3,3,2: ranks would get 6 and 5 samples if split naively.
    root = tmp_path / "ds"
    write_dataset(ToySource(num_train=11, num_val=2), root, shard_size=3, progress=False)
    counts = []
    for rank in range(2):
        s = ShardStream(
            root,
            "train",
            tasks=["semseg"],
            modalities=["rgb"],
            batch_size=2,
            train=True,
            rank=rank,
            world_size=2,
            num_workers=num_workers,
            shuffle_buffer=3,
            seed=5,
        )
        for epoch in range(2):
            s.set_epoch(epoch)
            ids, batches = _ids(make_loader(s))
            counts.append(batches)
            assert len(ids) == batches * 2
            assert all(n <= 2 for n in Counter(ids).values())
    assert counts == [2, 2, 2, 2]  # 11 // (2 ranks * 2) = 2 full batches per rank


def test_train_order_depends_on_seed_and_epoch_and_is_reproducible(toy_dataset):
    def order(seed, epoch):
        s = ShardStream(
            toy_dataset,
            "train",
            tasks=["semseg"],
            modalities=["rgb"],
            batch_size=1,
            train=True,
            seed=seed,
            shuffle_buffer=4,
        )
        s.set_epoch(epoch)
        return _ids(make_loader(s))[0]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert sorted(order(1, 0)) == [f"train/train{i:04d}" for i in range(10)]


def test_missing_task_member_is_refused_up_front(toy_dataset, tmp_path):
    class NoNormals(ToySource):
        members = ["rgb", "depth", "semseg", "edge"]

        def load(self, split, key):
            s = super().load(split, key)
            del s["normals"]
            return s

    write_dataset(NoNormals(), tmp_path / "nn", progress=False)
    with pytest.raises(ValueError, match="lacks normals"):
        _stream(tmp_path / "nn")


def _complete(reader, path):
    """The samples ``reader`` yields from ``path`` before it raises."""
    out = []
    try:
        for item in reader(path):
            out.append(item)
    except ShardReadError:
        pass
    return out


def _png8(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_8bit_depth_error_names_shard_key_member(toy_dataset):
    rewrite_member(toy_dataset, "val/shard-000000.tar", "val0001", "depth.png", _png8(np.zeros((12, 16), np.uint8)))
    with pytest.raises(ShardReadError, match=r"val/shard-000000.tar key 'val0001'.*depth.png.*8-bit"):
        _ids(make_loader(_stream(toy_dataset)))


def test_class_id_out_of_range_and_skip_policy(toy_dataset, caplog):
    rewrite_member(toy_dataset, "val/shard-000001.tar", "val0004", "semseg.png", _png8(np.full((12, 16), 7, np.uint8)))
    with pytest.raises(ShardReadError, match=r"shard-000001.tar key 'val0004'.*class id 7"):
        _ids(make_loader(_stream(toy_dataset)))
    s = _stream(toy_dataset, errors="skip")
    ids, _ = _ids(make_loader(s))
    assert "val/val0004" not in ids and len(ids) == 5 and s.skipped == 1
    assert "val0004" in caplog.text and "skipped" in caplog.text


def test_truncated_shard_names_the_shard(toy_dataset):
    path = toy_dataset / "val/shard-000000.tar"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ShardReadError, match="val/shard-000000.tar: corrupt or truncated") as e:
        list(iter_shard(path))
    assert "after key None (while reading key 'val0000')" in str(e.value)  # no sample was read whole
    s = _stream(toy_dataset, errors="skip")
    ids, _ = _ids(make_loader(s))
    assert s.skipped == 1 and {"val/val0003", "val/val0004", "val/val0005"} <= set(ids)


def test_a_shard_cut_after_whole_samples_names_the_last_one_read(toy_dataset):
    path = toy_dataset / "val/shard-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    done = [k for k, _ in _complete(iter_shard, path)]
    assert done == ["val0000", "val0001"]
    with pytest.raises(ShardReadError, match=r"after key 'val0001' \(while reading key 'val0002'\)"):
        list(iter_shard(path))


def test_pickle_member_is_refused(toy_dataset):
    path = toy_dataset / "val/shard-000000.tar"
    with tarfile.open(path, "a") as tf:
        ti = tarfile.TarInfo("val0002.extra.pyd")
        ti.size = 5
        tf.addfile(ti, io.BytesIO(b"\x80\x04K\x01."))
    with pytest.raises(ShardReadError, match="pickle"):
        _ids(make_loader(_stream(toy_dataset)))


def test_too_few_samples_for_world_is_an_error(toy_dataset):
    with pytest.raises(ValueError, match="fewer than world_size"):
        ShardStream(toy_dataset, "val", tasks=["semseg"], modalities=["rgb"], batch_size=4, train=True, world_size=2)


def test_skip_policy_in_train_mode_keeps_exact_batch_counts(toy_dataset):
    rewrite_member(
        toy_dataset, "train/shard-000001.tar", "train0004", "semseg.png", _png8(np.full((12, 16), 9, np.uint8))
    )
    s = ShardStream(
        toy_dataset,
        "train",
        tasks=["semseg"],
        modalities=["rgb"],
        batch_size=2,
        train=True,
        shuffle_buffer=3,
        errors="skip",
    )
    ids, batches = _ids(make_loader(s))
    assert batches == 5 and len(ids) == 10 and "train/train0004" not in ids and s.skipped >= 1


def test_an_evaluation_stream_applies_its_transform(toy_dataset):
    from datasets.transforms import build_transform

    resize = build_transform({"resize": (6, 8)}, train=False)
    batch = next(iter(make_loader(_stream(toy_dataset, transform=resize))))
    assert batch["inputs"]["rgb"].shape == (2, 3, 6, 8) and batch["targets"]["semseg"].shape == (2, 6, 8)
    # Without `resize`, evaluation leaves the sample as stored.
    plain = next(iter(make_loader(_stream(toy_dataset))))
    same = next(iter(make_loader(_stream(toy_dataset, transform=build_transform({}, train=False)))))
    assert torch.equal(plain["inputs"]["rgb"], same["inputs"]["rgb"]) and plain["inputs"]["rgb"].shape[-2:] == (12, 16)


@pytest.mark.parametrize("train", [False, True])
def test_a_bad_meta_json_names_the_shard_and_key_and_can_be_skipped(toy_dataset, caplog, train):
    from datasets.transforms import build_transform

    split = "train" if train else "val"
    key = f"{split}0001"
    rewrite_member(
        toy_dataset,
        f"{split}/shard-000000.tar",
        key,
        "meta.json",
        b'{"id": "%s/%s", "intrinsics": null}' % (split.encode(), key.encode()),
    )
    kw = dict(
        tasks=["semseg"],
        modalities=["rgb"],
        batch_size=2,
        train=train,
        shuffle_buffer=3,
        transform=build_transform({"hflip": 1.0} if train else {"resize": (6, 8)}, train=train),
    )
    with pytest.raises(ShardReadError, match=rf"{split}/shard-000000.tar key '{key}': sample .*intrinsics"):
        _ids(make_loader(ShardStream(toy_dataset, split, **kw)))
    s = ShardStream(toy_dataset, split, errors="skip", **kw)
    ids, _ = _ids(make_loader(s))
    assert f"{split}/{key}" not in ids and s.skipped >= 1 and key in caplog.text


def _train_ids(root, epoch, buffer, rank=0, world=1, seeds=None):
    def transform(sample, seed):
        if seeds is not None:
            seeds.append(seed)
        return sample

    s = ShardStream(
        root,
        "train",
        tasks=["semseg"],
        modalities=["rgb"],
        batch_size=1,
        train=True,
        seed=3,
        shuffle_buffer=buffer,
        rank=rank,
        world_size=world,
        transform=transform,
    )
    s.set_epoch(epoch)
    return [i for b in make_loader(s) for i in b["id"]]


def test_with_one_shard_the_shuffle_buffer_alone_changes_with_the_epoch(tmp_path):
    write_dataset(ToySource(num_train=8, num_val=2), tmp_path / "ds", shard_size=100, progress=False)
    assert _train_ids(tmp_path / "ds", 0, 8) != _train_ids(tmp_path / "ds", 1, 8)


def test_without_a_buffer_the_shard_order_alone_changes_with_the_epoch(tmp_path):
    write_dataset(ToySource(num_train=8, num_val=2), tmp_path / "ds", shard_size=1, progress=False)
    assert _train_ids(tmp_path / "ds", 0, 1) != _train_ids(tmp_path / "ds", 1, 1)


def test_ranks_draw_different_augmentation_seeds(tmp_path):
    write_dataset(ToySource(num_train=8, num_val=2), tmp_path / "ds", shard_size=2, progress=False)
    seeds0, seeds1 = [], []
    _train_ids(tmp_path / "ds", 0, 2, rank=0, world=2, seeds=seeds0)
    _train_ids(tmp_path / "ds", 0, 2, rank=1, world=2, seeds=seeds1)
    assert len(seeds0) == len(seeds1) == 4 and seeds0 != seeds1
