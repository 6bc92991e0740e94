"""Real-dataset converters on tiny fixtures written in each on-disk format."""

import json

import h5py
import numpy as np
import pytest
import scipy.io
import yaml
from PIL import Image

from datasets.codec import decode_sample, encode_normals, encode_sample
from datasets.geometry import normals_from_depth
from datasets.labels import edges_from_labels
from datasets.sources._common import NYUD_INTRINSICS, intrinsics_for, sanitize_key
from datasets.sources.base import SourceError
from datasets.sources.folder import FolderSource, hash_fraction
from datasets.sources.nyud_cen import NyudCenSource
from datasets.sources.nyud_mat import NyudMatSource
from datasets.sources.nyud_mt import NyudMtSource

H, W = 12, 16
RNG = np.random.default_rng(0)
N_OURS = np.array([0.3, -0.4, -1.0]) / np.linalg.norm([0.3, -0.4, -1.0])  # faces the camera


def plane(hw=(H, W)):
    """Depth of a tilted plane seen with the NYUD intrinsics scaled to hw (what the sources assume)."""
    fx, fy, cx, cy = intrinsics_for(hw, None)
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float64)
    ray = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)
    return (-2.0 / (ray @ N_OURS)).astype(np.float32)


def rgb():
    return RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def check_roundtrip(sample):
    """The sample survives the shard codec: depth within 1 mm, normals within 1/127, the rest exact."""
    back = decode_sample(encode_sample(sample))
    assert set(back) == set(sample)
    for key, value in sample.items():
        if key == "depth":
            np.testing.assert_allclose(back[key], value, atol=0.0005 + 1e-6)
        elif key == "normals":
            np.testing.assert_allclose(back[key], value, atol=1 / 127)
            assert np.array_equal(np.any(back[key] != 0, -1), np.any(value != 0, -1))
        elif key == "meta":
            assert back[key] == value
        else:
            assert np.array_equal(back[key], value), key


# ---------------------------------------------------------------- nyud-mt
def write_mt(root, stems=("0001", "scene.0002"), flip_z=True, val=("v0001",)):
    written = {}
    for s in (*stems, *val):
        img = rgb()
        png(root / "images" / f"{s}.jpg", img)
        seg = RNG.integers(0, 41, (H, W)).astype(np.uint8)
        png(root / "segmentation" / f"{s}.png", seg)
        depth = plane()
        depth[0, 0] = np.nan
        np.save(root / "depth" / f"{s}.npy", depth) if (root / "depth").is_dir() else None
        n_file = np.broadcast_to(N_OURS * [1, 1, -1 if flip_z else 1], (H, W, 3)).astype(np.float32).copy()
        n_file[3, 3] = 0  # missing normal
        edge = (RNG.random((H, W)) > 0.7).astype(np.float32) * 0.5
        for name, arr in (("depth", depth), ("normals", n_file), ("edge", edge)):
            (root / name).mkdir(exist_ok=True)
            np.save(root / name / f"{s}.npy", arr)
        written[s] = dict(
            img=np.asarray(Image.open(root / "images" / f"{s}.jpg").convert("RGB")),
            seg=seg,
            depth=depth,
            normals=n_file,
            edge=edge,
        )
    (root / "gt_sets").mkdir()
    (root / "gt_sets" / "train.txt").write_text("\n".join(stems) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(val) + "\n")
    return written


def test_nyud_mt_roundtrip(tmp_path):
    w = write_mt(tmp_path)
    src = NyudMtSource(root=str(tmp_path))
    assert src.members == ["rgb", "depth", "semseg", "normals", "edge"] and len(src.classes) == 40
    assert src.splits() == ["train", "val"]
    dotted = sanitize_key("scene.0002")
    assert src.keys("train") == ["0001", dotted] and dotted.startswith("scene_0002-")
    s = src.load("train", dotted)
    ref = w["scene.0002"]
    assert np.array_equal(s["rgb"], ref["img"])
    assert np.array_equal(s["semseg"], np.where(ref["seg"] == 0, 255, ref["seg"].astype(int) - 1))
    assert s["depth"][0, 0] == 0 and np.allclose(s["depth"][1:, 1:], ref["depth"][1:, 1:])
    np.testing.assert_allclose(s["normals"][5, 5], N_OURS, atol=1e-6)  # z flipped back to ours
    assert np.all(s["normals"][3, 3] == 0)
    assert np.array_equal(s["edge"], (ref["edge"] > 0).astype(np.uint8))
    fx, fy, cx, cy = NYUD_INTRINSICS
    assert s["meta"].pop("intrinsics") == pytest.approx(
        [fx * W / 640, fy * H / 480, cx * W / 640, cy * H / 480], abs=1e-6
    )
    assert s["meta"] == {
        "id": dotted,
        "stem": "scene.0002",
        "source": "nyud-mt",
        "split": "train",
        "depth_scale": 0.001,
    }
    s["meta"]["intrinsics"] = intrinsics_for((H, W), None)
    check_roundtrip(s)


