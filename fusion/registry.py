"""Model registry: adding a model is one file with one ``@register_model`` builder.

``build_model(cfg)`` takes the config's ``model`` section (a mapping or a :class:`ModelConfig`)
and returns a plain ``nn.Module``. Every builder receives a validated :class:`ModelConfig`; the
model-specific ``options`` are validated by the builder against its own options dataclass with
:func:`parse_options`, so an unknown or mistyped option is an error that names it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from fusion.config import ModelConfig

_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {}

T = TypeVar("T")


def register_model(name: str) -> Callable[[Callable[[ModelConfig], nn.Module]], Callable[[ModelConfig], nn.Module]]:
    def deco(fn: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    # Importing the model modules runs their @register_model decorators.
    import fusion.models  # noqa: F401


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    _load_all()
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)  # validates
    else:
        cfg.validate()  # a typed config may still name an unknown task or modality
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown model {cfg.name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[cfg.name](cfg)


def parse_options(cls: type[T], options: Mapping[str, Any], model: str) -> T:
    """Build the options dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"model {model!r}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
        )
    return cls(**options)
