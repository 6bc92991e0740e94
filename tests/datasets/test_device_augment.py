"""The device augmentation (datasets/device_augment.py) against the CPU path (datasets/transforms.py).

Each sample's warp is drawn once (the same seed gives the same matrix to both paths) and applied by
both. Labels, depth, edges and (under warps without anisotropic stretch) normals must be equal except
at the sub-pixel boundary the module docstring documents: an output pixel whose source coordinate lies
within BOUNDARY_PX of a half-pixel, i.e. exactly between two input pixels up to float64 rounding (zooms
by simple ratios put whole rows there), where either neighbour is the nearest and the two paths' float
arithmetic may pick different ones. rgb must agree within RGB_MAX_LEVELS of 255: OpenCV rounds to
uint8 after the area shrink and after the warp (up to 1 level) and quantises bilinear weights to 1/32
pixel (1/64 pixel of the local intensity step at most, a fraction of a level on these smooth renders).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.device_augment import DeviceAugmentError, warp_batch
from datasets.loader import ShardStream, make_loader
from datasets.sources.synthetic import SyntheticSource
from datasets.transforms import IMAGENET_STD, AugmentConfig, WarpSampler, build_transform, to_tensors
from datasets.writer import write_dataset

TASKS = ["semseg", "depth", "normals", "edge"]
MODALITIES = ["rgb", "depth"]
BOUNDARY_PX = 1e-6  # exact ties, up to the rounding of float64 coordinates
RGB_MAX_LEVELS = 2.0
RGB_MEAN_LEVELS = 0.5

CONFIGS = {
    "scale-rotate-crop": dict(hflip=0.5, scale=(0.5, 1.5), rotate={"degrees": 30, "p": 1.0}, crop=(80, 112)),
    "flips-anisotropic-resize": dict(hflip=0.5, vflip=0.5, resize=(64, 128)),
    "zoom-in-mean-pad": dict(
        hflip=1.0, scale=(1.0, 2.0), rotate={"degrees": 10, "p": 0.5}, crop=(96, 136), rgb_pad="mean"
    ),
}


@pytest.fixture(scope="module")
def samples():
    src = SyntheticSource(num_train=4, num_val=1, height=96, width=128, seed=1)
    return [src.load("train", k) for k in src.keys("train")]


def _stack(dicts):
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}


def _both(cfg: AugmentConfig, samples, seed0: int):
    cpu, dev = build_transform(cfg, True), build_transform(cfg, True, on="device")
    assert isinstance(dev, WarpSampler)
    c_in, c_t, d_in, d_t, mats, sizes = [], [], [], [], [], []
    for j, s in enumerate(samples):
        i, t = to_tensors(cpu(s, seed0 + j), TASKS, MODALITIES)
        c_in.append(i)
        c_t.append(t)
        drawn = dev(s, seed0 + j)
        i, t = to_tensors(drawn, TASKS, MODALITIES)
        d_in.append(i)
        d_t.append(t)
        mats.append(drawn["meta"]["warp"])
        sizes.append(drawn["meta"]["warp_size"])
    warp = torch.from_numpy(np.stack(mats))
    out_in, out_t = warp_batch(_stack(d_in), _stack(d_t), warp, torch.tensor(sizes), rgb_pad=cfg.rgb_pad)
    return _stack(c_in), _stack(c_t), out_in, out_t, np.stack(mats), tuple(sizes[0])


def _boundary(mats: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """B×H×W: output pixels whose source coordinate is within BOUNDARY_PX of a half-pixel."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    out = []
    for m in mats:
        src = np.linalg.inv(m) @ pts
        near = np.zeros(h * w, dtype=bool)
        for c in src[:2]:
            near |= np.abs((c - np.floor(c)) - 0.5) < BOUNDARY_PX
        out.append(near.reshape(h, w))
    return torch.from_numpy(np.stack(out))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed0", [0, 1000])
def test_device_warp_equals_the_cpu_path(samples, name, seed0):
    cfg = AugmentConfig.model_validate(CONFIGS[name])
    c_in, c_t, d_in, d_t, mats, size = _both(cfg, samples, seed0)
    assert d_t["semseg"].dtype == torch.long and d_t["semseg"].shape == c_t["semseg"].shape
    inner = ~_boundary(mats, size)
    assert inner.float().mean() > 0.9  # the tolerance band holds exact ties only, not a loophole
    assert torch.equal(c_t["semseg"][inner], d_t["semseg"][inner])
    for key in ("depth", "edge"):
        assert torch.equal(c_t[key][:, 0][inner], d_t[key][:, 0][inner]), key
    assert torch.equal(c_in["depth"][:, 0][inner], d_in["depth"][:, 0][inner])
    # Normals: exact under warps without anisotropic stretch, float32 rounding otherwise.
    torch.testing.assert_close(
        c_t["normals"].permute(0, 2, 3, 1)[inner], d_t["normals"].permute(0, 2, 3, 1)[inner], rtol=0, atol=1e-6
    )
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    levels = ((c_in["rgb"] - d_in["rgb"]) * std * 255).abs()
    assert levels.max() <= RGB_MAX_LEVELS and levels.mean() <= RGB_MEAN_LEVELS, (levels.max(), levels.mean())