def test_nyud_mt_wrong_normals_convention_is_caught(tmp_path):
    write_mt(tmp_path, flip_z=False)  # file already in our convention; the default flip breaks it
    with pytest.raises(SourceError, match=r"normals[/\\]0001\.npy.*axis z"):
        NyudMtSource(root=str(tmp_path)).load("train", "0001")
    s = NyudMtSource(root=str(tmp_path), normals_flip="").load("train", "0001")
    np.testing.assert_allclose(s["normals"][5, 5], N_OURS, atol=1e-6)


def test_nyud_mt_only_present_tasks_and_intrinsics_override(tmp_path):
    write_mt(tmp_path, stems=("a",))
    for name in ("normals", "edge", "segmentation"):
        for f in (tmp_path / name).iterdir():
            f.unlink()
        (tmp_path / name).rmdir()
    src = NyudMtSource(root=str(tmp_path), intrinsics="100,101,7.5,5.5")
    assert src.members == ["rgb", "depth"]
    s = src.load("train", "a")
    assert set(s) == {"rgb", "depth", "meta"} and s["meta"]["intrinsics"] == [100.0, 101.0, 7.5, 5.5]


def test_nyud_mt_bad_inputs(tmp_path):
    with pytest.raises(SourceError, match="images"):
        NyudMtSource(root=str(tmp_path))
    write_mt(tmp_path)
    (tmp_path / "edge" / "0001.npy").unlink()
    with pytest.raises(SourceError, match=r"'0001'.*edge[/\\]0001\.npy"):
        NyudMtSource(root=str(tmp_path))
    np.save(tmp_path / "edge" / "0001.npy", np.zeros((H, W)))
    png(tmp_path / "segmentation" / "0001.png", np.full((H, W), 41, np.uint8))
    with pytest.raises(SourceError, match=r"segmentation[/\\]0001\.png: raw label values \[41\] are above 40"):
        NyudMtSource(root=str(tmp_path)).load("train", "0001")
    # A 16-bit label PNG's 256 is not read as the ignore value (256 - 1 = 255).
    png(tmp_path / "segmentation" / "0001.png", np.full((H, W), 256, np.uint16))
    with pytest.raises(SourceError, match=r"raw label values \[256\] are above 40"):
        NyudMtSource(root=str(tmp_path)).load("train", "0001")
    np.save(tmp_path / "depth" / "0001.npy", np.ones((H, W + 1), np.float32))
    with pytest.raises(SourceError, match=r"depth[/\\]0001\.npy.*differs"):
        NyudMtSource(root=str(tmp_path)).load("train", "0001")
    (tmp_path / "gt_sets" / "val.txt").write_text("v0001\nscene.0002\n")
    with pytest.raises(SourceError, match=r"gt_sets: stem 'scene.0002' is in split 'train' and in split 'val'"):
        NyudMtSource(root=str(tmp_path))
    with pytest.raises(SourceError, match="normals_flip"):
        NyudMtSource(root=str(tmp_path), normals_flip="w")


