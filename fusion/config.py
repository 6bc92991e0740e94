"""The typed ``model`` config shared by every registered model: its keys and their bounds, stated once.

:class:`ModelFields` holds the keys an experiment YAML's ``model`` section sets (``name``, ``backbone``,
``width``, ``output_stride``, ``pretrained``, ``options``); ``pipelines.config.ModelSection`` derives
from it. :class:`ModelConfig` adds what a pipeline run fills from the experiment's ``data`` section and
the dataset's manifest (``tasks``, ``modalities``, ``num_classes``) and is what every model builder
receives. :data:`TaskList` and :data:`ModalityList` are the checked list types of ``tasks`` and
``modalities``, which ``data.tasks`` and ``data.modalities`` use as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from fusion.tasks import TASK_REGISTRY, TASKS

MODALITIES = ("rgb", "depth")
MODALITY_CHANNELS = {"rgb": 3, "depth": 1}


def known_unique(values: list[str], known: Sequence[str], what: str, hint: str = "") -> list[str]:
    """``values`` when each is in ``known`` and none repeats; else a ValueError naming the values at fault."""
    bad = [x for x in values if x not in known]
    if bad:
        raise ValueError(f"unknown {what}(s) {bad}; known: {list(known)}{hint}")
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate {what} in {values}")
    return values


def _known_tasks(values: list[str]) -> list[str]:
    # TASKS is the live task dict: a plugin's register_task extends what passes.
    return known_unique(values, TASKS, "task", " (a module listed in plugins can register more)")


def _known_modalities(values: list[str]) -> list[str]:
    return known_unique(values, MODALITIES, "modality")


#: Registered task names, at least one, none twice.
TaskList = Annotated[list[str], Field(min_length=1), AfterValidator(_known_tasks)]
#: Input modalities (:data:`MODALITIES`), at least one, none twice.
ModalityList = Annotated[list[str], Field(min_length=1), AfterValidator(_known_modalities)]


class ModelFields(BaseModel):
    """The model, its backbone and its options: the keys of an experiment YAML's ``model`` section."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a registered model (`fusion.list_models()`, [models.md](models.md))")
    backbone: str = Field(
        "resnet18", description="`resnet18`, `resnet34`, `resnet50`, `resnet101`, `hrnet18`, `hrnet32` or `hrnet48`"
    )
    width: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="channel-width multiplier, a finite number (tiny CPU configs use less than 1)",
    )
    output_stride: Literal[8, 16, 32] = Field(
        32, description="ResNet output stride: 8 and 16 dilate the last stages; HRNets take 32 only"
    )
    pretrained: str | None = Field(
        None,
        description="local ImageNet weights file (a torchvision, timm or "
        "official HRNet state dict loads as it is); nothing is ever downloaded",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the model's own options, checked when the model is built ([models.md](models.md))",
    )

    @field_validator("width", mode="before")
    @classmethod
    def _width_is_a_number(cls, v: Any) -> Any:
        if isinstance(v, bool):  # pydantic would take `true` as 1.0
            raise ValueError("expected a number, not a boolean")
        return v


class ModelConfig(ModelFields):
    """What ``fusion.build_model`` builds: :class:`ModelFields` plus the tasks, modalities and class counts.

    Built with :meth:`from_dict` (or ``build_model(mapping)``), every problem is one ValueError that names
    the key and the value at fault. Fields set afterwards are not checked until :meth:`validate`, which
    ``build_model`` and the builders call.
    """

    tasks: TaskList = Field(default_factory=lambda: ["semseg"], description="the tasks the model predicts")
    modalities: ModalityList = Field(default_factory=lambda: ["rgb"], description="the model's inputs")
    num_classes: int = Field(13, ge=1, description="classes of `semseg`")
    num_parts: int = Field(7, description="classes of `parts`")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """The validated config of a mapping; unknown keys, a missing ``name`` and bad values are errors."""
        try:
            return cls.model_validate(dict(d))
        except ValidationError as e:
            raise ValueError(_problems(cls, e, d.get("name"))) from None

    def validate(self) -> None:  # type: ignore[override]  (pydantic's deprecated classmethod of that name)
        """Check the current field values (a typed config may have been changed after it was built)."""
        type(self).from_dict({k: getattr(self, k) for k in type(self).model_fields})

    def task_channels(self, task: str) -> int:
        """Channels of ``task``'s prediction: the task dict's count, or this config's class count."""
        if task not in TASK_REGISTRY:
            raise ValueError(f"model config {self.name!r}: unknown task {task!r} (known: {', '.join(TASKS)})")
        channels = TASK_REGISTRY[task].channels
        return getattr(self, channels) if isinstance(channels, str) else channels


def _problems(cls: type[BaseModel], e: ValidationError, name: Any) -> str:
    """``model config 'name': <problem>; <problem>`` with each key and value at fault."""
    unknown, problems = [], []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            unknown.append(key)
        elif err["type"] == "missing":
            problems.append(f"missing required key {key!r}")
        elif err["type"] == "value_error":  # our validators: the message names the values
            problems.append(f"{key}: {err['ctx']['error']}")
        else:
            problems.append(f"{key}: {err['msg'][:1].lower()}{err['msg'][1:]}, got {err['input']!r}")
    if unknown:
        problems.insert(0, f"unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(cls.model_fields))}")
    where = f"model config {name!r}" if isinstance(name, str) else "model config"
    return f"{where}: " + "; ".join(problems)
