"""``fusionpipe predict`` on a checkpoint directory: any input size, the normalisation applied by the tool,
the per-task files, and bad input as named errors with exit code 2."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from datasets.codec import decode_member
from datasets.inspect import colorize_semseg
from fusion import build_model
from pipelines.analysis.predict import (
    DEFAULT_NORMALISATION,
    forward_any_size,
    model_inputs,
    run_predict,
)
from pipelines.checkpoints import save_checkpoint
from pipelines.cli.main import cli
from pipelines.config import ConfigError

MCFG = {
    "name": "mtl_baseline",
    "tasks": ["semseg", "depth", "normals", "edge"],
    "modalities": ["rgb", "depth"],
    "num_classes": 3,
    "backbone": "resnet18",
    "width": 0.125,
    "output_stride": 32,
    "pretrained": "/nowhere/imagenet.pth",  # never read: the checkpoint holds every weight
    "options": {"fusion": "early"},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build_model({**MCFG, "pretrained": None}).eval()
    save_checkpoint(d, model, {"epoch": 3, "model_config": MCFG, "classes": ["floor", "wall", "chair"]})
    return d, model


def _images(folder, sizes, depth=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        if depth:
            Image.fromarray(rng.integers(500, 5000, (h, w), dtype=np.uint16)).save(folder / f"img{i}.depth.png")
    return folder


def test_any_size_is_padded_to_the_stride_and_cropped_back(checkpoint):
    _, model = checkpoint
    rng = np.random.default_rng(1)
    sample = {
        "id": "x",
        "rgb": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
        "depth": np.ones((50, 70), np.float32),
    }
    inputs = model_inputs(sample, ["rgb", "depth"], DEFAULT_NORMALISATION)
    # The tool normalises: RGB / 255, ImageNet mean and std.
    expected = (sample["rgb"][..., 0] / 255.0 - 0.485) / 0.229
    assert torch.allclose(inputs["rgb"][0, 0], torch.from_numpy(expected).float(), atol=1e-5)
    out = forward_any_size(model, inputs, MCFG["tasks"])
    assert out["semseg"].shape == (1, 3, 50, 70) and out["normals"].shape == (1, 3, 50, 70)
    # The same as running the model on the padded input by hand and cropping.
    padded = {k: torch.nn.functional.pad(v, (0, 26, 0, 14)) for k, v in inputs.items()}
    with torch.no_grad():
        ref = model(padded)["depth"][..., :50, :70]
    assert torch.allclose(out["depth"], ref, atol=1e-6)


def test_folder_outputs_every_task_in_its_format(checkpoint, tmp_path):
    ckpt, model = checkpoint
    images = _images(tmp_path / "in", [(50, 70), (64, 96)])
    result = run_predict(str(ckpt), tmp_path / "out", "sqlite:///unused.db", images=images)
    assert result["num_samples"] == 2 and result["epoch"] == 3
    assert [s["id"] for s in result["samples"]] == ["img0", "img1"]
    out = tmp_path / "out"
    ids = np.asarray(Image.open(out / "img0.semseg_ids.png"))
    colour = np.asarray(Image.open(out / "img0.semseg.png"))
    assert ids.shape == (50, 70) and colour.shape == (50, 70, 3)
    assert (colour == colorize_semseg(ids)).all()
    # Depth as the shard format writes it: 16-bit millimetres that decode_member reads back as metres.
    depth = decode_member("depth.png", (out / "img0.depth.png").read_bytes())
    rgb = np.asarray(Image.open(tmp_path / "in" / "img0.png"))
    d = np.asarray(Image.open(tmp_path / "in" / "img0.depth.png")).astype(np.float32) / 1000
    inputs = model_inputs({"id": "img0", "rgb": rgb, "depth": d}, ["rgb", "depth"], DEFAULT_NORMALISATION)
    expected = forward_any_size(model, inputs, ["depth"])["depth"][0, 0].clamp(min=0).numpy()
    assert depth.shape == (50, 70)
    np.testing.assert_allclose(depth, np.rint(expected * 1000) / 1000, atol=1.5e-3)
    assert Image.open(out / "img0.depth.png").mode == "I;16"
    assert np.asarray(Image.open(out / "img0.depth_color.png")).shape == (50, 70, 3)
    assert np.asarray(Image.open(out / "img1.normals.png")).shape == (64, 96, 3)
    assert np.asarray(Image.open(out / "img1.edge.png")).shape == (64, 96)
    grid = np.asarray(Image.open(out / "img0.grid.png"))
    assert grid.shape[1] == 70 * 6  # input rgb, input depth, semseg, depth, normals, edge
    legend = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in legend] == ["floor", "wall", "chair"]
    assert legend[1]["rgb"] == colorize_semseg(np.array([1], np.uint8))[0].tolist()
    assert json.loads((out / "predictions.json").read_text())["num_samples"] == 2


def test_depth_in_a_parallel_folder(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    images = _images(tmp_path / "rgb", [(40, 40)], depth=False)
    (tmp_path / "depth").mkdir()
    Image.fromarray(np.full((40, 40), 1500, np.uint16)).save(tmp_path / "depth" / "img0.png")
    result = run_predict(
        str(ckpt), tmp_path / "out", "sqlite:///unused.db", images=images, depth_dir=tmp_path / "depth"
    )
    assert result["num_samples"] == 1 and (tmp_path / "out" / "img0.depth.png").is_file()


def test_shard_split(checkpoint, tmp_path, smoke_shards):
    ckpt, _ = checkpoint
    result = run_predict(str(ckpt), tmp_path / "out", "sqlite:///unused.db", shards=smoke_shards, split="val", limit=3)
    assert result["num_samples"] == 3
    first = result["samples"][0]
    assert (first["height"], first["width"]) == (64, 80)
    assert (tmp_path / "out" / f"{first['id']}.semseg.png").is_file()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", ["--images", "{tmp}/empty"], r"--images .*empty: no images \(\*\.png, \*\.jpg"),
        ("nodepth", ["--images", "{tmp}/nodepth"], r"the model takes depth .*img0\.png \(no .*img0\.depth\.png\)"),
        (
            "none",
            ["--images", "{tmp}/empty", "--model-override", "not-a-model"],
            r"--model 'not-a-model': not a checkpoint",
        ),
        ("none", ["--images", "{tmp}/empty", "--model-override", "models:/nope"], r"expected models:/NAME/VERSION"),
        ("none", ["--images", "{tmp}/nothere"], r"--images .*nothere: not a directory"),
        ("badimg", ["--images", "{tmp}/badimg"], r"img0\.png: not a readable image"),
    ],
)
def test_bad_input_exits_2_naming_it(checkpoint, tmp_path, setup, args, message):
    ckpt, _ = checkpoint
    (tmp_path / "empty").mkdir()
    if setup == "nodepth":
        _images(tmp_path / "nodepth", [(32, 32)], depth=False)
    if setup == "badimg":
        (tmp_path / "badimg").mkdir()
        (tmp_path / "badimg" / "img0.png").write_bytes(b"not a png")
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "badimg" / "img0.depth.png")
    args = [a.format(tmp=tmp_path) for a in args]
    model = str(ckpt)
    if "--model-override" in args:
        i = args.index("--model-override")
        model = args[i + 1]
        del args[i : i + 2]
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "--model",
            model,
            *args,
            "--out",
            str(tmp_path / "out"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db",
        ],
    )
    assert result.exit_code == 2, result.output
    import re

    assert re.search(message, result.output), result.output
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_unknown_registered_model_is_a_named_error(tmp_path):
    import mlflow  # noqa: F401 - creates the store below

    from pipelines.track.tracker import Tracker

    uri = f"sqlite:///{tmp_path}/m.db"
    Tracker.create_run(uri, "e", "r", {}).end()
    with pytest.raises(
        ConfigError, match=r"models:/ghost@best.*has no alias 'best' of model 'ghost' \(no such registered"
    ):
        run_predict("models:/ghost@best", tmp_path / "out", uri, images=tmp_path)