# ---------------------------------------------------------------- nyud-cen
def write_cen(root, line_style="tabs"):
    data = {}
    for s in ("000001", "000002", "000003"):
        img, mask = rgb(), RNG.integers(0, 40, (H, W)).astype(np.uint8)
        mask[0, :4] = 255
        mask[1, :2] = 45  # >= 40: ignored by CEN's evaluation
        depth = RNG.integers(0, 40000, (H, W)).astype(np.uint16)
        png(root / "rgb" / f"{s}.png", img)
        png(root / "masks" / f"{s}.png", mask)
        png(root / "depth" / f"{s}.png", depth)
        data[s] = dict(img=img, mask=mask, depth=depth)
    fmt = {"tabs": "rgb/{s}.png\tmasks/{s}.png\tdepth/{s}.png", "two": "rgb/{s}.png masks/{s}.png", "stem": "{s}"}[
        line_style
    ]
    (root / "train.txt").write_text("\n".join(fmt.format(s=s) for s in ("000001", "000002")) + "\n")
    (root / "val.txt").write_text(fmt.format(s="000003") + "\n")
    return data


@pytest.mark.parametrize("style", ["tabs", "two", "stem"])
def test_nyud_cen_roundtrip(tmp_path, style):
    data = write_cen(tmp_path, style)
    src = NyudCenSource(root=str(tmp_path))
    assert src.members == ["rgb", "depth", "semseg", "edge"]
    assert src.keys("train") == ["000001", "000002"] and src.keys("val") == ["000003"]
    s, ref = src.load("train", "000001"), data["000001"]
    assert np.array_equal(s["rgb"], ref["img"])
    np.testing.assert_allclose(s["depth"], ref["depth"] * 0.0002, rtol=1e-6)
    expect = np.where(ref["mask"] >= 40, 255, ref["mask"])
    assert np.array_equal(s["semseg"], expect) and s["semseg"][1, 0] == 255
    assert np.array_equal(s["edge"], edges_from_labels(expect))
    assert s["meta"]["stem"] == "000001" and s["meta"]["source"] == "nyud-cen"
    check_roundtrip(s)


def test_nyud_cen_options_and_bad_inputs(tmp_path):
    write_cen(tmp_path)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text("rgb/000001.png\tmasks/000001.png\tdepth/000001.png\n")
    with pytest.raises(
        SourceError,
        match=r"nyud-cen: the split lists: image '.*000001.png' is in split 'train' and "
        r"in split 'val'",
    ):
        NyudCenSource(root=str(tmp_path), val_list=str(lists / "val.txt"))
    (lists / "val.txt").write_text("rgb/000003.png\tmasks/000003.png\tdepth/000003.png\n")
    src = NyudCenSource(root=str(tmp_path), val_list=str(lists / "val.txt"), depth_unit=0.001, edges=False)
    assert "edge" not in src.load("val", "000003") and src.members == ["rgb", "depth", "semseg"]
    assert src.params()["val_list"] == str(lists / "val.txt")
    (tmp_path / "masks" / "000002.png").unlink()
    with pytest.raises(SourceError, match=r"train\.txt:2.*masks[/\\]000002\.png"):
        NyudCenSource(root=str(tmp_path))
    png(tmp_path / "depth" / "000003.png", np.zeros((H, W), np.uint8))
    with pytest.raises(SourceError, match=r"depth[/\\]000003\.png.*16-bit"):
        src.load("val", "000003")
    with pytest.raises(SourceError, match="depth_unit"):
        NyudCenSource(root=str(tmp_path), depth_unit=0)


# ---------------------------------------------------------------- nyud-mat
def write_mat(root, n=3):
    imgs = np.stack([rgb() for _ in range(n)])
    depths = np.stack([plane() for _ in range(n)])
    depths[1, 4, 5] = 0.0
    labels = RNG.integers(0, 5, (n, H, W)).astype(np.uint16)
    labels[:, :2, :3] = 894
    instances = RNG.integers(0, 3, (n, H, W)).astype(np.uint8)
    with h5py.File(root / "labeled.mat", "w") as f:  # MATLAB column-major: h5py sees axes reversed
        f["images"] = imgs.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
        f["instances"] = instances.transpose(0, 2, 1)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])})
    (root / "map.yaml").write_text(yaml.safe_dump({"classes": ["a", "b", "c"], "mapping": {1: 0, 2: 1, 3: 2, 894: 2}}))
    return imgs, depths, labels, instances


