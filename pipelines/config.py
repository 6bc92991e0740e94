"""The experiment config: one YAML, validated into typed sections before anything starts.

Sections (docs/config.md): ``data``, ``model``, ``loss``, ``optim``, ``train``,
``tracking``, ``checkpoint``, ``failure``, and the optional top-level ``plugins``: modules that
register tasks, shard members or models, imported before anything else is checked. Unknown keys
and bad values are errors that list every problem at once. ``--set a.b=c`` overrides any field (values parsed as YAML, like ``dvc exp run -S``).

Types are strict where a coerced value would be silently wrong: counts are whole numbers (``2``, never
``2.0``, ``"2"`` or ``true``), switches are booleans (never ``1`` or ``"yes"`` in quotes), and every float
is finite (no ``.inf`` or ``.nan``) and not a boolean.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from datasets.transforms import AugmentConfig
from fusion.config import TASKS, ModalityList, ModelFields, TaskList
from fusion.registry import pin_added_options

PROJECT_ROOT_ENV = "FUSIONPIPE_PROJECT_ROOT"


def project_root() -> Path:
    """The directory that relative paths in configs are read from: ``$FUSIONPIPE_PROJECT_ROOT`` when set,
    else the current directory (the project a user runs ``fusionpipe`` in, installed or not)."""
    env = os.environ.get(PROJECT_ROOT_ENV)
    return Path(os.path.expanduser(env) if env else os.getcwd()).resolve()


class ConfigError(ValueError):
    """An invalid experiment config; the message lists every problem with its field path."""


def _not_a_bool(value: Any) -> Any:
    # pydantic's float takes `true` as 1.0: a switch written where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


#: A finite float, given as a number (an int is fine) or as text YAML leaves unparsed (``1e-3``), never a
#: boolean, ``.inf`` or ``.nan``.
Real = Annotated[float, BeforeValidator(_not_a_bool), AllowInfNan(False)]
#: A count, a seed or another whole number: an int as YAML and JSON write it, never ``2.0``, ``"2"`` or ``true``.
Count = StrictInt
#: A switch: ``true`` or ``false``, never ``1`` or ``"true"``.
Switch = StrictBool


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSection(_Section):
    shards: str = Field(
        "data/shards/synthetic",
        description="dataset directory (manifest.json and one folder "
        "of shards per split); a relative path is read from the project root (the current directory, or `$FUSIONPIPE_PROJECT_ROOT`)",
    )
    rev: str | None = Field(
        None,
        description="git revision of this repo at which data.shards is read; "
        "resolved through DVC (pipelines/track/data_versions.py)",
    )
    tasks: TaskList = Field(
        default_factory=lambda: ["semseg", "depth"],
        description="tasks whose "
        "targets are loaded: the model's final tasks (predicted and scored) and its "
        "`model.options.auxiliary_tasks` (trained through their aux losses only)",
    )
    modalities: ModalityList = Field(
        default_factory=lambda: ["rgb"], description="input modalities, `rgb` and/or `depth` (the model's inputs)"
    )
    train_split: str = Field("train", description="the split trained on")
    val_split: str = Field(
        "val",
        description="the split validated on after every epoch; also what "
        "`fusionpipe evaluate` scores without `--split`",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig,
        description="augmentation, see [augmentation.md](augmentation.md); only `hflip: 0.5` is on by default",
    )
    augment_on: Literal["cpu", "device"] = Field(
        "cpu",
        description="where the geometric augmentation runs: `cpu` in the loader workers, or `device`: the workers "
        "only decode and the training worker warps each batch on its device before the forward "
        "([augmentation.md](augmentation.md#on-the-device)); `device` takes no photometric ops",
    )
    loader_workers: Count = Field(1, ge=0, description="DataLoader worker processes per training worker")
    shuffle_buffer: Count = Field(
        128,
        ge=0,
        description="encoded training samples held for shuffling, per "
        "loader worker (0: shard order only; shards are shuffled per epoch either way)",
    )
    errors: Literal["raise", "skip"] = Field(
        "raise",
        description="a corrupt sample or shard (a member that does not decode, a shard whose sha256 or sample "
        "count differs from the manifest): `raise` stops naming the shard, key and member; `skip` drops it, logs a "
        "warning and counts what was dropped ([data-format.md](data-format.md#integrity))",
    )
    edge_max_dist: Real = Field(
        0.0075,
        gt=0,
        lt=1,
        description="edge ODS matching tolerance as a fraction of the "
        "image diagonal (SEISM's maxDist, 0.0075 in the official evaluation)",
    )
    edge_protocol: Literal["bsds", "approximate"] = Field(
        "bsds",
        description="edge ODS of `fusionpipe evaluate`: `bsds` (the official protocol: thinned predictions matched "
        "one-to-one within `edge_max_dist`, ODS and OIS) or `approximate` (a max-pool tolerance without thinning: "
        "optimistic, far cheaper) ([models.md](models.md#metrics))",
    )
    val_edge_protocol: Literal["bsds", "approximate"] = Field(
        "approximate",
        description="edge ODS of the validation after every epoch (the metric checkpoints and sweeps select on): "
        "`approximate` by default, as `bsds` costs about 20 times more ([models.md](models.md#metrics))",
    )
    miou_classes: Literal["present", "all"] = Field(
        "present",
        description="classes the semseg and parts mIoU averages, in validation and `fusionpipe evaluate`: `present` "
        "(those in the target or the prediction; the official CEN and ANN code) or `all` (every class, an absent one "
        "counting 0; the official MTI-Net code)",
    )

    @field_validator("rev")
    @classmethod
    def _rev(cls, v: str | None) -> str | None:
        # It is handed to `git rev-parse`: a leading '-' would read as an option.
        if v is not None and (not v.strip() or v.startswith("-") or v != v.strip()):
            raise ValueError(f"{v!r} is not a git revision (a tag, branch or commit, e.g. v1 or 3f2a9c1)")
        return v

    @model_validator(mode="after")
    def _device_augment(self) -> DataSection:
        a = self.augment
        photometric = [k for k in ("color_jitter", "gaussian_noise", "blur") if getattr(a, k) is not None]
        if self.augment_on == "device" and photometric:
            raise ValueError(
                f"augment_on: device warps on the device and has no photometric ops; data.augment sets "
                f"{', '.join(photometric)}: remove them or use augment_on: cpu"
            )
        return self


class ModelSection(ModelFields):
    """The keys, bounds and descriptions of :class:`fusion.config.ModelFields` (what ``fusion.build_model``
    checks), with a default model; :func:`model_config` adds the tasks, modalities and class count."""

    name: str = Field("mtinet", description=ModelFields.model_fields["name"].description)


class LossSection(_Section):
    weights: dict[str, Real] = Field(default_factory=dict, description="per-task weight, default 1")
    deep_supervision: Switch = Field(
        True,
        description="also train on the model's intermediate (`aux`) "
        "predictions, e.g. MTI-Net's scales, CEN's per-modality outputs, ANN's stage-4 head",
    )
    ohem: Switch = Field(False, description="online hard example mining for the semseg cross-entropy")
    aux_resolution: Literal["target", "prediction"] = Field(
        "target",
        description="where each deep-supervision loss is computed: `target` upsamples the aux prediction to the "
        "target (the official code), `prediction` downsamples the target to the prediction "
        "([models.md](models.md#deep-supervision-at-the-predictions-resolution))",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in TASKS]
        if bad:
            raise ValueError(f"weights for unknown task(s) {bad}")
        neg = [k for k, w in v.items() if w < 0]
        if neg:
            raise ValueError(f"negative weight for {neg}")
        return v


class OptimSection(_Section):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="the optimizer")
    lr: Real = Field(1e-3, gt=0, description="learning rate after warm-up, before the schedule decays it")
    weight_decay: Real = Field(1e-4, ge=0, description="weight decay (decoupled for `adamw`)")
    momentum: Real = Field(0.9, ge=0, lt=1, description="momentum, `sgd` only")
    schedule: Literal["poly", "cosine", "constant"] = Field(
        "poly", description="decay per optimizer step after warm-up: `poly` is lr × (1 − t)^poly_power"
    )
    poly_power: Real = Field(0.9, gt=0, description="exponent of the `poly` schedule")
    warmup_epochs: Count = Field(0, ge=0, description="epochs of linear warm-up, from lr / (warm-up steps) up to lr")
    grad_accum: Count = Field(1, ge=1, description="batches per optimizer step (the mean of their gradients)")
    clip_grad_norm: Real | None = Field(
        None, gt=0, description="clip the gradients' global L2 norm to this (`null`: no clipping)"
    )


class TrainSection(_Section):
    epochs: Count = Field(10, ge=1, description="epochs to train (a resumed run continues up to this)")
    batch_size: Count = Field(8, ge=1, description="per training worker")
    workers: Count = Field(2, ge=1, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: Real = Field(1, gt=0, description="CPUs Ray reserves for each worker")
    use_gpu: Switch = Field(False, description="one GPU per worker (NCCL between workers)")
    amp: Switch = Field(False, description="bf16 autocast on GPU")
    compile: Literal[False, "default", "reduce-overhead", "max-autotune"] = Field(
        False,
        description="`torch.compile` the forward and loss of the train step with this mode (`false`: eager); "
        "see [training.md](training.md#speed-on-a-gpu)",
    )
    channels_last: Switch = Field(False, description="model and image inputs in the channels-last memory format")
    sync_batchnorm: Switch = Field(
        False,
        description="GPU workers: BatchNorm statistics over the global batch (SyncBatchNorm), not each worker's share",
    )
    seed: Count = Field(0, description="seeds the model's initialisation, the shuffling and the augmentation")
    preview_every: Count = Field(5, ge=0, description="epochs between prediction previews (0 = off)")
    torch_threads: Count | None = Field(
        None, ge=1, description="intra-op threads per worker (default: cpus_per_worker)"
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_not_coerced(cls, v: Any) -> Any:
        if v is not False and not isinstance(v, str):  # 0 would otherwise pass as false
            raise ValueError("must be false, 'default', 'reduce-overhead' or 'max-autotune'")
        return v

    @model_validator(mode="after")
    def _sync_bn_on_gpu(self) -> TrainSection:
        if self.sync_batchnorm and not self.use_gpu:
            raise ValueError("sync_batchnorm needs use_gpu: true (PyTorch's SyncBatchNorm runs on GPU workers only)")
        return self


class TrackingSection(_Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; it wins over `MLFLOW_TRACKING_URI` "
        "(`null`: that variable, else `sqlite:///<project root>/mlflow.db`): `sqlite:///PATH`, "
        "`http(s)://HOST:PORT`, a database URI (`postgresql://`, `mysql://`, `mssql://`) or a directory",
    )
    experiment: str = Field("fusionpipe", description="MLflow experiment")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None:
            check_tracking_uri(v)
        return v

    run_name: str | None = Field(
        None,
        description="the Ray Train and MLflow run name; a name that already has a "
        "run under the same `checkpoint.storage_path` resumes it "
        "(`null`: `<model>-<date>-<time>`)",
    )
    log_model: Switch = Field(
        True, description="at the end, log the best checkpoint's model to MLflow (`mlflow.pytorch`, with its signature)"
    )
    register_as: str | None = Field(
        None,
        description="register the run's best model in MLflow's model registry under this name at the end of "
        "training (a new version each run; `models:/NAME/VERSION` in `predict` and `evaluate`); `fusionpipe "
        "tune` registers only the best trial, under `register_alias` ([training.md](training.md#the-model-registry))",
    )
    register_alias: str = Field(
        "best",
        description="the alias `fusionpipe tune` gives the best trial's registered version (`models:/NAME@best`); "
        "`train` sets it too when `register_alias_on_train` is true",
    )
    register_alias_on_train: Switch = Field(
        False, description="`train` also moves `register_alias` to the version it registers"
    )

    @field_validator("register_as", "register_alias")
    @classmethod
    def _registry_name(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            check_registry_name(v, info.field_name)
        return v

    max_outage_s: float = Field(
        600.0,
        ge=0,
        description="how long training rides through an outage of the tracking store: rank 0 keeps the "
        "epochs' metrics (in memory and in each checkpoint) and sends them again every epoch and at the end; "
        "a store still unreachable this many seconds after the first failed request fails the run (exit 3). "
        "`0`: fail at the first failed request",
    )
    system_metrics: Switch = Field(
        True,
        description="while training, rank 0 logs its machine's CPU, memory, disk, network and, with an NVIDIA "
        "GPU, GPU use as MLflow system metrics (`system/...`, MLflow's System Metrics tab); `false`: off "
        "([training-internals.md](training-internals.md#system-metrics))",
    )
    system_metrics_interval_s: Real = Field(
        10.0,
        gt=0,
        description="seconds between two system-metric samples (`MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` wins)",
    )


class CheckpointSection(_Section):
    storage_path: str = Field(
        "ray_results",
        description="where Ray Train writes checkpoints: a path (on a "
        "multi-node cluster, one every node mounts) or an `s3://`/`gs://` URI; a relative path is read from the project root",
    )
    keep: Count = Field(2, ge=1, description="best K checkpoints kept (plus the last)")
    metric: str = Field("val/semseg/miou", description="the metric that ranks checkpoints (`val/<task>/<name>`)")
    mode: Literal["max", "min"] = Field("max", description="whether a higher (`max`) or lower `metric` is better")


class FailureSection(_Section):
    max_failures: Count = Field(
        0,
        ge=-1,
        description="times Ray Train restarts the worker group from the last checkpoint after a failure (-1: no limit)",
    )


class SyntheticBuildSection(_Section):
    """How dvc.yaml's data stage builds ``data.shards`` with ``fusionpipe data build synthetic``."""

    num_train: Count = Field(600, ge=1, description="samples in the train split")
    num_val: Count = Field(150, ge=1, description="samples in the val split")
    height: Count = Field(120, ge=16, le=4096, description="image height in pixels")
    width: Count = Field(160, ge=16, le=4096, description="image width in pixels")
    seed: Count = Field(0, ge=0, description="the dataset's seed")
    shard_size: Count = Field(100, ge=1, description="samples per tar shard")


