"""A command stops the Ray it started, and leaves a Ray its caller had connected to (a program or a test
session running commands in-process) up."""

import sys
import types

from pipelines.cli.output import ray_is_up, shutdown_ray


def _fake_ray(monkeypatch, up: bool) -> types.SimpleNamespace:
    state = types.SimpleNamespace(up=up, shutdowns=0)

    def shutdown() -> None:
        state.shutdowns += 1
        state.up = False

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: state.up, shutdown=shutdown))
    return state


def test_a_ray_the_command_started_is_stopped(monkeypatch):
    state = _fake_ray(monkeypatch, up=False)
    was_up = ray_is_up()
    state.up = True  # the command started Ray
    shutdown_ray(was_up)
    assert (was_up, state.shutdowns, state.up) == (False, 1, False)


def test_the_callers_ray_stays_up(monkeypatch):
    state = _fake_ray(monkeypatch, up=True)
    shutdown_ray(ray_is_up())
    assert (state.shutdowns, state.up) == (0, True)


def test_nothing_happens_when_ray_was_never_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert not ray_is_up()
    shutdown_ray()  # no import of ray, no error
    assert "ray" not in sys.modules
