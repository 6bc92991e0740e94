"""The cityscapes, ade20k and pascal-context converters on tiny trees in each official layout."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from datasets.loader import ShardStream
from datasets.manifest import load_manifest
from datasets.sources.ade20k import ADE20K_CLASSES, Ade20kSource
from datasets.sources.base import SourceError
from datasets.sources.cityscapes import CITYSCAPES_CLASSES, CityscapesSource, depth_from_disparity
from datasets.sources.pascal_context import PASCAL_CONTEXT59_CLASSES, PascalContextSource
from datasets.writer import write_dataset
from pipelines.cli.main import cli

H, W = 6, 8
RNG = np.random.default_rng(0)


def png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def image(path):
    """A random RGB image at ``path`` (PNG or JPEG by suffix); returns what a reader decodes from it."""
    png(path, RNG.integers(0, 256, (H, W, 3), dtype=np.uint8))
    return np.asarray(Image.open(path).convert("RGB"))


def label(values):
    """An H×W label image cycling through ``values``."""
    return np.resize(np.asarray(values, dtype=np.uint8), H * W).reshape(H, W)


def read_back(root, split):
    """{key: (rgb uint8 H×W×3, semseg H×W)} through the project's loader (eval order, every sample once)."""
    stream = ShardStream(root, split, tasks=["semseg"], modalities=["rgb"], batch_size=1, train=False)
    out = {}
    for item in stream:
        sem = item["targets"]["semseg"].numpy()
        out[item["id"]] = sem
    return out


# ---------------------------------------------------------------- cityscapes
CS_IDS = [7, 26, 0, 33, 24, 9, 8, 23]
CS_TRAIN_IDS = [0, 13, 255, 18, 11, 255, 1, 10]  # by hand from cityscapesScripts' labels.py


def write_cityscapes(root, frames=(("train", "aachen", 0), ("train", "bochum", 1), ("val", "lindau", 2))):
    for split, city, n in frames:
        stem = f"{city}_{n:06d}_000019"
        image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label(CS_IDS))
    return root


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    root = write_cityscapes(tmp_path / "cs")
    src = CityscapesSource(root=str(root))
    assert src.classes == CITYSCAPES_CLASSES and len(src.classes) == 19
    assert src.members == ["rgb", "semseg"]
    assert src.splits() == ["train", "val"]
    assert src.keys("train") == ["aachen_000000_000019", "bochum_000001_000019"]
    m = write_dataset(src, tmp_path / "ds", shard_size=1)
    assert m["members"] == ["rgb", "semseg"] and m["classes"][13] == "car" and m["classes"][0] == "road"
    assert {k: v["num_samples"] for k, v in m["splits"].items()} == {"train": 2, "val": 1}
    back = read_back(tmp_path / "ds", "val")
    assert list(back) == ["lindau_000002_000019"]
    assert np.array_equal(back["lindau_000002_000019"], label(CS_TRAIN_IDS).astype(np.int64))
    assert sorted(read_back(tmp_path / "ds", "train")) == ["aachen_000000_000019", "bochum_000001_000019"]


