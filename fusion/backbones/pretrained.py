"""Load ImageNet weights from a local file into a backbone; nothing is ever downloaded.

Accepted files, none of them unpickled into objects:

- ``.pth``/``.pt``/``.bin`` (torchvision, timm, the official HRNet release, a Hugging Face
  ``pytorch_model.bin``): state dicts read with ``torch.load(weights_only=True)``, either bare or wrapped
  under ``state_dict``/``model``;
- ``.safetensors`` (timm and Hugging Face releases): read here from the format's specification (an
  8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte range,
  then the raw little-endian bytes), without the ``safetensors`` package.

Our module names are torchvision's and timm's ResNet names (and the official HRNet names), so the
mapping only strips a wrapper prefix shared by every key (``module.``, ``backbone.``, ``model.``,
``encoder.``) and drops classification heads (``fc``, ``classifier``, HRNet's
``incre_modules``/``downsamp_modules``/``final_layer``, ``last_layer``).

First conv for ``in_channels != 3`` (the checkpoint holds RGB filters ``W`` of shape out×3×k×k):
fewer channels (depth: 1) take the mean of the RGB filters in every channel; more channels keep
``W`` for the first three (early fusion puts ``rgb`` first) and the RGB mean for each extra channel.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

HEAD_PREFIXES = ("fc.", "classifier.", "incre_modules.", "downsamp_modules.", "final_layer.", "last_layer.")
WRAPPER_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
WRAPPER_KEYS = ("state_dict", "model")


#: The file suffixes :func:`read_state_dict` reads.
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

#: safetensors dtype names -> torch dtypes (the format stores every tensor little-endian).
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
#: A safetensors header larger than this is refused (the format's own reader allows 100 MB).
SAFETENSORS_MAX_HEADER = 100_000_000


class PretrainedError(ValueError):
    """A pretrained weights file that is missing, of an unknown kind, damaged, or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file (module docstring)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise PretrainedError(
            f"pretrained {path}: expected a {', '.join(SUFFIXES[:-1])} or {SUFFIXES[-1]} file, got suffix {path.suffix!r}"
        )
    if not path.is_file():
        raise PretrainedError(f"pretrained {path}: no such file (weights are never downloaded; docs/models.md)")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or non-tensor file makes the reader raise almost anything
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise PretrainedError(
            f"pretrained {path}: torch.load(weights_only=True) cannot read it ({type(e).__name__}: {first})"
        ) from e
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedError(
            f"pretrained {path}: expected a state dict of tensors (optionally under {' or '.join(WRAPPER_KEYS)!r})"
        )
    return dict(obj)


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, each checked against the header before it is read."""
    path = Path(path)
    data = path.read_bytes()

    def bad(why: str) -> PretrainedError:
        return PretrainedError(f"pretrained {path}: not a valid .safetensors file: {why}")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(SAFETENSORS_MAX_HEADER, len(data) - 8):
        raise bad(f"header length {n} exceeds the file ({len(data)} bytes) or {SAFETENSORS_MAX_HEADER} bytes")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    body = memoryview(data)[8 + n :]
    out: dict[str, Tensor] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
            raise bad(f"tensor {name!r}: expected dtype, shape and data_offsets, got {spec!r}"[:300])
        dtype = SAFETENSORS_DTYPES.get(spec["dtype"])
        if dtype is None:
            raise bad(f"tensor {name!r}: dtype {spec['dtype']!r} is not one of {', '.join(SAFETENSORS_DTYPES)}")
        shape, offsets = spec["shape"], spec["data_offsets"]
        if not (
            isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise bad(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= len(body)
        ):
            raise bad(f"tensor {name!r}: data_offsets {offsets!r} outside the {len(body)} data bytes")
        count = 1
        for d in shape:
            count *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if offsets[1] - offsets[0] != count * itemsize:
            raise bad(
                f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} of {spec['dtype']} "
                f"({count * itemsize} expected)"
            )
        raw = bytearray(body[offsets[0] : offsets[1]])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        if sys.byteorder == "big" and itemsize > 1:
            t = t.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype)
        out[name] = t.reshape(shape)
    return out


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
        raise PretrainedError(f"pretrained {source} does not fit {type(model).__name__}: " + "; ".join(parts))
    return {k: state.get(k, own[k]) for k in own}


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    model.load_state_dict(match_state_dict(model, read_state_dict(path), source=str(path)))
    return model