def test_nyud_mat_roundtrip(tmp_path):
    imgs, depths, labels, instances = write_mat(tmp_path)
    src = NyudMatSource(
        mat=str(tmp_path / "labeled.mat"), splits_mat=str(tmp_path / "splits.mat"), label_map=str(tmp_path / "map.yaml")
    )
    assert src.classes == ["a", "b", "c"] and src.members == ["rgb", "depth", "semseg", "normals", "edge"]
    assert src.keys("train") == ["0001", "0003"] and src.keys("val") == ["0002"]
    assert len(src.params()["label_map_sha256"]) == 64
    s = src.load("val", "0002")
    assert np.array_equal(s["rgb"], imgs[1]) and np.array_equal(s["depth"], depths[1])
    lut = np.array([255, 0, 1, 2, 255])
    assert np.array_equal(s["semseg"][2:], lut[labels[1, 2:]]) and np.all(s["semseg"][:2, :3] == 2)
    intr = intrinsics_for((H, W), None)
    assert np.array_equal(s["normals"], normals_from_depth(depths[1], intr))
    np.testing.assert_allclose(s["normals"][8, 10], N_OURS, atol=1e-5)
    assert np.all(s["normals"][4, 5] == 0) and np.all(s["normals"][3, 5] == 0)
    assert np.array_equal(s["edge"], edges_from_labels(labels[1].astype(int), instances[1].astype(int), ignore_index=0))
    assert s["meta"]["index"] == 2 and s["meta"]["stem"] == "2" and s["meta"]["split"] == "val"
    check_roundtrip(s)
    no_map = NyudMatSource(mat=str(tmp_path / "labeled.mat"), splits_mat=str(tmp_path / "splits.mat"))
    assert no_map.members == ["rgb", "depth", "normals", "edge"] and "semseg" not in no_map.load("train", "0003")


@pytest.mark.parametrize(
    "mapping, match",
    [
        ({900: 0}, r"map\.json.*'900'.*out of range"),
        ({1: 3}, r"map\.json.*'1' maps to 3"),
        ({"x": 1}, r"map\.json.*'x'"),
    ],
)
def test_nyud_mat_bad_label_map(tmp_path, mapping, match):
    write_mat(tmp_path)
    (tmp_path / "map.json").write_text(json.dumps({"classes": ["a", "b", "c"], "mapping": mapping}))
    with pytest.raises(SourceError, match=match):
        NyudMatSource(
            mat=str(tmp_path / "labeled.mat"),
            splits_mat=str(tmp_path / "splits.mat"),
            label_map=str(tmp_path / "map.json"),
        )


def test_nyud_mat_bad_files(tmp_path):
    write_mat(tmp_path)
    mat, spl = str(tmp_path / "labeled.mat"), str(tmp_path / "splits.mat")
    with pytest.raises(SourceError, match="rawDepths"):
        NyudMatSource(mat=mat, splits_mat=spl, raw_depth=True)
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [4]]), "testNdxs": np.array([[2]])})
    with pytest.raises(SourceError, match=r"'trainNdxs'.*\[4\]"):
        NyudMatSource(mat=mat, splits_mat=spl)
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[2]])})
    with pytest.raises(SourceError, match=r"splits.mat: frame 2 is in split 'train' and in split 'val'"):
        NyudMatSource(mat=mat, splits_mat=spl)
    with pytest.raises(SourceError, match="nope.mat"):
        NyudMatSource(mat=str(tmp_path / "nope.mat"), splits_mat=spl)
    with h5py.File(mat, "a") as f:
        del f["instances"]
    with pytest.raises(SourceError, match="'instances' is missing"):
        NyudMatSource(mat=mat, splits_mat=spl)


