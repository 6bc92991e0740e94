"""Checkpoint integrity: every file's digest is in meta.json and checked on load, meta.json's shape is
checked, and a damaged checkpoint is a CorruptCheckpointError naming the file and what is wrong."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipelines.checkpoints import (
    META,
    MODEL,
    TRAIN_STATE,
    CheckpointError,
    CorruptCheckpointError,
    apply_model_state,
    check_compatible,
    load_model_state,
    load_train_state,
    read_meta,
    read_model_state,
    save_checkpoint,
    verify_checkpoint,
)
from pipelines.train.steps import load_optimizer_state

MCFG = {"name": "tiny", "tasks": ["depth"], "modalities": ["rgb"], "num_classes": 4, "options": {}}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.01)


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _model()
    opt = _optimizer(model)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


META_IN = {
    "epoch": 3,
    "mlflow_run_id": "abc",
    "model_config": MCFG,
    "metrics": {"val/depth/rmse": 0.5, "val/semseg/miou": float("nan"), "epoch": 3},
    "tasks": ["depth"],
    "modalities": ["rgb"],
    "classes": ["a", "b", "c", "d"],
    "optimizer": "adam",
}


@pytest.fixture
def ckpt(tmp_path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    model, opt = _trained()
    d = save_checkpoint(tmp_path / "ck", model, META_IN, {"optimizer": opt.state_dict()})
    return d, model, opt


def _canonical_digest(body: dict) -> str:
    """The documented digest of meta.json (docs/training-internals.md), computed here independently."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _resign(d: Path, meta: dict) -> None:
    """Write ``meta`` as meta.json with a matching digest: a checkpoint whose digest is right but whose
    content is not what fusionpipe writes (its shape is what is checked then)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    (d / META).write_text(json.dumps({**body, "meta_sha256": _canonical_digest(body)}))


def test_meta_records_the_digest_of_every_file_and_of_itself(ckpt):
    d, model, opt = ckpt
    raw = json.loads((d / META).read_text())
    assert raw["checkpoint_format"] == 2
    for name in (MODEL, TRAIN_STATE):
        data = (d / name).read_bytes()
        assert raw["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert raw["meta_sha256"] == _canonical_digest({k: v for k, v in raw.items() if k != "meta_sha256"})
    # What the caller wrote comes back, without the integrity keys; a NaN metric is null (None).
    assert read_meta(d) == {**META_IN, "metrics": {**META_IN["metrics"], "val/semseg/miou": None}}
    assert not list(d.glob(".*tmp*"))  # every file by rename: no temp file left
    fresh = _model()
    load_model_state(fresh, d)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = _optimizer(fresh)
    load_optimizer_state(opt2, load_train_state(d), str(d))
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert verify_checkpoint(d)["epoch"] == 3


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x01  # one bit, in the middle of the file: tensor bytes, still a readable zip
    return bytes(b)


@pytest.mark.parametrize("name", [MODEL, TRAIN_STATE])
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate, r"truncated: \d+ bytes, meta.json records \d+"),
        (lambda data: b"", r"empty \(0 bytes; meta.json records \d+\)"),
        (_flip, r"sha256 mismatch: expected [0-9a-f]{64} \(meta.json\), actual [0-9a-f]{64}: the file is corrupt"),
        (lambda data: data + b"\0", r"\d+ bytes, meta.json records \d+: the file changed after"),
    ],
    ids=["truncated", "empty", "bit-flipped", "grown"],
)
def test_a_damaged_pt_file_is_a_named_error(ckpt, name, damage, why):
    d, _, _ = ckpt
    (d / name).write_bytes(damage((d / name).read_bytes()))
    load = {MODEL: lambda: load_model_state(_model(), d), TRAIN_STATE: lambda: load_train_state(d)}[name]
    for attempt in (load, lambda: verify_checkpoint(d)):
        with pytest.raises(CorruptCheckpointError, match=rf"^{d / name}: {why}"):
            attempt()
    other = TRAIN_STATE if name == MODEL else MODEL
    assert {MODEL: lambda: read_model_state(d), TRAIN_STATE: lambda: load_train_state(d)}[other]()  # still whole


def test_a_bit_flipped_model_still_loadable_by_torch_is_refused(ckpt):
    # The flip changes a weight, not the zip structure: torch.load alone would return other numbers.
    d, _, _ = ckpt
    (d / MODEL).write_bytes(_flip((d / MODEL).read_bytes()))
    assert isinstance(torch.load(d / MODEL, weights_only=True), dict)
    with pytest.raises(CorruptCheckpointError, match="sha256 mismatch"):
        read_model_state(d)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", r"not valid JSON: Expecting value"),
        ('{"epoch": 3,', r"not valid JSON"),
        ("[1, 2]", r"not a JSON object but a list"),
        ('{"epoch": NaN}', r"not valid JSON: NaN is not JSON"),
        ('{"epoch": 1, "epoch": 2}', r"not valid JSON: key 'epoch' appears twice"),
    ],
)
def test_meta_json_that_is_not_a_json_object_is_named(ckpt, text, why):
    d, _, _ = ckpt
    (d / META).write_text(text)
    for load in (read_meta, lambda d: load_model_state(_model(), d), load_train_state, verify_checkpoint):
        with pytest.raises(CorruptCheckpointError, match=rf"^{d / META}: {why}"):
            load(d)


def test_meta_json_not_utf8_is_named(ckpt):
    d, _, _ = ckpt
    (d / META).write_bytes(b'{"epoch": "\xff"}')
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / META}: not valid JSON: not UTF-8 text"):
        read_meta(d)


def test_an_edited_meta_json_fails_its_own_digest(ckpt):
    d, _, _ = ckpt
    raw = json.loads((d / META).read_text())
    (d / META).write_text(json.dumps({**raw, "epoch": 4}))
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / META}: sha256 mismatch: its content hashes to"):
        read_meta(d)
    del raw["meta_sha256"]
    (d / META).write_text(json.dumps(raw))  # the digest removed: not taken for a checkpoint from before digests
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / META}: missing key 'meta_sha256'"):
        read_meta(d)


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda m: m.pop("epoch"), r"missing key 'epoch'"),
        (lambda m: m.update(epoch="3"), r"'epoch' must be an integer >= 0, not '3' \(str\)"),
        (lambda m: m.update(epoch=-1), r"'epoch' must be an integer >= 0, not -1 \(int\)"),
        (lambda m: m.update(epoch=True), r"'epoch' must be an integer >= 0, not True \(bool\)"),
        (lambda m: m.update(metrics=[1.0]), r"'metrics' must be an object of numbers, not \[1.0\] \(list\)"),
        (lambda m: m["metrics"].update(x="high"), r"'metrics.x' must be a number or null, not 'high' \(str\)"),
        (lambda m: m.update(model_config=None), r"'model_config' must be an object, not None \(NoneType\)"),
        (lambda m: m["model_config"].update(name=7), r"'model_config.name' must be a string, not 7 \(int\)"),
        (lambda m: m["model_config"].pop("tasks"), r"missing key 'model_config.tasks'"),
        (lambda m: m["model_config"].update(modalities="rgb"), r"'model_config.modalities' must be a list of str"),
        (lambda m: m.update(classes=[1, 2]), r"'classes' must be a list of strings, not \[1, 2\] \(list\)"),
        (lambda m: m.update(mlflow_run_id=5), r"'mlflow_run_id' must be a string, not 5 \(int\)"),
        (lambda m: m.update(optimizer=["adam"]), r"'optimizer' must be a string"),
        (lambda m: m["files"].pop(MODEL), r"missing key 'files.model.pt'"),
        (lambda m: m["files"][MODEL].update(size="12"), r"'files.model.pt.size' must be an integer >= 0"),
        (lambda m: m["files"][MODEL].update(sha256="abc"), r"'files.model.pt.sha256' must be a sha256"),
        (lambda m: m["files"].update(extra={}), r"'files' names 'extra'; a checkpoint has model.pt and"),
        (lambda m: m.update(checkpoint_format="2"), r"'checkpoint_format' must be an integer, not '2' \(str\)"),
    ],
)
def test_meta_json_of_the_wrong_shape_is_named(ckpt, edit, why):
    d, _, _ = ckpt
    meta = json.loads((d / META).read_text())
    edit(meta)
    _resign(d, meta)  # its digest is right: the shape check is what refuses it
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / META}: {why}"):
        read_meta(d)


def test_a_newer_format_is_a_checkpoint_error_but_not_damage(ckpt):
    d, _, _ = ckpt
    meta = json.loads((d / META).read_text())
    _resign(d, {**meta, "checkpoint_format": 3})
    with pytest.raises(CheckpointError, match=r"checkpoint format 3; this fusionpipe reads format 2") as e:
        read_meta(d)
    assert not isinstance(e.value, CorruptCheckpointError)


def test_missing_files_and_files_not_in_the_record_are_named(tmp_path, ckpt):
    d, model, _ = ckpt
    (d / TRAIN_STATE).unlink()
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / TRAIN_STATE}: missing \(the checkpoint is incomplete\)"):
        load_train_state(d)
    (d / META).unlink()
    with pytest.raises(CorruptCheckpointError, match=rf"^{d}: not a fusionpipe checkpoint \(no meta.json\)"):
        read_meta(d)
    # Saved again without a training state: the earlier train_state.pt is not part of the checkpoint.
    (d / TRAIN_STATE).write_bytes(b"stale")
    save_checkpoint(d, model, {"epoch": 0})
    assert not (d / TRAIN_STATE).exists()
    (d / TRAIN_STATE).write_bytes(b"stale")
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / TRAIN_STATE}: not part of this checkpoint"):
        load_train_state(d)


def test_a_meta_that_cannot_be_written_leaves_the_checkpoint_there_whole(ckpt):
    d, _, _ = ckpt
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(TypeError):
        save_checkpoint(d, _model(), {"epoch": 1, "bad": object()})
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert read_meta(d)["epoch"] == 3


def test_require_names_a_missing_key(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model(), {"epoch": 0})
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / META}: missing key 'model_config'"):
        read_meta(d, require=("model_config",))


def _old_format(d: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> Path:
    """A checkpoint as fusionpipe wrote them before digests: plain torch.save and json.dumps."""
    d.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), d / MODEL)
    torch.save({"optimizer": opt.state_dict()}, d / TRAIN_STATE)
    (d / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return d


def test_a_checkpoint_from_before_digests_loads_with_one_warning(tmp_path, caplog):
    model, opt = _trained()
    d = _old_format(tmp_path / "old", model, opt, {"epoch": 2, "model_config": MCFG, "metrics": {"x": None}})
    with caplog.at_level(logging.WARNING, logger="pipelines.checkpoints"):
        assert read_meta(d)["epoch"] == 2
        fresh = _model()
        load_model_state(fresh, d)
        load_train_state(d)
        verify_checkpoint(d)
    assert torch.equal(fresh[0].weight, model[0].weight)
    warnings = [r.getMessage() for r in caplog.records if "cannot be verified" in r.getMessage()]
    assert warnings == [
        f"{d}: checkpoint written before checkpoints recorded their files' digests: it cannot be verified"
    ]
    # Its shape is checked, and a .pt file torch.load cannot read is named, as for a new one.
    (d / MODEL).write_bytes((d / MODEL).read_bytes()[:100])
    with pytest.raises(
        CorruptCheckpointError, match=rf"^{d / MODEL}: torch.load cannot read it \(\w+: .*truncated or corrupt"
    ):
        load_model_state(_model(), d)
    (d / TRAIN_STATE).write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / TRAIN_STATE}: empty \(0 bytes\)"):
        load_train_state(d)
    (d / META).write_text(json.dumps({"epoch": "two"}))
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / META}: 'epoch' must be an integer"):
        read_meta(d)
    torch.save([1, 2], d / MODEL)  # readable, but not a state dict
    (d / META).write_text(json.dumps({"epoch": 2}))
    with pytest.raises(CorruptCheckpointError, match=rf"^{d / MODEL}: not a model state \(a dict of tensors\), a list"):
        read_model_state(d)


# --- fuzz: seeded random damage to each file; every case loads the right data or raises a CheckpointError


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["flip", "flips", "truncate", "cut", "insert", "zero", "append", "shuffle", "empty"])
    if kind == "empty" or not b:
        return b""
    i = rng.randrange(len(b))
    if kind == "flip":
        b[i] ^= 1 << rng.randrange(8)
    elif kind == "flips":
        for _ in range(rng.randint(2, 8)):
            b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
    elif kind == "truncate":
        del b[i:]
    elif kind == "cut":
        del b[i : i + rng.randint(1, 64)]
    elif kind == "insert":
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "zero":
        n = rng.randint(1, 256)
        b[i : i + n] = bytes(len(b[i : i + n]))
    elif kind == "append":
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:  # shuffle a window
        w = b[i : i + rng.randint(2, 32)]
        rng.shuffle(w)
        b[i : i + len(w)] = w
    return bytes(b)


WEIRD = [None, True, -1, 0, 2**70, 1.5, "", "x", [], [1], ["a"], {}, {"a": 1}, {"name": 1}]


def _mutate_json(rng: random.Random, meta: dict) -> dict:
    """A meta of another shape: a value (at any depth) replaced, a key removed or added."""
    meta = json.loads(json.dumps(meta))
    node = meta
    while True:  # walk down to a random object
        children = [k for k, v in node.items() if isinstance(v, dict)]
        if not children or rng.random() < 0.4:
            break
        node = node[rng.choice(children)]
    op = rng.choice(["replace", "replace", "drop", "add"])
    key = rng.choice(sorted(node)) if node else "k"
    if op == "drop":
        node.pop(key, None)
    elif op == "add":
        node[rng.choice(["extra", "epoch", "files", "name"])] = rng.choice(WEIRD)
    else:
        node[key] = rng.choice(WEIRD)
    return meta


def _load_everything(d: Path) -> tuple[dict, dict, dict]:
    """What resume and evaluate do with a checkpoint: each step either works or raises CheckpointError."""
    meta = read_meta(d, require=("model_config",))
    check_compatible(meta["model_config"], MCFG, str(d))
    _ = meta["epoch"] + 1, [v for v in meta.get("metrics", {}).values() if v is not None and v > 0]
    model, state = _model(), read_model_state(d)
    apply_model_state(model, state, d / MODEL)
    train_state = load_train_state(d)
    load_optimizer_state(_optimizer(model), train_state, str(d))
    return meta, state, train_state


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_fuzz_every_damaged_checkpoint_loads_the_right_data_or_names_the_error(tmp_path):
    rng = random.Random(20240607)
    model, opt = _trained()
    good = save_checkpoint(tmp_path / "good", model, {**META_IN, "model_config": MCFG}, {"optimizer": opt.state_dict()})
    old = _old_format(tmp_path / "old", model, opt, {**META_IN, "model_config": MCFG})
    originals = {src: {n: (src / n).read_bytes() for n in (META, MODEL, TRAIN_STATE)} for src in (good, old)}
    expected = _load_everything(good)
    outcomes = {"right data": 0, "checkpoint error": 0, "loaded (unverifiable)": 0}
    unnamed, wrong_data = [], []
    d = tmp_path / "case"
    d.mkdir()
    # 200 byte-level damages of a verified checkpoint, 100 of one from before digests (only "no unnamed
    # error" can hold there), 100 meta.json edits of another shape, re-signed so that its digest holds.
    cases = [("verified", "bytes")] * 200 + [("old", "bytes")] * 100 + [("verified", "shape")] * 100
    for i, (which, how) in enumerate(cases):
        src = good if which == "verified" else old
        files = dict(originals[src])
        if how == "bytes":
            name = rng.choice([META, MODEL, TRAIN_STATE])
            files[name] = _mutate_bytes(rng, files[name])
        for n, data in files.items():
            (d / n).write_bytes(data)
        if how == "shape":
            _resign(d, _mutate_json(rng, json.loads(files[META])))
        try:
            got = _load_everything(d)
        except CheckpointError as e:
            outcomes["checkpoint error"] += 1
            assert str(d) in str(e), f"case {i}: the error does not name the checkpoint: {e}"
            continue
        except Exception as e:  # noqa: BLE001 - what the test counts
            unnamed.append(f"case {i} ({which}, {how}): {type(e).__name__}: {e}")
            continue
        if which == "verified" and how == "bytes":
            if _same(got, expected):
                outcomes["right data"] += 1
            else:
                wrong_data.append(f"case {i}: loaded other data without an error")
        else:
            outcomes["loaded (unverifiable)"] += 1
    assert unnamed == [], f"{len(unnamed)} unnamed exceptions:\n" + "\n".join(unnamed[:20])
    assert wrong_data == []
    assert sum(outcomes.values()) == len(cases)
    assert outcomes["checkpoint error"] >= 250, outcomes  # most damage is caught; the rest is harmless


def test_scan_checkpoints_leaves_out_a_damaged_checkpoint_and_says_so(tmp_path, caplog):
    from pipelines.tune.trials import scan_checkpoints

    model, _ = _trained()
    for i in range(3):
        save_checkpoint(tmp_path / f"checkpoint_00000{i}", model, {"epoch": i, "metrics": {"val/m": float(i)}})
    (tmp_path / "checkpoint_000002" / MODEL).write_bytes(_flip((tmp_path / "checkpoint_000002" / MODEL).read_bytes()))
    with caplog.at_level(logging.WARNING, logger="pipelines.tune.trials"):
        found = scan_checkpoints(tmp_path)
    assert [c["epoch"] for c in found] == [0, 1]  # the damaged one is never a trial's best or last
    assert f"checkpoint {tmp_path / 'checkpoint_000002'} left out: " in caplog.text and "sha256 mismatch" in caplog.text


def test_a_corrupt_best_checkpoint_is_passed_over_when_the_run_is_finished(tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    from ray.train import Checkpoint

    from pipelines.config import load_config
    from pipelines.track.run_record import finish_run
    from pipelines.track.tracker import Tracker

    cfg = load_config(
        None,
        [f"checkpoint.storage_path={tmp_path}", "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path}/m.db"],
    )
    model, _ = _trained()
    ck = {}
    for epoch, miou in ((0, 0.3), (1, 0.9), (2, 0.5)):
        path = save_checkpoint(
            tmp_path / "r" / f"checkpoint_{epoch}", model, {"epoch": epoch, "metrics": {"val/semseg/miou": miou}}
        )
        ck[epoch] = (Checkpoint.from_directory(str(path)), {"val/semseg/miou": miou, "epoch": epoch})
    corrupt = tmp_path / "r" / "checkpoint_1" / MODEL
    corrupt.write_bytes(corrupt.read_bytes()[:10])
    result = SimpleNamespace(checkpoint=ck[2][0], metrics=ck[2][1], best_checkpoints=list(ck.values()))
    tracker = Tracker.create_run(cfg.tracking.uri, "e", "r", {})
    summary = finish_run(cfg, tracker, result, "r", False)
    # Epoch 1 scored best but is damaged: the best intact one (epoch 2) is the run's best, said on stderr.
    assert summary["best_checkpoint"] == str(tmp_path / "r" / "checkpoint_2")
    err = capsys.readouterr().err
    assert f"checkpoint {tmp_path / 'r' / 'checkpoint_1'} scored best but is corrupt" in err and "truncated" in err
    run = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(tracker.run_id)
    assert run.data.tags["fusionpipe.best_epoch"] == "2" and run.info.status == "FINISHED"

    # The last checkpoint, which this attempt has just written, damaged: a named error, not a traceback.
    last = tmp_path / "r" / "checkpoint_2" / META
    last.write_text("{")
    result.best_checkpoints = [ck[0], ck[2]]
    with pytest.raises(CorruptCheckpointError, match=rf"^{last}: not valid JSON"):
        finish_run(cfg, Tracker.create_run(cfg.tracking.uri, "e", "r2", {}), result, "r2", False)


@pytest.mark.parametrize(
    ("damage", "file", "why"),
    [
        (lambda d: (d / MODEL).write_bytes(_flip((d / MODEL).read_bytes())), MODEL, "sha256 mismatch: expected"),
        (lambda d: (d / META).write_text('{"epoch": '), META, "not valid JSON"),
    ],
    ids=["model.pt-bit-flipped", "meta.json-truncated"],
)
def test_evaluate_names_a_corrupt_checkpoint_and_exits_2(tmp_path, smoke_shards, damage, file, why):
    from click.testing import CliRunner

    from fusion import build_model
    from pipelines.cli.run import evaluate
    from pipelines.config import load_config, model_config
    from tests import REPO_ROOT

    config = REPO_ROOT / "configs" / "smoke.yaml"
    overrides = [f"data.shards={smoke_shards}", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    classes = json.loads((smoke_shards / "manifest.json").read_text())["classes"]
    mcfg = model_config(load_config(config, overrides).resolved_paths(), len(classes))
    d = save_checkpoint(tmp_path / "ck", build_model(mcfg), {"epoch": 0, "model_config": mcfg, "classes": classes})
    damage(d)
    args = ["--config", str(config), *[a for o in overrides for a in ("--set", o)], "--checkpoint", str(d)]
    out = CliRunner().invoke(evaluate, [*args, "--json"])
    assert out.exit_code == 2, out.output
    assert json.loads(out.stdout)["error"].startswith(f"{d / file}: {why}")
    assert "Traceback" not in out.output


def _run_dir(tmp_path: Path, epochs: int, memory: bool = False) -> list:
    """Checkpoints of epochs 0..epochs-1 as Ray Train keeps them (``checkpoint_<time>`` beside each other),
    oldest first, on the local disk or in an in-memory object store (as Ray hands out one on s3)."""
    import pyarrow.fs
    from ray.train import Checkpoint

    model, opt = _trained()
    fs = pyarrow.fs.LocalFileSystem()
    if memory:
        from fsspec.implementations.memory import MemoryFileSystem

        MemoryFileSystem.store.clear()
        fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(MemoryFileSystem()))
    out = []
    for epoch in range(epochs):
        local = save_checkpoint(
            tmp_path / f"local-{epoch}", model, {**META_IN, "epoch": epoch}, {"optimizer": opt.state_dict()}
        )
        where = (
            f"/bucket/run/checkpoint_2024-01-0{epoch + 1}_00-00-00.000000"
            if memory
            else str(tmp_path / "run" / f"checkpoint_2024-01-0{epoch + 1}_00-00-00.000000")
        )
        fs.create_dir(where, recursive=True)
        pyarrow.fs.copy_files(
            str(local), where, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs
        )
        out.append(Checkpoint(where, filesystem=fs))
    return out


def _damage(ckpt, name: str = MODEL) -> None:
    with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{name}") as f:
        data = f.read()
    with ckpt.filesystem.open_output_stream(f"{ckpt.path}/{name}") as f:
        f.write(_flip(data))


@pytest.mark.parametrize("memory", [False, True], ids=["local", "object-store"])
def test_resume_falls_back_to_the_newest_intact_checkpoint_of_the_run(tmp_path, memory):
    from pipelines.train.resume import resume_from

    ckpts = _run_dir(tmp_path, 4, memory)
    epoch_of = lambda d: read_meta(d)["epoch"]  # noqa: E731
    intact = resume_from(ckpts[3], epoch_of)
    assert (intact.value, intact.path, intact.passed_over, intact.note(3)) == (3, ckpts[3].path, [], None)

    _damage(ckpts[3])
    _damage(ckpts[2], TRAIN_STATE)
    resumed = resume_from(ckpts[3], lambda d: (epoch_of(d), load_train_state(d), read_model_state(d)))
    assert resumed.value[0] == 1 and resumed.path == ckpts[1].path
    assert [p for p, _ in resumed.passed_over] == [ckpts[3].path, ckpts[2].path]  # newest first
    note = resumed.note(1)
    assert f"{ckpts[3].path} is corrupt: " in note and f"{MODEL}: sha256 mismatch" in note
    assert f"{ckpts[2].path} is corrupt: " in note and f"{TRAIN_STATE}: sha256 mismatch" in note
    assert note.endswith(
        f"Resuming from {ckpts[1].path} (epoch 1), the newest intact checkpoint of the run: the epochs after it run again"
    )

    # An error that another checkpoint would not fix (another model config) is raised as it is.
    def other_model(d):
        check_compatible(read_meta(d)["model_config"], {**MCFG, "name": "other"}, str(d))

    with pytest.raises(CheckpointError, match="checkpoint is for another model config") as e:
        resume_from(ckpts[1], other_model)
    assert not isinstance(e.value, CorruptCheckpointError)

    for c in ckpts[:2]:
        _damage(c)
    with pytest.raises(
        CheckpointError, match=r"^no intact checkpoint to resume from \(4 checkpoint\(s\) of the run, all corrupt\): "
    ) as e:
        resume_from(ckpts[3], lambda d: (read_model_state(d), load_train_state(d)))
    assert not isinstance(e.value, CorruptCheckpointError)  # recorded as fatal: a retry cannot fix it
    assert str(e.value).count("sha256 mismatch") == 4  # one per checkpoint: the first damaged file of each


def test_evaluate_names_the_run_whose_downloaded_checkpoint_is_corrupt(tmp_path, smoke_shards, monkeypatch):
    from click.testing import CliRunner

    from fusion import build_model
    from pipelines.cli.run import evaluate
    from pipelines.config import load_config, model_config
    from pipelines.track.tracker import Tracker
    from tests import REPO_ROOT

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    config = REPO_ROOT / "configs" / "smoke.yaml"
    uri = f"sqlite:///{tmp_path}/m.db"
    overrides = [f"data.shards={smoke_shards}", f"tracking.uri={uri}"]
    classes = json.loads((smoke_shards / "manifest.json").read_text())["classes"]
    mcfg = model_config(load_config(config, overrides).resolved_paths(), len(classes))
    d = save_checkpoint(tmp_path / "ck", build_model(mcfg), {"epoch": 0, "model_config": mcfg, "classes": classes})
    (d / MODEL).write_bytes((d / MODEL).read_bytes()[:-7])
    tracker = Tracker.create_run(uri, "e", "r", {})
    tracker.log_artifacts(d, "checkpoints/best")
    args = ["--config", str(config), *[a for o in overrides for a in ("--set", o)], "--run-id", tracker.run_id]
    out = CliRunner().invoke(evaluate, [*args, "--json"])
    assert out.exit_code == 2, out.output
    error = json.loads(out.stdout)["error"]
    assert error.startswith(f"runs:/{tracker.run_id}/checkpoints/best (downloaded to "), error
    assert f"{MODEL}: truncated: " in error and "Traceback" not in out.output
