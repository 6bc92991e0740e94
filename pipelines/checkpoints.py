"""Checkpoint directories: ``model.pt`` + ``train_state.pt`` + ``meta.json``, no pickles, every file verified.

``model.pt`` and ``train_state.pt`` hold only tensors and plain containers, so they load with
``torch.load(..., weights_only=True)``. ``meta.json`` records the epoch, the MLflow run id (so a
resumed run continues the same MLflow run), the model config, the metrics of that epoch, and what
makes the checkpoint verifiable (format 2, :data:`FORMAT`):

- ``files``: the size and sha256 of each ``.pt`` file of the checkpoint;
- ``meta_sha256``: the sha256 of meta.json's own content, everything but this key, as canonical JSON
  (:func:`_canonical`: sorted keys, no spaces, ASCII);
- ``checkpoint_format``: 2.

``meta.json`` is written last, and every file by rename (a temp file beside it first): a directory
with a meta.json has the files it names, whole. Every read checks what it reads: meta.json's digest
and shape (the type of each key fusionpipe reads), then the size and digest of the ``.pt`` file, then
that ``torch.load`` reads it. A checkpoint that fails a check raises :class:`CorruptCheckpointError`
naming the file and what is wrong; one that is whole but cannot be used here (another model config,
another optimizer) raises :class:`CheckpointError`.

Checkpoints written before the digests existed (no ``checkpoint_format``, ``files`` or ``meta_sha256``
in meta.json) still load, with a warning that they cannot be verified; their shape is checked and a
``.pt`` file that ``torch.load`` cannot read is still a :class:`CorruptCheckpointError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.manifest import write_atomic
from fusion import build_model
from fusion.registry import upgrade_model_config
from pipelines.jsonio import dumps

META = "meta.json"
MODEL = "model.pt"
TRAIN_STATE = "train_state.pt"
#: The checkpoint format this module writes and verifies.
FORMAT = 2
#: meta.json's keys that make a checkpoint verifiable; a checkpoint with none of them predates them.
INTEGRITY_KEYS = ("checkpoint_format", "files", "meta_sha256")

log = logging.getLogger(__name__)
_warned_unverifiable: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed or belongs to another model/config."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files are damaged: missing, truncated, changed since they were written
    (a digest that does not match), unreadable by ``torch.load``, or a meta.json that is not JSON or
    not of the shape fusionpipe writes. Another checkpoint of the same run may be intact."""


def save_checkpoint(
    directory: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any], train_state: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s state (and ``train_state``) and ``meta`` with the digests of the files, meta.json last."""
    # Through the project's strict JSON (a NaN metric is null) before any file is written: a meta that
    # cannot be written fails here, and the digest is of what a reader parses back.
    body = json.loads(dumps({k: v for k, v in meta.items() if k not in INTEGRITY_KEYS}))
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {MODEL: _save_tensors(d / MODEL, unwrap(model).state_dict())}
    if train_state is not None:
        files[TRAIN_STATE] = _save_tensors(d / TRAIN_STATE, train_state)
    else:
        (d / TRAIN_STATE).unlink(missing_ok=True)  # an earlier one here is not part of this checkpoint
    body.update({"checkpoint_format": FORMAT, "files": files})
    body["meta_sha256"] = hashlib.sha256(_canonical(body).encode()).hexdigest()
    write_atomic(d / META, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    return d


def _save_tensors(path: Path, obj: Any) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_atomic(path, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _canonical(obj: Any) -> str:
    """The JSON text ``meta_sha256`` is the digest of: sorted keys, no whitespace, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def read_meta(directory: str | os.PathLike[str], require: tuple[str, ...] = ()) -> dict[str, Any]:
    """meta.json, verified and checked for shape, without its integrity keys; ``require``: the keys
    besides ``epoch`` that the caller needs (``model_config`` to build the model)."""
    meta = _read_meta(Path(directory), require)
    return {k: v for k, v in meta.items() if k not in INTEGRITY_KEYS}