# ---------------------------------------------------------------- folder
def write_folder(root):
    data = {}
    for i, s in enumerate(("a", "b.c", "d")):
        img, seg = rgb(), RNG.integers(0, 3, (H, W)).astype(np.uint8)
        seg[0] = 250  # the YAML's ignore_index
        depth_mm = RNG.integers(0, 9000, (H, W)).astype(np.uint16)
        normals = np.broadcast_to(N_OURS, (H, W, 3)).astype(np.float32).copy()
        normals[2, 2] = 0
        edge = (RNG.random((H, W)) > 0.8).astype(np.uint8) * 255
        png(root / "images" / f"{s}.{'jpg' if i == 2 else 'png'}", img)
        png(root / "semseg" / f"{s}.png", seg)
        png(root / "edge" / f"{s}.png", edge)
        (root / "depth").mkdir(exist_ok=True)
        (root / "normals").mkdir(exist_ok=True)
        if i == 0:  # .npy variants: metres and float normals
            np.save(root / "depth" / f"{s}.npy", depth_mm * np.float32(0.001))
            np.save(root / "normals" / f"{s}.npy", normals)
        else:
            png(root / "depth" / f"{s}.png", depth_mm)
            png(root / "normals" / f"{s}.png", encode_normals(normals))
        data[s] = dict(
            img=np.asarray(Image.open(next((root / "images").glob(f"{s}.*"))).convert("RGB")),
            seg=seg,
            depth=depth_mm * 0.001,
            normals=normals,
            edge=edge,
        )
    (root / "classes.yaml").write_text("classes: [x, y, z]\nignore_index: 250\n")
    return data


def test_folder_roundtrip_with_hash_split(tmp_path):
    data = write_folder(tmp_path)
    src = FolderSource(root=str(tmp_path), classes=str(tmp_path / "classes.yaml"), val_fraction=0.5)
    assert src.members == ["rgb", "depth", "semseg", "normals", "edge"] and src.classes == ["x", "y", "z"]
    expected = {
        "train": [s for s in ("a", "b.c", "d") if hash_fraction(s) >= 0.5],
        "val": [s for s in ("a", "b.c", "d") if hash_fraction(s) < 0.5],
    }
    got = {sp: [src.load(sp, k)["meta"]["stem"] for k in src.keys(sp)] for sp in src.splits()}
    assert got == {k: v for k, v in expected.items() if v}
    for split in src.splits():
        for key in src.keys(split):
            s = src.load(split, key)
            ref = data[s["meta"]["stem"]]
            assert key == sanitize_key(s["meta"]["stem"])
            assert np.array_equal(s["rgb"], ref["img"])
            np.testing.assert_allclose(s["depth"], ref["depth"], atol=1e-6)
            assert np.array_equal(s["semseg"], np.where(ref["seg"] == 250, 255, ref["seg"]))
            np.testing.assert_allclose(s["normals"], ref["normals"], atol=1 / 127)
            assert np.array_equal(s["edge"], (ref["edge"] > 0).astype(np.uint8))
            check_roundtrip(s)
    assert len(src.params()["classes_sha256"]) == 64


