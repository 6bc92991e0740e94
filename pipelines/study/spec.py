"""The study spec: the rows of a paper table, the seeds each is trained with, and the shared budget.

A study file (``configs/studies/*.yaml``)::

    name: rgbd
    metrics: [val/semseg/miou]
    seeds: [0, 1, 2]
    set: {train.epochs: 6, data.shards: data/shards/study}
    trial: {workers: 1, cpus_per_worker: 1}
    max_concurrent_trials: 2
    baselines: [st_semseg, st_depth]
    rows:
      - {name: rgb_only, config: configs/rgb_only.yaml}
      - {name: cen, config: configs/cen.yaml, set: {model.options.l1_weight: 1.0e-3}}

Every row's config is its file with the study's ``set``, then the row's ``set``, then the command's
``--set`` applied, and the seed written to ``train.seed``. :func:`validate_study` builds every row x seed
as a full experiment before anything is trained and reports every problem at once, naming the row.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusion.metrics import MetricSet
from fusion.tasks import TASKS
from pipelines.config import (
    ConfigError,
    ExperimentConfig,
    _abs,
    _format_errors,
    apply_overrides,
    project_root,
    read_yaml_mapping,
    set_fields,
)
from pipelines.track.data_versions import resolve_data_rev
from pipelines.train.driver import validate_experiment
from pipelines.tune.spec import TrialSpec, check_name, load_named_spec

#: Fields a study sets itself: the seed of each trial, and where its runs and checkpoints go.
RESERVED = (
    "train.seed",
    "checkpoint.storage_path",
    "tracking.run_name",
    "tracking.uri",
    "tracking.experiment",
    "tracking.register_as",
)


def _plain_name(name: str, what: str) -> str:
    """A row or study name names a directory or a file: one plain path component."""
    try:
        return check_name(name)
    except ValueError:
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '-' and '.' (it names a directory)") from None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_overrides(where: str, values: dict[str, Any]) -> dict[str, Any]:
    bad = [k for k in values if k in RESERVED]
    if bad:
        raise ValueError(f"{where}{', '.join(bad)}: set by the study itself, not by a spec ({', '.join(RESERVED)})")
    return values


class StudyRow(_Spec):
    name: str = Field(description="the row's name in the table (letters, digits, '_', '-', '.')")
    config: str = Field(description="experiment config YAML; a relative path is read from the project root")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of this row only (dotted paths)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _plain_name(v, "row name")

    @field_validator("set")
    @classmethod
    def _set(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_overrides("set.", v)


class StudySpec(_Spec):
    name: str | None = Field(None, description="default: the study file's stem")
    metrics: list[str] = Field(min_length=1, description="the table's headline metrics, 'val/<task>/<metric>'")
    seeds: list[int] = Field(min_length=1, description="every row is trained once per seed (train.seed)")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides applied to every row (dotted paths)")
    trial: TrialSpec = Field(default_factory=TrialSpec)
    max_concurrent_trials: int = Field(1, ge=1)
    baselines: list[str] = Field(default_factory=list, description="single-task rows delta_m is computed against")
    experiment: str | None = Field(None, description="MLflow experiment (default: the first row's)")
    storage_path: str | None = Field(None, description="default: the first row's checkpoint.storage_path")
    log_model: bool = Field(False, description="log an MLflow model per trial (off: checkpoints are enough)")
    rows: list[StudyRow] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return v if v is None else _plain_name(v, "study name")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m.count("/") < 2 or not m.startswith("val/")]
        if bad:
            raise ValueError(f"{bad}: a metric is 'val/<task>/<metric>'")
        if len(set(v)) != len(v):
            raise ValueError(f"a metric is listed twice in {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct and >= 0, got {v}")
        return v

    @field_validator("set")
    @classmethod
    def _set(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_overrides("", v)

    @model_validator(mode="after")
    def _rows(self) -> StudySpec:
        names = [r.name for r in self.rows]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rows: row name(s) {twice} used more than once")
        unknown = [b for b in self.baselines if b not in names]
        if unknown:
            raise ValueError(f"baselines: {unknown} are not rows of the study (rows: {', '.join(names)})")
        return self

    def digest(self, configs: dict[str, dict[str, Any]]) -> str:
        """Identifies the study (spec + every row's resolved config) so that a resumed study is the same."""
        body = json.dumps({"spec": self.model_dump(mode="json"), "configs": configs}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


def load_study(path: str | Path) -> StudySpec:
    """The study in ``path``; a missing file, bad YAML or a bad key is a ConfigError naming the file and key."""
    return load_named_spec(path, StudySpec, "study", lambda stem: _plain_name(stem, "study name"))


@dataclass(frozen=True)
class Trial:
    """One cell of the study's grid: a row trained with one seed."""

    row: str
    seed: int
    config: ExperimentConfig


def row_raw_config(spec: StudySpec, row: StudyRow, overrides: list[str], root: Path | None = None) -> dict[str, Any]:
    """The row's config file with the study's, the row's and the command's overrides (no seed yet)."""
    raw = read_yaml_mapping(_abs(row.config, root or project_root()), "config file", "top level must be a mapping")
    raw = set_fields(raw, [*spec.set.items(), *row.set.items()])
    return apply_overrides(raw, overrides)


def trial_raw_config(spec: StudySpec, row_raw: dict[str, Any], seed: int) -> dict[str, Any]:
    """A row's config for one seed, with the study's fixed settings."""
    fixed: dict[str, Any] = {
        "train.seed": seed,
        "tracking.log_model": spec.log_model,
        "tracking.register_as": None,
    }
    for field in ("workers", "cpus_per_worker", "use_gpu"):
        value = getattr(spec.trial, field)
        if value is not None:
            fixed[f"train.{field}"] = value
    if spec.experiment:
        fixed["tracking.experiment"] = spec.experiment
    return set_fields(row_raw, list(fixed.items()))


def validate_study(spec: StudySpec, overrides: list[str] | None = None, root: Path | None = None) -> list[Trial]:
    """Every row x seed as a full experiment (:func:`pipelines.train.driver.validate_experiment`: dataset,
    model built, metric), before anything is trained; every problem is reported at once, naming the row.
    The trials come back row by row, seeds in the spec's order."""
    problems: list[str] = []
    trials: list[Trial] = []
    seeded = [o for o in overrides or [] if o.partition("=")[0].strip() == "train.seed"]
    if seeded:
        raise ConfigError(f"--set {seeded[0]}: train.seed is set by the study, once per seed in `seeds`")
    for i, row in enumerate(spec.rows):
        where = f"rows[{i}] ({row.name})"
        try:
            row_raw = row_raw_config(spec, row, list(overrides or []), root)
        except ConfigError as e:
            problems.append(f"{where}: {e}")
            continue
        row_ok = True
        for seed in spec.seeds:
            try:
                cfg = resolve_data_rev(ExperimentConfig.model_validate(trial_raw_config(spec, row_raw, seed)))
                validate_experiment(cfg)
            except ValidationError as e:
                problems.append(f"{where}:\n{textwrap.indent(_format_errors(e, row.config), '    ')}")
                row_ok = False
            except ConfigError as e:
                problems.append(f"{where}, {row.config}:\n{textwrap.indent(str(e), '    ')}")
                row_ok = False
            else:
                trials.append(Trial(row.name, seed, cfg))
            if not row_ok:
                break  # the seed changes nothing else: one report per row
        if row_ok:
            missing = _missing_metrics(spec, trials[-1].config)
            if missing:
                problems.append(f"{where}: {missing}")
    problems += _unknown_metrics(spec)
    if problems:
        raise ConfigError(f"study {spec.name!r}: rows that would fail:\n" + "\n".join(f"  - {p}" for p in problems))
    return trials


def _unknown_metrics(spec: StudySpec) -> list[str]:
    """Metric names no task reports (``val/semseg/mIoU`` for ``val/semseg/miou``)."""
    problems = []
    for m in spec.metrics:
        task = m.split("/")[1]
        if task not in TASKS:
            problems.append(f"metrics: {m!r}: unknown task {task!r} (known: {', '.join(TASKS)})")
            continue
        names = sorted(f"val/{k}" for k in MetricSet([task], 2).compute())
        if m not in names:
            problems.append(f"metrics: no metric {m!r}; {task} has {', '.join(names)}")
    return problems


def _missing_metrics(spec: StudySpec, cfg: ExperimentConfig) -> str | None:
    """A row that reports none of the study's metrics is a mistake, not a blank row (a row may lack some:
    a single-task row in a multi-task table)."""
    aux = set(cfg.model.options.get("auxiliary_tasks") or [])
    final = [t for t in cfg.data.tasks if t not in aux]
    if not any(m.split("/")[1] in final for m in spec.metrics):
        return f"reports none of the study's metrics {spec.metrics} (its tasks: {final})"
    return None