def test_cityscapes_depth_from_disparity(tmp_path):
    root = write_cityscapes(tmp_path / "cs", frames=(("train", "ulm", 0),))
    stem = "ulm_000000_000019"
    disp = np.full((H, W), 1 + 256 * 20, dtype=np.uint16)  # d = 20 px
    disp[0, 0] = 0  # no disparity
    disp[0, 1] = 1  # d = 0: no disparity
    (root / "disparity" / "train" / "ulm").mkdir(parents=True)
    Image.fromarray(disp).save(root / "disparity" / "train" / "ulm" / f"{stem}_disparity.png")
    cam = {"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 2000.0, "fy": 2001.0, "u0": 4.0, "v0": 3.0}}
    (root / "camera" / "train" / "ulm").mkdir(parents=True)
    (root / "camera" / "train" / "ulm" / f"{stem}_camera.json").write_text(json.dumps(cam))
    src = CityscapesSource(root=str(root), depth=True)
    assert src.members == ["rgb", "semseg", "depth"]
    s = src.load("train", stem)
    assert s["depth"][0, 0] == 0 and s["depth"][0, 1] == 0
    assert s["depth"][3, 3] == pytest.approx(0.2 * 2000.0 / 20.0)  # 20 m
    assert s["meta"]["intrinsics"] == [2000.0, 2001.0, 4.0, 3.0]
    assert depth_from_disparity(np.array([[257]], np.uint16), 1000.0, 0.5)[0, 0] == pytest.approx(500.0)
    m = write_dataset(src, tmp_path / "ds")
    assert m["members"] == ["rgb", "semseg", "depth"]
    stream = ShardStream(
        tmp_path / "ds", "train", tasks=["semseg", "depth"], modalities=["rgb"], batch_size=1, train=False
    )
    (item,) = list(stream)
    depth = item["targets"]["depth"][0].numpy()
    assert depth[0, 0] == 0 and depth[0, 1] == 0 and depth[3, 3] == pytest.approx(20.0, abs=0.0005)
    # a camera file without the baseline is named
    (root / "camera" / "train" / "ulm" / f"{stem}_camera.json").write_text(json.dumps({"intrinsic": cam["intrinsic"]}))
    with pytest.raises(SourceError, match=r"_camera\.json: field extrinsic\.baseline"):
        CityscapesSource(root=str(root), depth=True).load("train", stem)
    # without the disparity folder, depth is refused naming the missing file
    with pytest.raises(SourceError, match="_disparity.png"):
        CityscapesSource(root=str(write_cityscapes(tmp_path / "nodisp")), depth=True)


def test_cityscapes_bad_inputs(tmp_path):
    with pytest.raises(SourceError, match="is not the Cityscapes layout"):
        CityscapesSource(root=str(tmp_path))
    root = write_cityscapes(tmp_path / "cs")
    lab = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    png(lab, label([7, 40, 34]))  # ids 34 and 40 are not Cityscapes label ids
    with pytest.raises(SourceError, match=r"aachen_000000_000019_gtFine_labelIds\.png: label values \[34, 40\]"):
        CityscapesSource(root=str(root)).load("train", "aachen_000000_000019")
    png(lab, np.zeros((H + 1, W), np.uint8))
    with pytest.raises(SourceError, match=r"labelIds\.png: size \(7, 8\) differs from its image's \(6, 8\)"):
        CityscapesSource(root=str(root)).load("train", "aachen_000000_000019")
    lab.unlink()
    with pytest.raises(SourceError, match=r"has no .*aachen_000000_000019_gtFine_labelIds\.png"):
        CityscapesSource(root=str(root))
    png(lab, label([7]))
    (root / "leftImg8bit" / "val" / "lindau" / "notes.png").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"notes\.png: not a Cityscapes image name"):
        CityscapesSource(root=str(root))


# ---------------------------------------------------------------- ade20k
def write_ade(root, n_train=2, n_val=1):
    for folder, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            image(root / "images" / folder / f"{stem}.jpg")
            png(root / "annotations" / folder / f"{stem}.png", label([0, 1, 150, 13, 255]))
    return root


def test_ade20k_reduces_zero_label(tmp_path):
    write_ade(tmp_path / "ADEChallengeData2016")
    src = Ade20kSource(root=str(tmp_path))  # the folder holding ADEChallengeData2016 works too
    assert src.classes == ADE20K_CLASSES and len(src.classes) == 150
    assert src.classes[0] == "wall" and src.classes[12] == "person" and src.classes[149] == "flag"
    assert src.splits() == ["train", "val"] and src.keys("train") == ["ADE_train_00000001", "ADE_train_00000002"]
    m = write_dataset(src, tmp_path / "ds", shard_size=2)
    assert m["members"] == ["rgb", "semseg"] and len(m["classes"]) == 150
    back = read_back(tmp_path / "ds", "val")
    assert np.array_equal(back["ADE_val_00000001"], label([255, 0, 149, 12, 255]).astype(np.int64))


def test_ade20k_bad_inputs(tmp_path):
    with pytest.raises(SourceError, match="is not the ADEChallengeData2016 layout"):
        Ade20kSource(root=str(tmp_path))
    root = write_ade(tmp_path / "ade")
    lab = root / "annotations" / "training" / "ADE_train_00000001.png"
    png(lab, label([0, 151, 200]))
    with pytest.raises(SourceError, match=r"ADE_train_00000001\.png: label values \[151, 200\] are not in ADE20K"):
        Ade20kSource(root=str(root)).load("train", "ADE_train_00000001")
    lab.unlink()
    with pytest.raises(SourceError, match=r"ADE_train_00000001\.jpg has no annotation .*ADE_train_00000001\.png"):
        Ade20kSource(root=str(root))


