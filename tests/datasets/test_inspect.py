"""``fusionpipe data inspect``: counts, class histogram and depth range against the samples, and the grid."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from datasets.codec import MEMBERS, register_member
from datasets.inspect import COLUMNS, colorize_semseg, draw_grid, inspect_dataset, read_samples
from pipelines.cli.main import cli


def test_report_matches_the_samples(toy_dataset, toy_source):
    report = inspect_dataset(toy_dataset)
    assert report["members"] == toy_source.members and report["classes"] == toy_source.classes
    val = report["splits"]["val"]
    assert val["num_samples"] == val["inspected"] == 6 and val["num_shards"] == 2
    samples = [toy_source.load("val", k) for k in toy_source.keys("val")]
    counts = np.bincount(np.concatenate([s["semseg"].ravel() for s in samples]), minlength=256)
    assert val["class_pixels"] == {c: int(counts[i]) for i, c in enumerate(toy_source.classes)}
    assert val["ignore_pixels"] == 6  # one ignored pixel per sample
    depth = np.concatenate([s["depth"].ravel() for s in samples])
    valid = depth[depth > 0]
    assert val["depth"]["missing_fraction"] == round(3 * 6 / depth.size, 5)
    assert abs(val["depth"]["max_m"] - valid.max()) <= 0.0005 and abs(val["depth"]["min_m"] - valid.min()) <= 0.0005
    assert inspect_dataset(toy_dataset, split="train", max_samples=4)["splits"]["train"]["inspected"] == 4


def test_grid_has_a_column_per_member_and_the_cli_writes_it(toy_dataset, tmp_path):
    samples = read_samples(toy_dataset, "val", 2)
    path = tmp_path / "grid.png"
    draw_grid(samples, path)
    img = np.asarray(Image.open(path))
    assert img.shape == (16 + 2 * 12, len(COLUMNS) * 16, 3)
    semseg_panel = img[16 + 12 : 16 + 24, 2 * 16 : 3 * 16]  # row 1, column "semseg"
    np.testing.assert_array_equal(semseg_panel, colorize_semseg(samples[1]["semseg"]))
    out = CliRunner().invoke(cli, ["data", "inspect", str(toy_dataset), "--grid", str(tmp_path / "g.png"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["grid"] == str(tmp_path / "g.png") and (tmp_path / "g.png").is_file()


def test_grid_draws_a_registered_member_by_its_kind(toy_dataset, tmp_path):
    register_member("confidence", "gray")
    try:
        samples = read_samples(toy_dataset, "val", 1)
        samples[0]["confidence"] = np.full((12, 16), 77, np.uint8)
        draw_grid(samples, tmp_path / "grid.png")
        img = np.asarray(Image.open(tmp_path / "grid.png"))
        assert img.shape[1] == (len(COLUMNS) + 1) * 16
        assert np.all(img[16:, len(COLUMNS) * 16 :] == 77)
    finally:
        MEMBERS.pop("confidence")


def test_inspect_names_an_unknown_split_and_a_truncated_shard(toy_dataset, tmp_path):
    out = CliRunner().invoke(
        cli, ["data", "inspect", str(toy_dataset), "--split", "nope", "--grid", str(tmp_path / "g.png"), "--json"]
    )
    assert out.exit_code == 2 and "no split 'nope'; splits: train, val" in json.loads(out.stdout)["error"]
    assert not (tmp_path / "g.png").exists()
    shard = toy_dataset / "val" / "shard-000001.tar"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:2000])
    out = CliRunner().invoke(cli, ["data", "inspect", str(toy_dataset), "--json"])
    error = json.loads(out.stdout)["error"]
    assert out.exit_code == 2 and f"val/shard-000001.tar: 2000 bytes, the manifest says {size} (truncated" in error
