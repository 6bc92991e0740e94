"""Model registry: adding a model is one file with one ``@register_model`` builder.

``build_model(cfg)`` takes the config's ``model`` section (a mapping or a :class:`ModelConfig`)
and returns a plain ``nn.Module``. Every builder receives a validated :class:`ModelConfig`; the
model-specific ``options`` are validated by the builder against its own options dataclass with
:func:`parse_options`, so an unknown or mistyped option is an error that names it.

The model modules (:mod:`fusion.models`) import this one to register themselves, and
``fusion/__init__.py`` imports them, so after any ``import fusion...`` every built-in model is here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from fusion.config import ModelConfig

_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {}
# Options a model gained after checkpoints were written with it: {model: {option: (before, default)}},
# ``before`` being the value that builds the model as it was before the option existed.
_ADDED_OPTIONS: dict[str, dict[str, tuple[Any, Any]]] = {}

T = TypeVar("T")


def register_model(name: str) -> Callable[[Callable[[ModelConfig], nn.Module]], Callable[[ModelConfig], nn.Module]]:
    def deco(fn: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)  # validates
    else:
        cfg.validate()  # a typed config may still name an unknown task or modality
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown model {cfg.name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[cfg.name](cfg)


def register_added_option(model: str, option: str, before: Any, default: Any) -> None:
    """Declare that ``model`` gained ``option`` (default ``default``) after checkpoints were written with
    it, and that ``before`` builds the model as it was then. A checkpoint's model config then records
    the option explicitly (:func:`pin_added_options`), and an older one that lacks it is read as
    ``before`` (:func:`upgrade_model_config`), so it still loads into the weights it has."""
    _ADDED_OPTIONS.setdefault(model, {})[option] = (before, default)


def pin_added_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` (a model config dict) with each added option of its model written out: its value, or
    the current default. What a checkpoint's ``meta.json`` records."""
    added = _ADDED_OPTIONS.get(cfg.get("name", ""), {})
    options = dict(cfg.get("options") or {})
    options.update({k: default for k, (_, default) in added.items() if k not in options})
    return {**cfg, "options": options}


def upgrade_model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's model config with each added option it lacks set to its value from before the
    option existed: the model it was trained as."""
    added = _ADDED_OPTIONS.get(cfg.get("name", ""), {})
    options = dict(cfg.get("options") or {})
    options.update({k: before for k, (before, _) in added.items() if k not in options})
    return {**cfg, "options": options}


def parse_options(cls: type[T], options: Mapping[str, Any], model: str) -> T:
    """Build the options dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"model {model!r}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
        )
    return cls(**options)
