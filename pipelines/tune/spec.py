"""The sweep spec: which config fields ``fusionpipe tune`` varies, how, and how trials are scheduled.

A sweep file (``configs/sweeps/*.yaml``) names a search space over any experiment-config field by its
dotted path, one distribution per field::

    metric: val/semseg/miou
    mode: max
    num_samples: 8
    scheduler: {name: asha, max_epochs: 8, grace_period: 1, reduction_factor: 2}
    trial: {workers: 1, cpus_per_worker: 1}
    space:
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      loss.weights.depth: {choice: [0.5, 1.0, 2.0]}
      model.options.fpm_softmax: {grid: [task, reference]}

The spec is validated on its own (shape, bounds) and against the base config: every value a
distribution can produce (each choice, each grid point, both bounds of a range) is applied to the base
config and must give a valid experiment, so a typo in a field path fails before any trial starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import (
    ConfigError,
    ExperimentConfig,
    _format_errors,
    describe_error,
    read_yaml_mapping,
    set_fields,
)

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
# Fields a sweep may not vary: the scheduler owns the epoch budget, the sweep owns names and storage.
RESERVED = (
    "train.epochs",
    "checkpoint.metric",
    "checkpoint.mode",
    "checkpoint.storage_path",
    "tracking.run_name",
    "tracking.uri",
    "tracking.experiment",
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerSpec(_Spec):
    name: Literal["asha", "fifo"] = "asha"
    max_epochs: int = Field(4, ge=1, description="epochs of a trial that is never stopped (train.epochs)")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(
        4, gt=1, description="ASHA: 1/reduction_factor of trials go on at each rung (Ray's default)"
    )

    @model_validator(mode="after")
    def _grace(self) -> SchedulerSpec:
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period {self.grace_period} > max_epochs {self.max_epochs}")
        return self


class TrialSpec(_Spec):
    """Resources of one trial, i.e. of its Ray Train run; unset fields keep the base config's."""

    workers: int | None = Field(None, ge=1)
    cpus_per_worker: float | None = Field(None, gt=0)
    use_gpu: bool | None = None


