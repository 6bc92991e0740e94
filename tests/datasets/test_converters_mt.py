"""The pascal-mt and sunrgbd converters on tiny trees in each official layout, read back with the loader.

Every expected value is computed by hand from the official code's rule named beside it.
"""

import hashlib
import json
import re

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

from datasets.codec import decode_normals, encode_normals
from datasets.loader import ShardStream
from datasets.manifest import load_manifest
from datasets.sources.base import SourceError
from datasets.sources.nyud_mt import NyudMtSource
from datasets.sources.pascal_mt import (
    HUMAN_PARTS_6,
    NORMALS_VALID_CONTEXT_IDS,
    PART_CLASSES,
    PASCAL_MT_CLASSES,
    PascalMtSource,
    context_edges,
    laplacian_nonzero,
    saliency,
    thin,
)
from datasets.sources.sunrgbd import SUNRGBD37_CLASSES, SunrgbdSource, sunrgbd_depth
from datasets.writer import write_dataset
from pipelines.cli.main import cli
from tests.datasets.test_converters import N_OURS, plane

H, W = 6, 8
RNG = np.random.default_rng(0)


def png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def image(path, h=H, w=W):
    """A random RGB image at ``path`` (JPEG or PNG by suffix); returns what a reader decodes from it."""
    png(path, RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return np.asarray(Image.open(path).convert("RGB"))


def read_back(root, split, tasks, modalities=("rgb",)):
    """{key: {task: array}} through the project's loader (eval order, every sample once)."""
    stream = ShardStream(root, split, tasks=list(tasks), modalities=list(modalities), batch_size=1, train=False)
    out = {}
    for item in stream:
        sample = {t: item["targets"][t].numpy() for t in tasks}
        sample.update({f"in_{m}": item["inputs"][m].numpy() for m in modalities})
        out[item["id"]] = sample
    return out


def shard_sha(root):
    return [s["sha256"] for split in load_manifest(root)["splits"].values() for s in split["shards"]]


def run_cli(*args):
    return CliRunner().invoke(cli, ["data", "build", *map(str, args), "--json"])


# ---------------------------------------------------------------- PASCAL-MT helpers (hand-computed values)
def test_laplacian_is_opencvs_4_neighbour_kernel_with_reflect_101_border():
    lab = np.array([[2, 2, 2], [1, 2, 3], [2, 2, 2]])
    # centre: 1 + 3 + 2 + 2 - 4*2 = 0 though its neighbours differ (OpenCV gives 0 too)
    # (0,0): reflect-101 neighbours up = (1,0) = 1, left = (0,1) = 2: 1 + 1 + 2 + 2 - 8 = -2
    assert laplacian_nonzero(lab).tolist() == [
        [True, False, True],
        [True, False, True],
        [True, False, True],
    ]


def test_thin_keeps_one_pixel_lines_and_endpoints_and_thins_a_two_pixel_band():
    line = np.zeros((5, 7), bool)
    line[2, 1:6] = True
    assert np.array_equal(thin(line), line)
    dot = np.zeros((3, 3), bool)
    dot[1, 1] = True
    assert np.array_equal(thin(dot), dot)
    band = np.zeros((6, 8), bool)
    band[:, 3:5] = True
    # first sub-iteration (Lam, Lee & Suen): the east column goes (no east neighbour, one 0->1 transition),
    # and so does the west column's top pixel (east and south-east set, nothing north: G3 holds)
    expect = np.zeros((6, 8), bool)
    expect[1:, 3] = True
    assert np.array_equal(thin(band), expect)


def test_context_edges_are_the_thinned_label_boundary():
    lab = np.full((H, W), 3, np.uint16)
    lab[:, 4:] = 427
    expect = np.zeros((H, W), np.uint8)
    expect[1:, 3] = 1  # the 2-pixel band of columns 3 and 4, thinned as above
    assert np.array_equal(context_edges(lab), expect)
    assert not context_edges(np.full((H, W), 7, np.uint16)).any()


def test_saliency_threshold_and_normals_classes():
    # raw / 255 > 0.5: 127 -> 0.498 not salient, 128 -> 0.502 salient
    assert saliency(np.array([[0, 127, 128, 255]], np.uint8)).tolist() == [[0, 0, 255, 255]]
    # NYUD class names that are PASCAL-Context classes: air conditioner 3, wall 440, and tvmonitor 427 (added
    # by hand in the official code); aeroplane (2) and sky (360) are not NYUD classes
    assert {3, 427, 440} <= NORMALS_VALID_CONTEXT_IDS and not {2, 360} & NORMALS_VALID_CONTEXT_IDS
    assert len(NORMALS_VALID_CONTEXT_IDS) == 170
    assert len(PASCAL_MT_CLASSES) == 21 and PASCAL_MT_CLASSES[15] == "person"
    assert len(PART_CLASSES) == 7 and set(HUMAN_PARTS_6.values()) == set(range(1, 7))


# ---------------------------------------------------------------- PASCAL-MT fixture tree
def part_mat(path, stem, objects):
    """A PASCAL-Part annotation as the release stores it: anno.objects(i).{class, class_ind, mask, parts}."""
    objs = np.zeros((1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    for i, (cls, parts) in enumerate(objects):
        if parts:
            parr = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            for j, (name, mask) in enumerate(parts):
                parr[0, j] = (name, mask.astype(np.uint8))
        else:
            parr = np.zeros((0, 0))
        whole = np.ones((H, W), np.uint8)
        objs[0, i] = ("person" if cls == 15 else "cat", np.array([[cls]], np.uint8), whole, parr)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (stem, objs)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"anno": anno})


def box(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


SEMSEG = np.resize(np.array([0, 15, 20, 255, 7, 1], np.uint8), H * W).reshape(H, W)
SAL = np.resize(np.array([0, 127, 128, 255], np.uint8), H * W).reshape(H, W)
NORMALS_RAW = np.resize(np.array([[255, 128, 0], [10, 200, 90], [128, 128, 255]], np.uint8), (H, W, 3))
LABELMAP = np.full((H, W), 3, np.uint16)  # 3 = 'air conditioner': a normals class
LABELMAP[:, 4:] = 2  # 2 = 'aeroplane': not one


def write_pascal(root, train=("2008_000001", "2008_000002", "2008_000003"), val=("2010_000004", "2010_000005")):
    images = {}
    for i, stem in enumerate([*train, *val]):
        images[stem] = image(root / "JPEGImages" / f"{stem}.jpg")
        sub = "VOC12" if i % 2 == 0 else "pascal-context"
        png(root / "semseg" / sub / f"{stem}.png", SEMSEG)
        png(root / "sal_distill" / f"{stem}.png", SAL)
        png(root / "normals_distill" / f"{stem}.png", NORMALS_RAW)
        (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(root / "pascal-context" / "trainval" / f"{stem}.mat"), {"LabelMap": LABELMAP})
        if i == 0:  # a person with parts, a cat with parts (not human parts), a person without parts
            objects = [
                (15, [("hair", box(0, 2, 0, 4)), ("torso", box(2, 4, 0, 4)), ("llarm", box(4, 6, 0, 2))]),
                (8, [("head", box(0, 6, 6, 8))]),
                (15, []),
                (15, [("ruleg", box(4, 6, 1, 3))]),  # painted after llarm: wins where they overlap
            ]
        else:
            objects = [(8, [("head", box(0, 2, 0, 2))])]  # no person: the map is ignored
        part_mat(root / "human_parts" / f"{stem}.mat", stem, objects)
    lists = root / "ImageSets" / "Context"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(train) + "\n")
    (lists / "val.txt").write_text("\n".join(val) + "\n")
    return images


PASCAL_TASKS = ["semseg", "parts", "sal", "normals", "edge"]


def expected_parts():
    p = np.zeros((H, W), np.int64)
    p[0:2, 0:4] = 1  # hair -> head
    p[2:4, 0:4] = 2  # torso
    p[4:6, 0:2] = 4  # llarm -> lower arm
    p[4:6, 1:3] = 5  # ruleg -> upper leg, over llarm
    return p


def test_pascal_mt_builds_every_task_and_reads_back(tmp_path):
    images = write_pascal(tmp_path / "PASCAL_MT")
    src = PascalMtSource(str(tmp_path / "PASCAL_MT"))
    assert src.members == ["rgb", *PASCAL_TASKS] and src.splits() == ["train", "val"]
    m = write_dataset(src, tmp_path / "ds", shard_size=2, progress=False)
    assert m["members"] == ["rgb", *PASCAL_TASKS] and "depth" not in m["members"]
    assert m["params"]["tasks"] == PASCAL_TASKS and m["params"]["modalities"] == ["rgb"]
    assert m["classes"] == PASCAL_MT_CLASSES
    back = read_back(tmp_path / "ds", "train", PASCAL_TASKS)
    assert list(back) == ["2008_000001", "2008_000002", "2008_000003"]
    first = back["2008_000001"]
    assert np.array_equal(first["semseg"], SEMSEG.astype(np.int64))
    assert np.array_equal(first["parts"], expected_parts())
    assert np.array_equal(back["2008_000002"]["parts"], np.full((H, W), 255))  # no person: all ignored
    assert np.array_equal(first["sal"][0], (SAL >= 128).astype(np.float32))
    # normals: 2c/255 - 1 on air-conditioner pixels (columns 0..3), missing on aeroplane pixels
    n = first["normals"].transpose(1, 2, 0)
    want = decode_normals(NORMALS_RAW)
    assert np.allclose(n[:, :4], want[:, :4], atol=1e-6) and not n[:, 4:].any()
    c = encode_normals(2.0 * NORMALS_RAW.astype(np.float32) / 255.0 - 1.0)
    assert np.array_equal(c, NORMALS_RAW)  # the shard holds the distributed bytes exactly
    edge = np.zeros((H, W), np.float32)
    edge[1:, 3] = 1.0
    assert np.array_equal(first["edge"][0], edge)
    # the RGB the loader gives back is the JPEG's pixels (normalised by the loader's mean/std)
    with (tmp_path / "ds" / "manifest.json").open() as f:
        assert json.load(f)["splits"]["val"]["num_samples"] == 2
    raw = ShardStream(tmp_path / "ds", "val", tasks=[], modalities=["rgb"], batch_size=1, train=False)
    rgb = next(iter(raw))["inputs"]["rgb"].numpy().transpose(1, 2, 0)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    assert np.allclose((rgb * std + mean) * 255.0, images["2010_000004"], atol=1e-3)


def test_pascal_mt_same_bytes_with_one_or_two_workers(tmp_path):
    write_pascal(tmp_path / "P")
    one = run_cli("pascal-mt", "--root", tmp_path / "P", "--out", tmp_path / "one", "--shard-size", 2, "--workers", 1)
    two = run_cli("pascal-mt", "--root", tmp_path / "P", "--out", tmp_path / "two", "--shard-size", 2, "--workers", 2)
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert json.loads(one.stdout)["splits"] == {"train": 3, "val": 2}
    assert shard_sha(tmp_path / "one") == shard_sha(tmp_path / "two") and len(shard_sha(tmp_path / "one")) == 3
    assert (tmp_path / "one/manifest.json").read_bytes() == (tmp_path / "two/manifest.json").read_bytes()


def test_pascal_mt_task_folders_that_are_absent_are_absent_members(tmp_path):
    write_pascal(tmp_path / "P")
    for sub in ("normals_distill", "sal_distill"):
        for f in (tmp_path / "P" / sub).iterdir():
            f.unlink()
        (tmp_path / "P" / sub).rmdir()
    src = PascalMtSource(str(tmp_path / "P"))
    assert src.members == ["rgb", "semseg", "parts", "edge"]
    m = write_dataset(src, tmp_path / "ds", progress=False)
    with pytest.raises(Exception, match="sal"):
        read_back(tmp_path / "ds", "train", ["sal"])
    assert m["params"]["tasks"] == ["semseg", "parts", "edge"]


def _bad_pascal(tmp_path, case):
    root = tmp_path / "P"
    write_pascal(root)
    if case == "missing":
        (root / "sal_distill" / "2008_000002.png").unlink()
        return r"train\.txt:2: image '2008_000002' is listed but .*sal_distill/2008_000002\.png does not exist"
    if case == "label":
        bad = SEMSEG.copy()
        bad[0, 0] = 21
        png(root / "semseg" / "pascal-context" / "2008_000002.png", bad)
        return r"semseg/pascal-context/2008_000002\.png: label values \[21\] are outside 0\.\.20"
    if case == "size":
        png(root / "sal_distill" / "2010_000005.png", np.zeros((H + 1, W), np.uint8))
        return r"sal_distill/2010_000005\.png: size \(7, 8\) differs from its image's \(6, 8\)"
    if case == "part":
        part_mat(root / "human_parts" / "2008_000003.mat", "2008_000003", [(15, [("tail", box(0, 1, 0, 1))])])
        return r"human_parts/2008_000003\.mat: object 0 part 0: unknown human part 'tail'"
    if case == "mat":
        (root / "pascal-context" / "trainval" / "2008_000001.mat").write_bytes(b"not a mat file")
        return r"pascal-context/trainval/2008_000001\.mat: not a readable MATLAB \.mat file"
    (root / "JPEGImages").rename(root / "images")
    return r"JPEGImages does not exist; .* is not in the PASCAL_MT layout"


@pytest.mark.parametrize("case", ["missing", "label", "size", "part", "mat", "layout"])
def test_pascal_mt_bad_input_is_a_named_error_and_writes_nothing(tmp_path, case):
    message = _bad_pascal(tmp_path, case)
    with pytest.raises(SourceError, match=message):
        write_dataset(PascalMtSource(str(tmp_path / "P")), tmp_path / "out", progress=False, workers=2)
    assert not (tmp_path / "out").exists()
    result = run_cli("pascal-mt", "--root", tmp_path / "P", "--out", tmp_path / "out")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and re.search(message, payload["error"])
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["P"]


# ---------------------------------------------------------------- SUN RGB-D (CEN layout)
def toolbox_depth(mm):
    """How the SUN RGB-D toolbox stores millimetres: rotated left by 3 bits in 16 bits."""
    mm = np.asarray(mm, np.uint32)
    return (((mm << 3) | (mm >> 13)) & 0xFFFF).astype(np.uint16)


def test_sunrgbd_depth_undoes_the_toolbox_bit_rotation():
    assert toolbox_depth([1234]).tolist() == [9872]  # 1234 * 8
    assert toolbox_depth([8193]).tolist() == [9]  # 8193 = 2**13 + 1: the top bit wraps to bit 0
    assert np.allclose(sunrgbd_depth(np.array([[9872, 9, 0]], np.uint16)), [[1.234, 8.193, 0.0]])


MASK = np.resize(np.array([0, 36, 255, 4, 17], np.uint8), H * W).reshape(H, W)
DEPTH_MM = np.resize(np.array([0, 1234, 8193, 500, 4000], np.uint32), H * W).reshape(H, W)


def write_sun(root, train=(1, 2, 3), test=(1, 2)):
    """CEN's layout; test images are 000001.., train images too, their masks numbered + 5050 as CEN's loader
    expects for the second list, and the first train image in another size (SUN RGB-D mixes sensors)."""
    lines = {"train": [], "test": []}
    for split, nums in (("train", train), ("test", test)):
        for n in nums:
            stem = f"{n:06d}" if split == "test" else f"{n + 100:06d}"
            h, w = (H + 2, W + 2) if (split, n) == ("train", 1) else (H, W)
            image(root / "rgb" / f"{stem}.jpg", h, w)
            mask_no = int(stem) + (5050 if split == "train" else 0)
            png(root / "masks" / f"{mask_no:06d}.png", np.resize(MASK, (h, w)))
            png(root / "depth" / f"{stem}.png", toolbox_depth(np.resize(DEPTH_MM, (h, w))))
            lines[split].append(f"rgb/{stem}.jpg\tmasks/{stem}.png\tdepth/{stem}.png")
    (root / "train.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "test.txt").write_text("\n".join(lines["test"]) + "\n")
    return root


def test_sunrgbd_builds_rgb_depth_semseg_and_reads_back(tmp_path):
    write_sun(tmp_path / "sun")
    src = SunrgbdSource(str(tmp_path / "sun"))
    assert src.classes == SUNRGBD37_CLASSES and len(src.classes) == 37 and src.splits() == ["train", "test"]
    m = write_dataset(src, tmp_path / "ds", shard_size=2, progress=False)
    assert m["members"] == ["rgb", "depth", "semseg"]
    assert m["params"]["modalities"] == ["rgb", "depth"] and m["params"]["tasks"] == ["semseg"]
    back = read_back(tmp_path / "ds", "test", ["semseg", "depth"], modalities=("rgb", "depth"))
    assert list(back) == ["000001", "000002"]
    s = back["000001"]
    assert np.array_equal(s["semseg"], MASK.astype(np.int64))
    assert np.allclose(s["depth"][0], DEPTH_MM / 1000.0, atol=1e-6)
    train = read_back(tmp_path / "ds", "train", ["semseg"])
    assert train["000101"]["semseg"].shape == (H + 2, W + 2)  # the +5050 mask of another-sized frame
    meta = src.load("test", "000002")["meta"]
    assert meta == {"id": "000002", "stem": "000002", "source": "sunrgbd", "split": "test", "depth_scale": 0.001}


def test_sunrgbd_label_base_1_and_linear_depth(tmp_path):
    root = write_sun(tmp_path / "sun", train=(1,), test=(1,))
    raw = np.resize(np.array([0, 1, 37, 5], np.uint8), (H, W))
    png(root / "masks" / "000001.png", raw)
    png(root / "depth" / "000001.png", np.full((H, W), 5000, np.uint16))
    src = SunrgbdSource(str(root), label_base=1, depth_encoding="linear", depth_unit=0.0002, intrinsics="500,500,4,3")
    s = src.load("test", "000001")
    assert np.array_equal(s["semseg"], np.resize(np.array([255, 0, 36, 4], np.uint8), (H, W)))
    assert np.allclose(s["depth"], 1.0) and s["meta"]["intrinsics"] == [500.0, 500.0, 4.0, 3.0]


def test_sunrgbd_same_bytes_with_one_or_two_workers(tmp_path):
    write_sun(tmp_path / "sun")
    one = run_cli("sunrgbd", "--root", tmp_path / "sun", "--out", tmp_path / "one", "--shard-size", 2, "--workers", 1)
    two = run_cli("sunrgbd", "--root", tmp_path / "sun", "--out", tmp_path / "two", "--shard-size", 2, "--workers", 2)
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert json.loads(one.stdout)["splits"] == {"train": 3, "test": 2}
    assert shard_sha(tmp_path / "one") == shard_sha(tmp_path / "two")
    digest = hashlib.sha256((tmp_path / "one/manifest.json").read_bytes()).hexdigest()
    assert digest == hashlib.sha256((tmp_path / "two/manifest.json").read_bytes()).hexdigest()


def _bad_sun(tmp_path, case):
    root = write_sun(tmp_path / "sun")
    if case == "missing":
        (root / "depth" / "000102.png").unlink()
        return r"train\.txt:2: listed file .*depth/000102\.png does not exist"
    if case == "label":
        png(root / "masks" / "000002.png", np.full((H, W), 37, np.uint8))
        return r"masks/000002\.png: label values \[37\] are outside 0\.\.36"
    if case == "size":
        png(root / "depth" / "000001.png", np.zeros((H, W + 3), np.uint16))
        return r"depth/000001\.png: size \(6, 11\) differs from its image's \(6, 8\)"
    if case == "raw":
        for f in ("train.txt", "test.txt"):
            (root / f).unlink()
        (root / "kv2" / "kinect2data").mkdir(parents=True)
        return r"is the raw SUN RGB-D release \(sensor folder 'kv2'\), which this converter does not read"
    for f in ("train.txt", "test.txt"):
        (root / f).unlink()
    return r"is not in CEN's layout: no split list found"


@pytest.mark.parametrize("case", ["missing", "label", "size", "raw", "layout"])
def test_sunrgbd_bad_input_is_a_named_error_and_writes_nothing(tmp_path, case):
    message = _bad_sun(tmp_path, case)
    with pytest.raises(SourceError, match=message):
        write_dataset(SunrgbdSource(str(tmp_path / "sun")), tmp_path / "out", progress=False, workers=2)
    result = run_cli("sunrgbd", "--root", tmp_path / "sun", "--out", tmp_path / "out")
    payload = json.loads(result.stdout)
    assert result.exit_code == 2 and payload["ok"] is False and re.search(message, payload["error"])
    assert [p.name for p in tmp_path.iterdir()] == ["sun"]


@pytest.mark.parametrize("option", ["--workers", "--progress-every"])
def test_build_refuses_a_zero_option_naming_it(tmp_path, option):
    write_pascal(tmp_path / "P", train=("2008_000001",), val=("2010_000002",))
    result = run_cli("pascal-mt", "--root", tmp_path / "P", "--out", tmp_path / "out", option, 0)
    assert result.exit_code == 2 and option in result.output
    assert not (tmp_path / "out").exists()


def test_build_progress_lines_name_the_converter_and_split(tmp_path):
    write_pascal(tmp_path / "P")
    result = CliRunner().invoke(
        cli,
        ["data", "build", "pascal-mt", "--root", str(tmp_path / "P"), "--out", str(tmp_path / "o")]
        + ["--progress-every", "0.000001"],
    )
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("pascal-mt/")]
    assert lines[0].startswith("pascal-mt/train: 1/3 samples (33.3%), ")
    assert lines[-1].startswith("pascal-mt/val: 2/2 samples (100.0%), ")


def test_thin_gives_the_same_lines_for_a_fortran_ordered_map():
    band = np.zeros((6, 8), bool)
    band[:, 3:5] = True
    assert np.array_equal(thin(np.asfortranarray(band)), thin(band)) and thin(band).sum() == 5


@pytest.mark.parametrize("flip_z", [True, False])
def test_nyud_mt_normals_check_at_native_size_reads_every_second_pixel_and_still_catches_a_flip(tmp_path, flip_z):
    """At 480x640 the nyud-mt sign check runs on a 2x-subsampled grid (benchmarks/converters.py)."""
    hw = (480, 640)
    root = tmp_path / "nyud"
    image(root / "images" / "0001.jpg", *hw)
    for name, arr in (
        ("depth", plane(hw)),
        ("normals", np.broadcast_to(N_OURS * [1, 1, -1 if flip_z else 1], (*hw, 3)).astype(np.float32)),
    ):
        (root / name).mkdir(parents=True)
        np.save(root / name / "0001.npy", arr)
    (root / "gt_sets").mkdir()
    (root / "gt_sets" / "train.txt").write_text("0001\n")
    if flip_z:  # the release's convention (z towards the camera): the default flip makes it ours
        n = NyudMtSource(root=str(root)).load("train", "0001")["normals"]
        np.testing.assert_allclose(n[240, 320], N_OURS, atol=1e-6)
    else:
        with pytest.raises(SourceError, match=r"normals[/\\]0001\.npy.*axis z"):
            NyudMtSource(root=str(root)).load("train", "0001")
