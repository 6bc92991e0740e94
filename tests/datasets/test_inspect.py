"""``fusionpipe data inspect``: counts, class histogram and depth range against the samples, and the grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from datasets.codec import MEMBERS, register_member
from datasets.inspect import (
    COLUMNS,
    colorize_semseg,
    draw_grid,
    grid_figure,
    inspect_dataset,
    read_keyed_samples,
    read_samples,
)
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


def _panel(fig, label):
    return next(ax for ax in fig.axes if ax.get_label() == label)


def test_grid_explains_itself_keys_class_legend_and_one_depth_scale(toy_dataset, toy_source):
    keyed = read_keyed_samples(toy_dataset, "val", 3)
    keys, samples = [k for k, _ in keyed], [s for _, s in keyed]
    assert keys == ["val0000", "val0001", "val0002"]
    fig = grid_figure(samples, keys, toy_source.classes)
    # a row per sample, labelled with its key; a column per member, titled on the first row
    assert [_panel(fig, f"{k}/rgb").get_ylabel() for k in keys] == keys
    assert [_panel(fig, f"val0000/{c}").get_title() for c in COLUMNS] == list(COLUMNS)
    # the class legend names the classes the drawn samples hold, from the manifest, and the ignore label
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "semseg classes"
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c", "d", "ignore"]
    # one colour scale in metres for every row's depth: the drawn samples' valid range, and one colour bar
    valid = np.concatenate([s["depth"][s["depth"] > 0] for s in samples])
    limits = [_panel(fig, f"{k}/depth").get_images()[0].get_clim() for k in keys]
    assert limits == [(float(valid.min()), float(valid.max()))] * 3
    (bar,) = [ax for ax in fig.axes if ax.get_xlabel() == "depth (m)"]
    assert bar.get_xlim() == pytest.approx((valid.min(), valid.max()))
    # missing depth (0) is masked, drawn in the colour map's "bad" colour (black)
    depth_img = _panel(fig, "val0000/depth").get_images()[0]
    assert depth_img.get_array().mask[0, :3].all() and not depth_img.get_array().mask[1:].any()
    assert tuple(depth_img.get_cmap().get_bad()) == (0.0, 0.0, 0.0, 1.0)
    semseg_img = _panel(fig, "val0001/semseg").get_images()[0]
    np.testing.assert_array_equal(semseg_img.get_array(), colorize_semseg(samples[1]["semseg"]))


def test_grid_legend_lists_only_the_classes_shown(toy_dataset):
    samples = read_samples(toy_dataset, "val", 1)
    samples[0]["semseg"][:] = 2
    fig = grid_figure(samples, ["k"], ["wall", "floor", "chair", "table"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["chair"]
    assert grid_figure(samples, ["k"], ["wall"]).legends[0].get_texts()[0].get_text() == "class 2"


def test_the_cli_writes_the_grid(toy_dataset, tmp_path):
    out = CliRunner().invoke(cli, ["data", "inspect", str(toy_dataset), "--grid", str(tmp_path / "g.png"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["grid"] == str(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "toy"]  # no temporary file left


def test_grid_draws_a_registered_member_by_its_kind(toy_dataset, tmp_path):
    register_member("confidence", "gray")
    try:
        samples = read_samples(toy_dataset, "val", 1)
        samples[0]["confidence"] = np.full((12, 16), 77, np.uint8)
        fig = grid_figure(samples, ["k"])
        assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [*COLUMNS, "confidence"]
        assert np.all(_panel(fig, "k/confidence").get_images()[0].get_array() == 77)
        draw_grid(samples, tmp_path / "grid.png", ["k"])
        assert (tmp_path / "grid.png").is_file()
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
