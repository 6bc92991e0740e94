"""Checkpoint directories: ``model.pt`` + ``train_state.pt`` + ``meta.json``, no pickles.

``model.pt`` and ``train_state.pt`` hold only tensors and plain containers, so they load with
``torch.load(..., weights_only=True)``. ``meta.json`` records the epoch, the MLflow run id (so a
resumed run continues the same MLflow run), the model config, and the metrics of that epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusion.registry import upgrade_model_config
from pipelines.jsonio import dumps

META = "meta.json"
MODEL = "model.pt"
TRAIN_STATE = "train_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed or belongs to another model/config."""


def save_checkpoint(
    directory: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any], train_state: dict[str, Any] | None = None
) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(unwrap(model).state_dict(), d / MODEL)
    if train_state is not None:
        torch.save(train_state, d / TRAIN_STATE)
    (d / META).write_text(dumps(meta, indent=2, sort_keys=True))  # strict JSON: a NaN metric is null
    return d


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(directory) / META
    if not p.is_file():
        raise CheckpointError(f"{directory}: not a fusionpipe checkpoint (no {META})")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: not valid JSON: {e}") from e
    if isinstance(meta.get("model_config"), dict):
        # Options a model gained since this checkpoint was written read as they were then.
        meta["model_config"] = upgrade_model_config(meta["model_config"])
    return meta


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


def load_model_state(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    p = Path(directory) / MODEL
    if not p.is_file():
        raise CheckpointError(f"{directory}: no {MODEL}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    try:
        result = unwrap(model).load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{p}: state does not fit the model: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{p}: state does not fit the model: missing {result.missing_keys[:10]}"
            f"{'...' if len(result.missing_keys) > 10 else ''}, unexpected {result.unexpected_keys[:10]}"
            f"{'...' if len(result.unexpected_keys) > 10 else ''}"
        )


def load_train_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(directory) / TRAIN_STATE
    if not p.is_file():
        raise CheckpointError(f"{directory}: no {TRAIN_STATE}")
    return torch.load(p, map_location="cpu", weights_only=True)
