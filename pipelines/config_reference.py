"""docs/config.md, the experiment config reference, written from the typed sections of
:mod:`pipelines.config` so that it cannot drift from them: every key's type, bounds, default and
the ``description`` its field carries.

    python -m pipelines.config_reference            # rewrite docs/config.md
    python -m pipelines.config_reference --check    # exit 1 when docs/config.md is stale (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from datasets.manifest import write_atomic
from pipelines.config import ExperimentConfig

# The page in this source tree (the generator is a development tool of the repository).
DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"

INTRO = """\
# Experiment config reference

<!-- Written by `python -m pipelines.config_reference` from pipelines/config.py (the `model` keys from
fusion/config.py): edit the fields' descriptions there, then run it again. A test fails while this file
is stale. -->

Every key of an experiment config, section by section, with its type, bounds, default and meaning.

One YAML file per experiment (`configs/*.yaml`, `params.yaml` for the main job), read by
`fusionpipe train`, `evaluate` and `tune`. Every key is optional: a missing one takes the default
below. `--set key=value` overrides any key, the value parsed as YAML (`--set optim.lr=3e-4`,
`--set data.tasks=[semseg,depth]`). The whole file is checked before anything starts: an unknown
key or a bad value is an error, and the message lists every problem with its key. `plugins` are
imported first, so the tasks, members and models they register are known to the rest of the check.
Nothing is coerced: an integer is written as one (`2`, not `2.0`, `"2"` or `true`), a boolean as `true`
or `false` (not `1` or `"true"`), and a number is finite (not `.inf` or `.nan`) and not a boolean.
"""


PLAIN = {str: "string", int: "integer", float: "number", bool: "boolean"}
BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _bounds(metadata: list[Any]) -> list[str]:
    """Pydantic's constraint objects (``Field(ge=...)``, ``Annotated[int, Gt(0)]``) in words."""
    out = []
    for m in metadata:
        out += [f"{sign} {getattr(m, attr)}" for attr, sign in BOUNDS if getattr(m, attr, None) is not None]
        if getattr(m, "min_length", None):
            out.append(f"at least {m.min_length} item{'s' if m.min_length > 1 else ''}")
        if getattr(m, "max_length", None) is not None:
            out.append(f"at most {m.max_length} items")
    return out


def _type_name(annotation: Any) -> str:
    """A type in words; a type this does not know is an error, so the page never shows a repr."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        bounds = _bounds(list(args[1:]))
        return _type_name(args[0]) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        name = " or ".join(_type_name(a) for a in kept)
        return f"{name}, or `null`" if len(kept) < len(args) else name
    if origin is list:
        return f"list of {PLAIN[args[0]]}s" if args[0] in PLAIN else f"list, each {_type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        return "mapping" if args[1] is Any else f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation in PLAIN:
        return PLAIN[annotation]
    raise TypeError(f"pipelines.config_reference: no words for the type {annotation!r}; add them to _type_name")


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):  # a nested section (data.augment): its own page documents it
        return "see meaning"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _rows(fields: dict[str, FieldInfo], prefix: str) -> list[str]:
    rows = []
    for name, field in fields.items():
        kind, bounds, null = _type_name(field.annotation), ", ".join(_bounds(field.metadata)), ", or `null`"
        if bounds:
            kind = kind.removesuffix(null) + f" ({bounds})" + (null if kind.endswith(null) else "")
        cells = [f"`{prefix}{name}`", kind, _default(field), field.description or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def _section(field: FieldInfo) -> type[BaseModel] | None:
    """The section class a top-level field holds (``X | None`` included), or None for a plain value."""
    for t in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def render() -> str:
    """The text of docs/config.md."""
    header = ["| key | type | default | meaning |", "|---|---|---|---|"]
    fields = ExperimentConfig.model_fields
    top = {k: f for k, f in fields.items() if _section(f) is None}
    parts = [INTRO, "## Top level\n", *header, *_rows(top, ""), ""]
    for name, field in fields.items():
        section = _section(field)
        if section is None:
            continue
        about = (field.description or "").strip()
        about = about[:1].upper() + about[1:] + "."
        if field.get_default(call_default_factory=True) is None:
            about += " Optional: without it there is no such section (`null`)."
        parts += [f"## `{name}`\n", about, "", *header, *_rows(section.model_fields, f"{name}."), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/config.md is not what this writes")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is stale: run `python -m pipelines.config_reference`", file=sys.stderr)
            return 1
        return 0

    write_atomic(DOC, text.encode())
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
