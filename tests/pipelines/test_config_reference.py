"""docs/config.md is written from the config's typed sections; it must be current and complete."""

import re

from pydantic import BaseModel

from datasets.transforms import AugmentConfig
from pipelines import config_reference
from pipelines.config import ExperimentConfig
from tests import REPO_ROOT


def _sections(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield prefix + name, field
        section = config_reference._section(field)
        if section is not None and section is not AugmentConfig:  # augmentation.md documents that one
            yield from _sections(section, f"{prefix}{name}.")


def test_every_config_key_has_a_description():
    keys = list(_sections(ExperimentConfig))
    assert len(keys) > 40
    missing = [key for key, field in keys if not field.description]
    assert not missing, f"describe these fields in pipelines/config.py (they go into docs/config.md): {missing}"


def test_docs_config_md_is_current(capsys):
    assert config_reference.main(["--check"]) == 0, capsys.readouterr().err


def test_a_stale_reference_is_found(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(config_reference.render().replace("`0.001`", "`0.01`"))
    monkeypatch.setattr(config_reference, "DOC", stale)
    assert config_reference.main(["--check"]) == 1
    assert "stale: run `python -m pipelines.config_reference`" in capsys.readouterr().err
    assert config_reference.main([]) == 0 and config_reference.main(["--check"]) == 0  # rewritten


def test_rows_give_type_bounds_default_and_meaning():
    rows = {r.split(" | ")[0].strip("| `"): r for r in config_reference.render().splitlines() if r.startswith("| `")}
    assert set(rows) == {key for key, _ in _sections(ExperimentConfig)} - {
        "synthetic",
        "data",
        "model",
        "loss",
        "optim",
        "train",
        "tracking",
        "checkpoint",
        "failure",
    }
    assert rows["optim.lr"] == (
        "| `optim.lr` | number (> 0) | `0.001` | learning rate after warm-up, before the schedule decays it |"
    )
    assert rows["optim.clip_grad_norm"].startswith("| `optim.clip_grad_norm` | number (> 0), or `null` | `null` |")
    assert rows["optim.name"].startswith("| `optim.name` | one of `adam`, `adamw`, `sgd` | `adam` |")
    assert rows["data.tasks"].startswith('| `data.tasks` | list of strings (at least 1 item) | `["semseg", "depth"]` |')
    assert rows["failure.max_failures"].startswith("| `failure.max_failures` | integer (≥ -1) | `0` |")


def test_augmentation_md_documents_every_augment_field():
    text = (REPO_ROOT / "docs" / "augmentation.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", text, flags=re.M))
    assert set(AugmentConfig.model_fields) <= documented, set(AugmentConfig.model_fields) - documented


def test_types_are_put_in_words_and_unknown_ones_refused():
    from pathlib import Path
    from typing import Literal

    import pytest
    from pydantic import Field, PositiveInt

    class Demo(BaseModel):
        size: tuple[PositiveInt, PositiveInt] | None = Field(None, description="H|W")
        names: list[Literal["a", "b"]] = Field(default_factory=list, max_length=3, description="which")

    rows = config_reference._rows(Demo.model_fields, "demo.")
    assert rows == [
        "| `demo.size` | [integer (> 0), integer (> 0)], or `null` | `null` | H\\|W |",
        "| `demo.names` | list, each one of `a`, `b` (at most 3 items) | `[]` | which |",
    ]
    with pytest.raises(TypeError, match="no words for the type <class 'pathlib.Path'>"):
        config_reference._type_name(Path)