class SweepSpec(_Spec):
    name: str | None = Field(None, description="default: the sweep file's stem")
    metric: str = "val/semseg/miou"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(4, ge=1, description="samples drawn from the space (a grid is repeated this often)")
    seed: int = Field(0, description="seed of the random search: the same spec draws the same trials")
    max_concurrent_trials: int = Field(1, ge=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    trial: TrialSpec = Field(default_factory=TrialSpec)
    experiment: str | None = Field(None, description="MLflow experiment (default: the base config's)")
    storage_path: str | None = Field(None, description="default: the base config's checkpoint.storage_path")
    log_model: bool = Field(False, description="log an MLflow model per trial (off: checkpoints are enough)")
    space: dict[str, dict[str, Any]] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return v if v is None else check_name(v)

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems = []
        for key, dist in space.items():
            try:
                _check_distribution(key, dist)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))
        return space

    def digest(self, base: dict[str, Any]) -> str:
        """Identifies the sweep (spec + base config) so a resumed sweep is the same sweep."""
        body = json.dumps({"spec": self.model_dump(mode="json"), "base": base}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


def check_name(name: str) -> str:
    """A sweep name becomes a directory under the storage path: one plain path component."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"sweep name {name!r}: use letters, digits, '_', '-' and '.' (it names a directory)")
    return name


def _check_distribution(key: str, dist: dict[str, Any]) -> None:
    if key in RESERVED:
        raise ValueError(f"space.{key}: set by the sweep itself, not searchable ({', '.join(RESERVED)})")
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ValueError(
            f"space.{key}: expected one of {{{', '.join(f'{d}: ...' for d in DISTRIBUTIONS)}}}, got {dist!r}"
        )
    kind, arg = next(iter(dist.items()))
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"space.{key}.{kind}: expected a non-empty list, got {arg!r}")
        return
    if not (
        isinstance(arg, list)
        and len(arg) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in arg)
    ):
        raise ValueError(f"space.{key}.{kind}: expected [low, high], got {arg!r}")
    lo, hi = arg
    if not lo < hi:
        raise ValueError(f"space.{key}.{kind}: low {lo} must be < high {hi}")
    if kind == "loguniform" and lo <= 0:
        raise ValueError(f"space.{key}.loguniform: low {lo} must be > 0")
    if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ValueError(f"space.{key}.randint: bounds must be integers, got {arg!r}")


def load_named_spec(path: str | Path, model: type[Any], kind: str, check: Callable[[str], str]) -> Any:
    """The ``model`` spec in the YAML file ``path`` (a sweep's or a study's); without a ``name:`` it is the
    file's stem, checked by ``check``. A missing file, bad YAML or a bad key is a ConfigError naming the
    file and the key."""
    p = Path(path)
    raw = read_yaml_mapping(p, f"{kind} file", "top level must be a mapping")
    try:
        spec = model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(p))) from e
    if spec.name is None:
        try:
            spec.name = check(p.stem)
        except ValueError as e:
            raise ConfigError(f"{p}: {e}; set `name:` in the file") from e
    return spec


def load_sweep(path: str | Path) -> SweepSpec:
    return load_named_spec(path, SweepSpec, "sweep", check_name)


def candidate_values(dist: dict[str, Any]) -> list[Any]:
    """Every value worth validating: each listed value, or both ends of a range and, for a continuous
    range, a fractional value inside it (a float such as the 4.29 a trial draws, which a whole-number
    field refuses)."""
    kind, arg = next(iter(dist.items()))
    if kind in ("choice", "grid"):
        return list(arg)
    if kind == "randint":  # Tune's randint excludes the upper bound
        return [int(arg[0]), int(arg[1]) - 1]
    lo, hi = float(arg[0]), float(arg[1])
    inside = lo * (hi / lo) ** _INSIDE if kind == "loguniform" else lo + (hi - lo) * _INSIDE
    return [lo, hi, inside]


#: Where inside a continuous range :func:`candidate_values` looks: an irrational fraction, so the value
#: is never a whole number by accident.
_INSIDE = math.pi / 10


def tune_domain(dist: dict[str, Any]) -> Any:
    from ray import tune

    kind, arg = next(iter(dist.items()))
    return {
        "choice": lambda: tune.choice(arg),
        "grid": lambda: tune.grid_search(arg),
        "uniform": lambda: tune.uniform(*arg),
        "loguniform": lambda: tune.loguniform(*arg),
        "randint": lambda: tune.randint(int(arg[0]), int(arg[1])),
    }[kind]()


def grid_size(spec: SweepSpec) -> int:
    return math.prod(len(d["grid"]) for d in spec.space.values() if "grid" in d)


def trial_raw_config(base: dict[str, Any], spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The base config with a trial's sampled values and the sweep's fixed settings applied."""
    fixed = {
        "train.epochs": spec.scheduler.max_epochs,
        "checkpoint.metric": spec.metric,
        "checkpoint.mode": spec.mode,
        "tracking.log_model": spec.log_model,
        "tracking.register_as": None,  # the sweep registers its best trial, not every trial
    }
    for field in ("workers", "cpus_per_worker", "use_gpu"):
        value = getattr(spec.trial, field)
        if value is not None:
            fixed[f"train.{field}"] = value
    if spec.experiment:
        fixed["tracking.experiment"] = spec.experiment
    items = {**fixed, **params}
    return set_fields(base, list(items.items()))


def validate_sweep(base: dict[str, Any], spec: SweepSpec) -> ExperimentConfig:
    """Check every candidate value of each field against the base config (one field at a time, so each
    problem is reported once, at its field); returns the config with every field's first value."""
    problems: list[str] = []
    first = {k: candidate_values(d)[0] for k, d in spec.space.items()}
    for key, dist in spec.space.items():
        for value in candidate_values(dist):
            try:
                ExperimentConfig.model_validate(trial_raw_config(base, spec, {key: value}))
            except ValidationError as e:
                detail = "; ".join(
                    f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {describe_error(err)}"
                    + (
                        " (a uniform range draws fractions: use randint for a whole number)"
                        if err["type"] in ("int_type", "int_from_float") and isinstance(err.get("input"), float)
                        else ""
                    )
                    for err in e.errors()
                )
                problems.append(f"space.{key} = {value!r}: {detail}")
            except ConfigError as e:
                problems.append(f"space.{key} = {value!r}: {e}")
    metric_parts = spec.metric.split("/")
    if len(metric_parts) < 3 or metric_parts[0] != "val":
        problems.append(f"metric: {spec.metric!r} must be 'val/<task>/<metric>'")
    if problems:
        raise ConfigError(
            f"sweep {spec.name!r} does not fit the base config:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    try:
        return ExperimentConfig.model_validate(trial_raw_config(base, spec, first))
    except ValidationError as e:
        raise ConfigError(_format_errors(e, f"sweep {spec.name!r}, first values {first}")) from e
