"""Every reader of untrusted bytes in datasets/ raises only the project's named errors (benchmarks/fuzz.py):
2,000 seeded mutations of valid tars, members, manifests and shards per run."""

import logging
import random

import pytest

import datasets.codec
from benchmarks import fuzz

CASES, SEED = 2000, 0


def test_every_reader_of_untrusted_bytes_returns_correct_data_or_a_named_error(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="datasets.loader")  # errors="skip" cases log every skip
    results = fuzz.run(CASES, SEED, tmp_path)
    summary = {r["name"]: {k: r[k] for k in ("cases", "ok", "named", "unnamed", "silent")} for r in results}
    print(f"fuzz, seed {SEED}: {summary}")
    assert sum(r["cases"] for r in results) == CASES
    failures = [f for r in results for f in r["failures"]]
    unnamed = sum(r["unnamed"] for r in results)
    silent = sum(r["silent"] for r in results)
    assert (unnamed, silent) == (0, 0), f"{unnamed} unnamed, {silent} silent of {CASES} cases: {failures}"
    for r in results:  # each target's mutations reach both outcomes: the readers are exercised, not just refused
        assert r["ok"] > 0 and r["named"] > 0, r
    assert fuzz.ratios(results) == {"unnamed_fraction": 0.0, "silent_fraction": 0.0}


def test_the_tally_counts_unnamed_errors_and_silent_changes():
    tally = fuzz.Tally("t")
    outcomes = [
        tally.run("fine", lambda: None),
        tally.run("named", lambda: (_ for _ in ()).throw(datasets.codec.ShardFormatError("x"))),
        tally.run("bare", lambda: {}["missing"]),
        tally.run("changed", lambda: (_ for _ in ()).throw(fuzz.Silent("other pixels"))),
    ]
    assert outcomes == ["ok", "named", "unnamed", "silent"]
    r = tally.to_dict()
    assert (r["cases"], r["ok"], r["named"], r["unnamed"], r["silent"]) == (4, 1, 1, 1, 1)
    assert r["failures"] == ["unnamed KeyError: bare: 'missing'", "silent: changed: other pixels"]
    assert fuzz.ratios([r]) == {"unnamed_fraction": 0.25, "silent_fraction": 0.25}
    with pytest.raises(ValueError, match="no cases"):
        fuzz.ratios([])


def test_without_the_png_checks_the_fuzz_finds_changed_pixels(tmp_path, monkeypatch):
    """The members target can fail: with the CRC and format checks gone, raw mutations decode silently."""
    monkeypatch.setattr(datasets.codec, "check_png", lambda *args, **kwargs: None)
    root = fuzz.build_dataset(tmp_path / "ds")
    with open(root / fuzz.SHARD, "rb") as f:
        _, members = next(fuzz.group_samples(fuzz.iter_tar(f)))
    tally = fuzz.Tally("members")
    fuzz.fuzz_members(random.Random(0), 300, tally, members)
    assert tally.silent > 0
