"""Printing for commands with ``--json``: one JSON object on stdout and nothing else there."""
from __future__ import annotations

import json
import sys
from typing import Any

import click


def emit(obj: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    else:
        click.echo(human)


def fail(message: str, as_json: bool = False, code: int = 1) -> None:
    """Exit with ``message`` on stderr (and an ``error`` object on stdout with --json)."""
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": message}) + "\n")
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)