# ---------------------------------------------------------------- pascal-context
def write_context(root, train=("2008_000002", "2008_000003"), val=("2008_000007",)):
    voc = root / "VOCdevkit" / "VOC2010"
    for stem in (*train, *val):
        image(voc / "JPEGImages" / f"{stem}.jpg")
        png(voc / "SegmentationClassContext" / f"{stem}.png", label([0, 1, 59, 37, 255]))
    lists = voc / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(train) + "\n")
    (lists / "val.txt").write_text("\n".join(val) + "\n")
    return voc


def test_pascal_context_59(tmp_path):
    write_context(tmp_path)
    src = PascalContextSource(root=str(tmp_path / "VOCdevkit"))
    assert src.classes == PASCAL_CONTEXT59_CLASSES and len(src.classes) == 59
    assert src.classes[0] == "aeroplane" and src.classes[36] == "person" and src.classes[58] == "wood"
    m = write_dataset(src, tmp_path / "ds", shard_size=8)
    assert m["members"] == ["rgb", "semseg"]
    assert {k: v["num_samples"] for k, v in m["splits"].items()} == {"train": 2, "val": 1}
    back = read_back(tmp_path / "ds", "val")
    assert np.array_equal(back["2008_000007"], label([255, 0, 58, 36, 255]).astype(np.int64))


def test_pascal_context_bad_inputs(tmp_path):
    with pytest.raises(SourceError, match="is not the PASCAL-Context layout"):
        PascalContextSource(root=str(tmp_path))
    voc = write_context(tmp_path)
    png(voc / "SegmentationClassContext" / "2008_000002.png", label([60, 0]))
    with pytest.raises(SourceError, match=r"2008_000002\.png: label values \[60\] are not in PASCAL-Context 59"):
        PascalContextSource(root=str(voc)).load("train", "2008_000002")
    png(voc / "SegmentationClassContext" / "2008_000002.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(SourceError, match=r"2008_000002\.png: size \(6, 10\) differs"):
        PascalContextSource(root=str(voc)).load("train", "2008_000002")
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000007\n2008_000099\n")
    with pytest.raises(SourceError, match=r"val\.txt:2: stem '2008_000099' is listed but .*2008_000099\.jpg"):
        PascalContextSource(root=str(voc))


# ---------------------------------------------------------------- the CLI, atomic output
@pytest.mark.parametrize("source", ["cityscapes", "ade20k", "pascal-context"])
def test_data_build_a_bad_label_exits_2_and_leaves_no_dataset(tmp_path, source):
    if source == "cityscapes":
        root = write_cityscapes(tmp_path / "src")
        bad = root / "gtFine" / "val" / "lindau" / "lindau_000002_000019_gtFine_labelIds.png"
        png(bad, label([7, 99]))
    elif source == "ade20k":
        root = write_ade(tmp_path / "src")
        bad = root / "annotations" / "validation" / "ADE_val_00000001.png"
        png(bad, label([3, 151]))
    else:
        root = write_context(tmp_path / "src")
        bad = root / "SegmentationClassContext" / "2008_000007.png"
        png(bad, label([3, 77]))
    out = tmp_path / "ds"
    args = ["data", "build", source, "--root", str(root), "--out", str(out), "--workers", "1", "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["error"]
    assert error.startswith(str(bad)) and "label values" in error
    assert not out.exists()  # the train split was written to a temporary folder that is gone
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_data_build_cityscapes_cli(tmp_path):
    root = write_cityscapes(tmp_path / "src")
    res = CliRunner().invoke(
        cli, ["data", "build", "cityscapes", "--root", str(root), "--out", str(tmp_path / "ds"), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["splits"] == {"train": 2, "val": 1}
    m = load_manifest(tmp_path / "ds")
    assert m["source"] == "cityscapes" and m["params"] == {"root": str(root), "depth": False}
