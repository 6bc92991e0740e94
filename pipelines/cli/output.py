"""Printing for commands with ``--json``: one JSON object on stdout and nothing else there."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from pipelines.jsonio import dumps
from pipelines.track.redact import redact_url_password


def emit(obj: dict[str, Any], as_json: bool, human: str) -> None:
    """Print a command's result, as one JSON object or as text, with any URL password hidden."""
    if as_json:
        sys.stdout.write(redact_url_password(dumps(obj, sort_keys=True)) + "\n")
    else:
        click.echo(redact_url_password(human))


def fail(message: str, as_json: bool = False, code: int = 1) -> None:
    """Exit with ``message`` on stderr (and an ``error`` object on stdout with --json). Any URL password
    in it (an MLflow error names the URI it called) is hidden."""
    message = redact_url_password(message)
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": message}) + "\n")
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


STORE_ERROR_EXIT = 3


def tracking_store_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command whose MLflow calls may fail: an error from the tracking store (a
    server that is down or refuses the credentials, also when a Ray Train worker met it) exits with
    code 3 and one redacted line (an ``error`` object with ``--json``), instead of a traceback that
    would show the URI. A run that does not exist is the command's own bad-input error (exit 2)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised unless it comes from the store
            from pipelines.track.tracker import store_error  # imports MLflow: only once a command failed

            cause = store_error(e)
            if cause is None:
                raise
            fail(f"MLflow tracking store: {cause}", bool(kwargs.get("as_json")), code=STORE_ERROR_EXIT)

    return wrapper


@contextlib.contextmanager
def stdout_to_stderr(active: bool = True) -> Iterator[None]:
    """Send everything written to file descriptor 1 (Ray's progress, worker logs, C extensions) to
    stderr while active, so a ``--json`` command's stdout holds nothing but its JSON."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def ray_is_up() -> bool:
    """Whether this process is connected to Ray (without importing it)."""
    ray = sys.modules.get("ray")  # only if this process imported it
    return ray is not None and ray.is_initialized()


def shutdown_ray(was_up: bool = False) -> None:
    """Disconnect from (or stop the embedded) Ray now, not at interpreter exit, where Ray prints the
    workers' last buffered lines to stdout after a command's JSON.

    ``was_up``: the process was connected before the command ran (a command called in-process by a
    program or test that runs its own Ray): that Ray is the caller's and stays up.
    """
    if ray_is_up() and not was_up:
        sys.modules["ray"].shutdown()