def import_plugins(names: Any) -> None:
    """Import each module in ``names`` (a config's ``plugins``), so that what it registers exists here.

    A plugin registers tasks (``fusion.tasks.register_task``), shard members
    (``datasets.codec.register_member``) or models (``fusion.registry.register_model``) when it is
    imported. The config is validated after its plugins are imported, on the driver and again on every
    Ray worker, so a plugin must be importable on every node: a module in the directory the command
    runs from (appended to ``sys.path`` here, and Ray puts the driver's directory on every local
    worker's path), a module inside this repository (what `fusionpipe submit` uploads), or an
    installed one.
    """
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"plugins must be a list of module names, got {names!r}")
    cwd = os.getcwd()
    if names and cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # last: a stray file here never shadows an installed package
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # an import error, or one raised by the plugin's own registrations
            raise ValueError(f"plugins: cannot import {name!r}: {type(e).__name__}: {e}") from e


class ExperimentConfig(_Section):
    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported before the rest of the config "
        "is validated, on the driver and on every worker; they register tasks, shard "
        "members or models",
    )
    synthetic: SyntheticBuildSection | None = Field(
        None,
        description="how `dvc repro` builds `data.shards` (params.yaml); ignored by `train`, `evaluate` and `tune`",
    )
    data: DataSection = Field(
        default_factory=DataSection,
        description="the shards, the tasks and modalities read from them, and how they are read and augmented",
    )
    model: ModelSection = Field(default_factory=ModelSection, description="the model, its backbone and its options")
    loss: LossSection = Field(default_factory=LossSection, description="how the task losses are weighted and summed")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and learning-rate schedule")
    train: TrainSection = Field(
        default_factory=TrainSection, description="epochs, batch, Ray Train workers and devices"
    )
    tracking: TrackingSection = Field(
        default_factory=TrackingSection, description="where and under which names MLflow records the run"
    )
    checkpoint: CheckpointSection = Field(
        default_factory=CheckpointSection, description="where checkpoints go, how many are kept and which is best"
    )
    failure: FailureSection = Field(
        default_factory=FailureSection, description="what Ray Train does when a worker fails"
    )

    @model_validator(mode="before")
    @classmethod
    def _plugins_first(cls, raw: Any) -> Any:
        # Before any field is checked: data.tasks and model.name may name what a plugin registers.
        if isinstance(raw, dict):
            import_plugins(raw.get("plugins"))
        return raw

    @model_validator(mode="after")
    def _cross(self) -> ExperimentConfig:
        bad = [k for k in self.loss.weights if k not in self.data.tasks]
        if bad:
            raise ValueError(f"loss.weights names task(s) {bad} not in data.tasks {self.data.tasks}")
        return self

    def resolved_paths(self, base: Path | None = None) -> ExperimentConfig:
        """A copy with relative paths made absolute against ``base`` (default :func:`project_root`), so every
        worker agrees."""
        base = base or project_root()
        cfg = self.model_copy(deep=True)
        cfg.data.shards = str(_abs(cfg.data.shards, base))
        if cfg.model.pretrained:  # ImageNet weights: read like the shards, so a Tune trial or a job finds them
            cfg.model.pretrained = str(_abs(cfg.model.pretrained, base))
        if "://" not in cfg.checkpoint.storage_path:
            cfg.checkpoint.storage_path = str(_abs(cfg.checkpoint.storage_path, base))
        cfg.tracking.uri = resolve_tracking_uri(cfg.tracking.uri, base)
        return cfg