def verify_checkpoint(directory: str | os.PathLike[str], require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every file of the checkpoint (meta.json, then the size and digest of each ``.pt`` file it
    names) without loading them; returns :func:`read_meta`'s meta. A checkpoint without digests is
    checked by loading its ``.pt`` files."""
    d = Path(directory)
    meta = _read_meta(d, require)
    if "files" in meta:
        for name in meta["files"]:
            _read_file(d, name, meta)
    else:
        _load(d, MODEL, meta)
        if (d / TRAIN_STATE).is_file():
            _load(d, TRAIN_STATE, meta)
    return {k: v for k, v in meta.items() if k not in INTEGRITY_KEYS}


def build_checkpoint_model(model_config: dict[str, Any]) -> nn.Module:
    """The model a checkpoint's ``model_config`` describes, built without loading ``model.pretrained``: the
    checkpoint's ``model.pt`` holds every weight, and the ImageNet file may not exist where it is loaded."""
    return build_model({**model_config, "pretrained": None})


def write_weights_only(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """A copy of checkpoint ``src`` in ``dst`` without ``train_state.pt`` (the optimizer state, twice the
    size of the weights with Adam): ``model.pt`` byte for byte and a meta.json that records only it, plus
    ``weights_only: true`` and the keys of ``extra``. It loads and verifies like any checkpoint; a training
    run cannot resume from it."""
    s, d = Path(src), Path(dst)
    meta = _read_meta(s)
    data = _read_file(s, MODEL, meta)
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / MODEL, data)
    (d / TRAIN_STATE).unlink(missing_ok=True)
    body = {k: v for k, v in meta.items() if k not in INTEGRITY_KEYS}
    body.update({**(extra or {}), "weights_only": True, "checkpoint_format": FORMAT})
    body["files"] = {MODEL: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    body = json.loads(dumps(body))
    body["meta_sha256"] = hashlib.sha256(_canonical(body).encode()).hexdigest()
    write_atomic(d / META, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    return d


def check_compatible(meta_model: dict[str, Any], want: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint built for another model config, naming every differing field."""
    keys = sorted(set(meta_model) | set(want))
    diffs = [
        f"{k}: checkpoint {meta_model.get(k)!r} vs config {want.get(k)!r}"
        for k in keys
        if k != "pretrained" and meta_model.get(k) != want.get(k)
    ]
    if diffs:
        raise CheckpointError(f"{where}: checkpoint is for another model config: " + "; ".join(diffs))


def read_model_state(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``model.pt``'s state dict, verified against meta.json."""
    d = Path(directory)
    state = _load(d, MODEL, _read_meta(d))
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CorruptCheckpointError(f"{d / MODEL}: not a model state (a dict of tensors), a {type(state).__name__}")
    return state


def apply_model_state(model: nn.Module, state: dict[str, torch.Tensor], where: str | os.PathLike[str]) -> None:
    """Load ``state`` into ``model``, refusing one that does not fit it, naming what differs."""
    try:
        result = unwrap(model).load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{where}: state does not fit the model: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: state does not fit the model: missing {result.missing_keys[:10]}"
            f"{'...' if len(result.missing_keys) > 10 else ''}, unexpected {result.unexpected_keys[:10]}"
            f"{'...' if len(result.unexpected_keys) > 10 else ''}"
        )


def load_model_state(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    apply_model_state(model, read_model_state(directory), Path(directory) / MODEL)


def load_train_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``train_state.pt`` (the optimizer's state), verified against meta.json."""
    d = Path(directory)
    state = _load(d, TRAIN_STATE, _read_meta(d))
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{d / TRAIN_STATE}: not a training state (a dict), a {type(state).__name__}")
    return state


def _read_meta(d: Path, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """meta.json with its integrity keys: parsed strictly, its digest and shape checked, the keys in
    ``require`` there."""
    p = d / META
    if not p.is_file():
        raise CorruptCheckpointError(f"{d}: not a fusionpipe checkpoint (no {META})")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{p}: not valid JSON: not UTF-8 text ({e})") from e
    try:
        meta = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CorruptCheckpointError(f"{p}: not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{p}: not a JSON object but a {type(meta).__name__}")
    if any(k in meta for k in INTEGRITY_KEYS):
        _check_digest(p, meta)
    elif str(d.resolve()) not in _warned_unverifiable:
        _warned_unverifiable.add(str(d.resolve()))
        log.warning("%s: checkpoint written before checkpoints recorded their files' digests: it cannot be verified", d)
    _check_shape(p, meta)
    for key in require:
        if key not in meta:
            raise CorruptCheckpointError(f"{p}: missing key {key!r}")
    if isinstance(meta.get("model_config"), dict):
        # Options a model gained since this checkpoint was written read as they were then.
        meta["model_config"] = upgrade_model_config(meta["model_config"])
    return meta


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_digest(p: Path, meta: dict[str, Any]) -> None:
    for key in INTEGRITY_KEYS:
        if key not in meta:
            raise CorruptCheckpointError(
                f"{p}: missing key {key!r} (it has {', '.join(k for k in INTEGRITY_KEYS if k in meta)})"
            )
    expected = meta["meta_sha256"]
    if not _is_sha256(expected):
        raise CorruptCheckpointError(f"{p}: 'meta_sha256' must be a sha256 (64 hex digits), not {_short(expected)}")
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    try:
        actual = hashlib.sha256(_canonical(body).encode()).hexdigest()
    except ValueError as e:  # a number too large for a float (inf)
        raise CorruptCheckpointError(f"{p}: not valid JSON: {e}") from e
    if actual != expected:
        raise CorruptCheckpointError(
            f"{p}: sha256 mismatch: its content hashes to {actual}, it records {expected}: "
            "the file changed after the checkpoint was written"
        )


def _check_shape(p: Path, meta: dict[str, Any]) -> None:
    """The type of every key fusionpipe reads from meta.json."""
    if "epoch" not in meta:
        raise CorruptCheckpointError(f"{p}: missing key 'epoch'")
    if not _is_int(meta["epoch"]) or meta["epoch"] < 0:
        _wrong(p, "epoch", "an integer >= 0", meta["epoch"])
    if "metrics" in meta:
        m = meta["metrics"]
        if not isinstance(m, dict):
            _wrong(p, "metrics", "an object of numbers", m)
        for k, v in m.items():
            if not (v is None or _is_number(v)):
                _wrong(p, f"metrics.{k}", "a number or null", v)
    if "model_config" in meta:
        mc = meta["model_config"]
        if not isinstance(mc, dict):
            _wrong(p, "model_config", "an object", mc)
        for key in ("name", "tasks", "modalities"):
            if key not in mc:
                raise CorruptCheckpointError(f"{p}: missing key 'model_config.{key}'")
        if not isinstance(mc["name"], str):
            _wrong(p, "model_config.name", "a string", mc["name"])
        for key in ("tasks", "modalities"):
            _string_list(p, f"model_config.{key}", mc[key])
        if "num_classes" in mc and not _is_int(mc["num_classes"]):
            _wrong(p, "model_config.num_classes", "an integer", mc["num_classes"])
        if mc.get("options") is not None and not isinstance(mc["options"], dict):
            _wrong(p, "model_config.options", "an object", mc["options"])
    for key in ("tasks", "modalities", "classes"):
        if key in meta:
            _string_list(p, key, meta[key])
    if "mlflow_run_id" in meta and not (meta["mlflow_run_id"] is None or isinstance(meta["mlflow_run_id"], str)):
        _wrong(p, "mlflow_run_id", "a string", meta["mlflow_run_id"])
    if "optimizer" in meta and not isinstance(meta["optimizer"], str):
        _wrong(p, "optimizer", "a string", meta["optimizer"])
    if "checkpoint_format" in meta:
        fmt = meta["checkpoint_format"]
        if not _is_int(fmt):
            _wrong(p, "checkpoint_format", "an integer", fmt)
        if fmt != FORMAT:  # its digest matched: a format this version does not know, not damage
            raise CheckpointError(
                f"{p}: checkpoint format {fmt}; this fusionpipe reads format {FORMAT} (and checkpoints from before "
                "formats were numbered): load it with the fusionpipe that wrote it"
            )
    if "files" in meta:
        files = meta["files"]
        if not isinstance(files, dict):
            _wrong(p, "files", "an object", files)
        if MODEL not in files:
            raise CorruptCheckpointError(f"{p}: missing key 'files.{MODEL}'")
        for name, rec in files.items():
            if name not in (MODEL, TRAIN_STATE):
                raise CorruptCheckpointError(f"{p}: 'files' names {name!r}; a checkpoint has {MODEL} and {TRAIN_STATE}")
            if not isinstance(rec, dict):
                _wrong(p, f"files.{name}", "an object", rec)
            for key in ("sha256", "size"):
                if key not in rec:
                    raise CorruptCheckpointError(f"{p}: missing key 'files.{name}.{key}'")
            if not _is_sha256(rec["sha256"]):
                _wrong(p, f"files.{name}.sha256", "a sha256 (64 hex digits)", rec["sha256"])
            if not _is_int(rec["size"]) or rec["size"] < 0:
                _wrong(p, f"files.{name}.size", "an integer >= 0", rec["size"])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _short(v: Any, limit: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _wrong(p: Path, key: str, want: str, value: Any) -> None:
    raise CorruptCheckpointError(f"{p}: {key!r} must be {want}, not {_short(value)} ({type(value).__name__})")


def _string_list(p: Path, key: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        _wrong(p, key, "a list of strings", value)


def _read_file(d: Path, name: str, meta: dict[str, Any]) -> bytes:
    """The bytes of ``name``, checked against meta.json's record of it when it has one."""
    p = d / name
    if not p.is_file():
        raise CorruptCheckpointError(f"{p}: missing (the checkpoint is incomplete)")
    data = p.read_bytes()
    if "files" not in meta:
        return data
    rec = meta["files"].get(name)
    if rec is None:
        raise CorruptCheckpointError(f"{p}: not part of this checkpoint ({META} records no {name})")
    size, want = rec["size"], rec["sha256"]
    if len(data) != size:
        if not data:
            why = f"empty (0 bytes; {META} records {size})"
        elif len(data) < size:
            why = f"truncated: {len(data)} bytes, {META} records {size}"
        else:
            why = f"{len(data)} bytes, {META} records {size}: the file changed after the checkpoint was written"
        raise CorruptCheckpointError(f"{p}: {why}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != want:
        raise CorruptCheckpointError(
            f"{p}: sha256 mismatch: expected {want} ({META}), actual {actual}: the file is corrupt"
        )
    return data


def _load(d: Path, name: str, meta: dict[str, Any]) -> Any:
    data = _read_file(d, name, meta)
    p = d / name
    if not data:
        raise CorruptCheckpointError(f"{p}: empty (0 bytes)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - damaged bytes make the unpickler or zip reader raise almost anything
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CorruptCheckpointError(
            f"{p}: torch.load cannot read it ({type(e).__name__}: {first}): the file is truncated or corrupt"
        ) from e
