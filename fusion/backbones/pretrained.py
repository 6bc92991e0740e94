"""Load ImageNet weights from a local file into a backbone; nothing is ever downloaded.

Accepted files: ``.pth``/``.pt`` state dicts read with ``torch.load(weights_only=True)``, either bare
or wrapped under ``state_dict``/``model``. Our module names are torchvision's and timm's ResNet names
(and the official HRNet names), so the mapping only strips a wrapper prefix shared by every key
(``module.``, ``backbone.``, ``model.``, ``encoder.``) and drops classification heads (``fc``,
``classifier``, HRNet's ``incre_modules``/``downsamp_modules``/``final_layer``, ``last_layer``).
``.safetensors`` is refused: the ``safetensors`` package is not a dependency.

First conv for ``in_channels != 3`` (the checkpoint holds RGB filters ``W`` of shape out×3×k×k):
fewer channels (depth: 1) take the mean of the RGB filters in every channel; more channels keep
``W`` for the first three (early fusion puts ``rgb`` first) and the RGB mean for each extra channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

HEAD_PREFIXES = ("fc.", "classifier.", "incre_modules.", "downsamp_modules.", "final_layer.", "last_layer.")
WRAPPER_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
WRAPPER_KEYS = ("state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        raise ValueError(
            f"pretrained {path}: .safetensors is not supported (the safetensors package is not "
            "installed); save the weights with torch.save(state_dict) as .pth"
        )
    if path.suffix not in (".pth", ".pt"):
        raise ValueError(f"pretrained {path}: expected a .pth or .pt file, got suffix {path.suffix!r}")
    if not path.is_file():
        raise FileNotFoundError(f"pretrained {path}: no such file (weights are never downloaded)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"pretrained {path}: expected a state dict of tensors (optionally under {' or '.join(WRAPPER_KEYS)!r})"
        )
    return dict(obj)


def strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove a prefix (``module.`` from DataParallel, ``backbone.`` ...) that every key carries."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """RGB filters (out×3×k×k) for ``in_channels`` inputs, by the rule in the module docstring."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(
            f"first conv has {weight.shape[1]} input channels in the checkpoint; can only adapt 3 "
            f"(RGB) to {in_channels}"
        )
    mean = weight.mean(dim=1, keepdim=True)
    if in_channels < 3:
        return mean.repeat(1, in_channels, 1, 1)
    return torch.cat([weight, mean.repeat(1, in_channels - 3, 1, 1)], dim=1)


def first_conv_key(model_state: Mapping[str, Tensor]) -> str:
    # The deep stem (ResNet-v1c) is a Sequential named conv1; its first conv is conv1.0.
    return "conv1.0.weight" if "conv1.0.weight" in model_state else "conv1.weight"


def match_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """The checkpoint as a complete state dict for ``model``, or a ValueError listing every problem.

    ``num_batches_tracked`` buffers missing from old torchvision checkpoints are taken from the model.
    """
    own = model.state_dict()
    state = {k: v for k, v in strip_wrappers(state).items() if not k.startswith(HEAD_PREFIXES)}
    conv_key = first_conv_key(own)
    if conv_key in state and conv_key in own:
        state[conv_key] = adapt_first_conv(state[conv_key], own[conv_key].shape[1])
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [
            f"{name} ({len(keys)}): {', '.join(keys)}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise ValueError(f"pretrained {source} does not fit {type(model).__name__}: " + "; ".join(parts))
    return {k: state.get(k, own[k]) for k in own}


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    model.load_state_dict(match_state_dict(model, read_state_dict(path), source=str(path)))
    return model