def _abs(p: str, base: Path) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else (base / path).resolve()


_REGISTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_registry_name(name: str, field: str) -> str:
    """``name`` when it can be a registered model's name or an alias in a ``models:/`` URI; else a ValueError."""
    if not _REGISTRY_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a registry name: letters, digits, '_', '.', '-', starting with a letter or digit, "
            "at most 128 characters"
        )
    if field == "register_alias" and (name.lower() == "latest" or re.fullmatch(r"[vV]\d+", name)):
        raise ValueError(f"{name!r} is reserved by MLflow ('latest' and v<N> name versions); pick another alias")
    return name


#: Schemes of the tracking stores MLflow has built in (a database scheme may name a driver: ``postgresql+psycopg2``).
TRACKING_SCHEMES = (
    "sqlite",
    "http",
    "https",
    "postgresql",
    "mysql",
    "mssql",
    "file",
    "databricks",
    "databricks-uc",
    "uc",
)


def check_tracking_uri(uri: str) -> str:
    """``uri`` when it has the form of an MLflow tracking store; else a ValueError that says what is wrong
    (the caller names the URI and where it came from).

    Checked before MLflow sees the URI: MLflow fails on a malformed ``sqlite:`` URI with a SQLAlchemy
    traceback, retries one with an empty path for a minute, and reports an unknown scheme like an
    unreachable store. A scheme registered by an installed MLflow plugin (entry point group
    ``mlflow.tracking_store``) is accepted; a path without a scheme is MLflow's file store.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not uri.strip() or uri != uri.strip():
        raise ValueError("must not be empty or start or end with spaces")
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ValueError(
                "not a sqlite store: write sqlite:///RELATIVE/PATH.db or sqlite:////ABSOLUTE/PATH.db (a file)"
            )
    elif scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"names no tracking server: write {scheme}://HOST or {scheme}://HOST:PORT")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
        except ValueError:
            raise ValueError(f"the port of {parts.netloc.rpartition('@')[2]!r} is not a number in 0..65535") from None
    elif scheme and scheme.split("+", 1)[0] not in TRACKING_SCHEMES and scheme not in _plugin_schemes():
        raise ValueError(
            f"unknown tracking store scheme {scheme!r}: use sqlite:///PATH.db, http(s)://HOST:PORT (a tracking "
            "server), a database URI (postgresql://, mysql://, mssql://) or a directory path"
        )
    return uri


def _plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def resolve_tracking_uri(uri: str | None, base: Path | None = None) -> str:
    """``None`` -> ``sqlite:///<base>/mlflow.db``; a relative sqlite path is made absolute against ``base``
    (default :func:`project_root`). A malformed URI (:func:`check_tracking_uri`) is a ConfigError that
    names it and where it came from."""
    source = "tracking URI"
    if not uri and os.environ.get("MLFLOW_TRACKING_URI"):
        source = "MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    try:
        check_tracking_uri(uri)
    except ValueError as e:
        raise ConfigError(f"{source} {uri!r}: {e}") from None
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(_abs(uri[len("sqlite:///") :], base or project_root()))
    return uri


#: What a strict field says in place of pydantic's wording, for the types users most often get wrong.
_STRICT_MESSAGES = {
    "int_type": "expected a whole number, like 2 (not 2.0, '2' or true)",
    "bool_type": "expected true or false, unquoted (not 1 or 'true')",
    "finite_number": "expected a finite number (not .inf or .nan)",
}


def describe_error(err: Any) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in the words of a config problem."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":  # a validator's own message, without pydantic's "Value error, "
        return str(err["ctx"]["error"])
    return _STRICT_MESSAGES.get(err["type"], err["msg"])


def _format_errors(e: ValidationError, source: str) -> str:
    lines = [f"{source}: {e.error_count()} problem(s):"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = describe_error(err)
        lines.append(
            f"  - {loc}: {msg}"
            + (
                f" (got {err['input']!r})"
                if err["type"] != "extra_forbidden" and not isinstance(err.get("input"), dict)
                else ""
            )
        )
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> nested updates; values are parsed as YAML."""
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            detail = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(
                f"--set {item!r}: value {value!r} is not valid YAML ({detail}); quote a text value: {key}='\"...\"'"
            ) from None
        pairs.append((key, parsed))
    return set_fields(raw, pairs)


def set_fields(raw: dict[str, Any], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``raw`` with each dotted ``key`` set to its (already parsed) value."""
    out = copy.deepcopy(raw)
    for key, value in pairs:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {p!r} is not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def read_yaml_mapping(path: str | os.PathLike[str], what: str, not_mapping: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; a missing file, bad YAML or another top level is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: {not_mapping}")
    return raw


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> ExperimentConfig:
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(path, "config file", "top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from e


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": value}`` (lists kept as values): MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def model_config(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """The ``fusion.build_model`` config. Tasks named in ``model.options.auxiliary_tasks`` (MTI-Net,
    PAD-Net) are loaded as targets and supervise the front end, but are not final outputs."""
    m = cfg.model
    aux = set(m.options.get("auxiliary_tasks") or [])
    return pin_added_options(
        {
            "name": m.name,
            "tasks": [t for t in cfg.data.tasks if t not in aux],
            "modalities": list(cfg.data.modalities),
            "num_classes": num_classes,
            **m.model_dump(exclude={"name"}),
        }
    )