def test_labels_and_depth_take_only_input_values_or_padding(samples):
    cfg = AugmentConfig.model_validate(CONFIGS["scale-rotate-crop"])
    _, _, d_in, d_t, _, _ = _both(cfg, samples, 7)
    depth_in = torch.cat([torch.from_numpy(s["depth"]).flatten() for s in samples])
    assert torch.isin(d_t["depth"].flatten(), torch.cat([depth_in, torch.zeros(1)])).all()
    assert (d_t["depth"] == 0).any()  # the rotation brings padding in: missing depth, not interpolated depth
    labels_in = torch.cat([torch.from_numpy(s["semseg"]).flatten().long() for s in samples])
    assert torch.isin(d_t["semseg"].flatten(), torch.cat([labels_in, torch.tensor([255])])).all()
    assert (d_t["semseg"] == 255).any()


def test_flip_and_rotation_turn_the_normal_vectors():
    n = torch.zeros(2, 3, 8, 8)
    n[:, 0] = 1.0  # every normal points right (+x)
    targets = {"normals": n}
    inputs = {"depth": torch.ones(2, 1, 8, 8)}
    flip = np.array([[-1.0, 0, 7], [0, 1, 0], [0, 0, 1]])
    c, s = 0.0, 1.0  # +90 degrees about the centre, counter-clockwise as displayed
    rot = np.array([[1, 0, 3.5], [0, 1, 3.5], [0, 0, 1]]) @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, -3.5], [0, 1, -3.5], [0, 0, 1]])
    _, out = warp_batch(inputs, targets, torch.from_numpy(np.stack([flip, rot])), torch.tensor([[8, 8], [8, 8]]))
    assert torch.equal(out["normals"][0, :, 4, 4], torch.tensor([-1.0, 0.0, 0.0]))  # flip: n_x negated
    torch.testing.assert_close(out["normals"][1, :, 4, 4], torch.tensor([0.0, -1.0, 0.0]))  # right -> up


def test_a_batch_that_warps_to_different_sizes_is_a_named_error():
    inputs = {"depth": torch.ones(2, 1, 8, 8)}
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    with pytest.raises(DeviceAugmentError, match=r"warp_size.*different sizes.*data.augment.crop"):
        warp_batch(inputs, {}, eye, torch.tensor([[8, 8], [6, 8]]))
    with pytest.raises(DeviceAugmentError, match=r"batch\['warp'\] must be a 2×3×3 tensor"):
        warp_batch(inputs, {}, torch.eye(3, dtype=torch.float64), torch.tensor([[8, 8], [8, 8]]))
    with pytest.raises(DeviceAugmentError, match="singular"):
        warp_batch(inputs, {}, torch.zeros(2, 3, 3, dtype=torch.float64), torch.tensor([[8, 8], [8, 8]]))


def test_device_sampler_refuses_photometric_ops():
    with pytest.raises(ValueError, match="no photometric ops"):
        build_transform({"color_jitter": {}}, True, on="device")


def test_the_loader_hands_the_cpu_paths_warps_to_the_device(tmp_path):
    """Same stream, same seeds: a loader with the WarpSampler and warp_batch gives the CPU loader's batches."""
    write_dataset(
        SyntheticSource(num_train=8, num_val=1, height=48, width=64, seed=2), tmp_path, shard_size=4, progress=False
    )
    cfg = AugmentConfig.model_validate(dict(hflip=0.5, rotate={"degrees": 20, "p": 1.0}, crop=(40, 56)))

    def batches(on: str):
        stream = ShardStream(
            tmp_path,
            "train",
            tasks=TASKS,
            modalities=MODALITIES,
            batch_size=4,
            train=True,
            seed=5,
            transform=build_transform(cfg, True, on=on),
        )
        return list(make_loader(stream))

    cpu, dev = batches("cpu"), batches("device")
    assert len(cpu) == len(dev) == 2
    for c, d in zip(cpu, dev, strict=True):
        assert c["id"] == d["id"] and "warp" not in c and d["warp"].shape == (4, 3, 3)
        _, out_t = warp_batch(d["inputs"], d["targets"], d["warp"], d["warp_size"])
        inner = ~_boundary(d["warp"].numpy(), (40, 56))
        assert torch.equal(c["targets"]["semseg"][inner], out_t["semseg"][inner])
        assert torch.equal(c["targets"]["depth"][:, 0][inner], out_t["depth"][:, 0][inner])