def test_folder_split_files_and_bad_inputs(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("d\nb.c\n")
    classes = str(tmp_path / "classes.yaml")
    src = FolderSource(root=str(tmp_path), classes=classes)
    assert src.splits() == ["train"] and src.keys("train") == ["d", sanitize_key("b.c")]
    with pytest.raises(SourceError, match="option classes"):
        FolderSource(root=str(tmp_path))
    (tmp_path / "splits" / "val.txt").write_text("zzz\n")
    with pytest.raises(SourceError, match=r"val\.txt.*'zzz'"):
        FolderSource(root=str(tmp_path), classes=classes)
    (tmp_path / "splits" / "val.txt").unlink()
    (tmp_path / "depth" / "d.png").unlink()
    with pytest.raises(SourceError, match=r"stem 'd'.*depth"):
        FolderSource(root=str(tmp_path), classes=classes)
    for f in (tmp_path / "images").iterdir():
        f.unlink()
    with pytest.raises(SourceError, match="images"):
        FolderSource(root=str(tmp_path), classes=classes)


def test_a_sample_listed_in_two_splits_is_refused(tmp_path):
    root = tmp_path / "src"
    write_folder(root)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\nd\n")
    (root / "splits" / "val.txt").write_text("d\n")
    with pytest.raises(SourceError, match=r"folder: .*splits: stem 'd' is in split 'train' and in split 'val'"):
        FolderSource(root=str(root), classes=str(root / "classes.yaml"))


def test_folder_class_file_errors(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "classes.yaml").write_text("classes: [x, y]\nignore_index: 250\n")
    src = FolderSource(root=str(tmp_path), classes=str(tmp_path / "classes.yaml"), val_fraction=0.0)
    with pytest.raises(SourceError, match=r"semseg[/\\]a\.png.*\[2\]"):
        src.load("train", "a")
    (tmp_path / "classes.yaml").write_text("classes: [x, y]\nignore_index: 1\n")
    with pytest.raises(SourceError, match=r"classes\.yaml.*ignore_index"):
        FolderSource(root=str(tmp_path), classes=str(tmp_path / "classes.yaml"))


# ---------------------------------------------------------------- hostile files
@pytest.mark.parametrize("variant", ["warning", "error"])
@pytest.mark.parametrize("member", ["images", "semseg"])
def test_a_decompression_bomb_is_a_source_error_naming_the_file(tmp_path, monkeypatch, variant, member):
    write_folder(tmp_path)
    bad = tmp_path / member / "a.png"
    if member == "semseg":  # the only image over the limit: twice as high and wide as its rgb
        png(bad, np.zeros((2 * H, 2 * W), np.uint8))
    with Image.open(bad) as img:
        pixels = img.width * img.height
    src = FolderSource(root=str(tmp_path), classes=str(tmp_path / "classes.yaml"), val_fraction=0.0)
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice it; the rgb (H×W) stays under both.
    limit = pixels // 2 + 1 if variant == "warning" else pixels // 3
    assert (pixels > 2 * limit) == (variant == "error") and pixels > limit
    assert member == "images" or limit >= H * W
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(SourceError) as e:
        src.load("train", "a")
    assert str(e.value).startswith(
        f"{bad}: image refused as a possible decompression bomb: Image size ({pixels} pixels)"
    )
    assert str(e.value).endswith(f"(PIL.Image.MAX_IMAGE_PIXELS = {limit})")


def test_data_build_exits_2_naming_a_decompression_bomb(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipelines.cli.main import cli

    root = tmp_path / "src"
    write_folder(root)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 2 + 1)  # the warning variant
    args = ["--root", str(root), "--classes", str(root / "classes.yaml"), "--workers", "1", "--json"]
    out = CliRunner().invoke(cli, ["data", "build", "folder", "--out", str(tmp_path / "ds"), *args])
    assert out.exit_code == 2, out.output
    error = json.loads(out.stdout)["error"]
    assert error.startswith(f"{root / 'images'}") and "decompression bomb" in error
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"trainNdxs = [1 3]\ntestNdxs = [2]\n" * 8,  # text
        b"",  # empty
        b"\x89PNG\r\n\x1a\n" + bytes(200),  # another format
        b"\x00" * 200,  # zeros
        "truncated",  # the head of a real v5 .mat
        "mangled",  # a real v5 header, then garbage
        "cell",  # a real .mat whose variables hold text
    ],
)
def test_a_splits_file_that_is_not_a_mat_is_named(tmp_path, content):
    write_mat(tmp_path)
    spl = tmp_path / "splits.txt"
    good = (tmp_path / "splits.mat").read_bytes()
    if content == "truncated":
        content = good[: len(good) // 2]
    elif content == "mangled":
        content = good[:128] + bytes(range(256)) * 2
    elif content == "cell":
        scipy.io.savemat(tmp_path / "cell.mat", {"trainNdxs": np.array(["a", "b"]), "testNdxs": np.array(["c"])})
        content = (tmp_path / "cell.mat").read_bytes()
    spl.write_bytes(content)
    with pytest.raises(SourceError) as e:
        NyudMatSource(mat=str(tmp_path / "labeled.mat"), splits_mat=str(spl))
    assert str(e.value).startswith(f"{spl}: ")
    assert "not a readable MATLAB v5 .mat file" in str(e.value) or "must hold integer frame indices" in str(e.value)


def test_data_build_exits_2_naming_a_splits_file_that_is_not_a_mat(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli.main import cli

    write_mat(tmp_path)
    (tmp_path / "splits.txt").write_text("1\n3\n")
    args = ["--mat", str(tmp_path / "labeled.mat"), "--splits-mat", str(tmp_path / "splits.txt"), "--json"]
    out = CliRunner().invoke(cli, ["data", "build", "nyud-mat", "--out", str(tmp_path / "ds"), *args])
    assert out.exit_code == 2, out.output
    assert json.loads(out.stdout)["error"].startswith(
        f"{tmp_path / 'splits.txt'}: option splits_mat is not a readable MATLAB v5 .mat file"
    )
