"""Progress of a long loop (an epoch, an evaluation, a dataset build) as text, throttled by time.

:class:`Progress` is told after every step what has been done (steps, samples, and values such as the
running loss, computed only when a line is due) and writes one line at most every ``every_s`` seconds:

    epoch 3/10  step 120/400 (30%)  loss 0.8123  45.2 samples/s  ETA 6:12

Lines, not a bar that redraws itself: Ray workers' stdout is not a terminal, and ``ray job logs`` and
Ray's log files keep every character a bar writes. The clock is a parameter, so the throttle and the
rates are tested with a fake one. Nothing here imports torch or Ray.

The interval is ``$FUSIONPIPE_PROGRESS_EVERY_S`` (:func:`progress_every_s`; default 30 s, 0 = no
progress lines), read by the command that starts the work and handed to Ray's workers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping

from pipelines.config import ConfigError

PROGRESS_ENV = "FUSIONPIPE_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 30.0

Values = Mapping[str, float] | Callable[[], Mapping[str, float]]


def progress_every_s(default: float = DEFAULT_EVERY_S) -> float:
    """Seconds between progress lines: ``$FUSIONPIPE_PROGRESS_EVERY_S`` when set (0 turns them off), else
    ``default``. A value that is not a finite number >= 0 is a :class:`ConfigError` naming it."""
    raw = os.environ.get(PROGRESS_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{PROGRESS_ENV}={raw!r}: must be a number of seconds >= 0 (0 = no progress lines)")
    return value


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` from an hour on, ``M:SS`` below; ``?`` when not finite or negative (no estimate)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def run_eta_s(elapsed_s: float, epochs_done: int, epochs_left: int) -> float:
    """The time the run's ``epochs_left`` epochs will take at the mean pace of the ``epochs_done`` epochs
    this process ran in ``elapsed_s`` seconds (NaN before the first)."""
    if epochs_done <= 0:
        return math.nan
    return elapsed_s / epochs_done * max(0, epochs_left)


class Progress:
    """Throttled progress lines for a loop of ``total`` steps (``None``: not known).

    ``update(done, samples, values)`` after each step; a line goes to ``emit`` when ``every_s`` seconds
    have passed since the start or the last line (``every_s`` 0: never). ``finish()`` writes the last
    line when ``final`` is set (an evaluation, a build), so a log shows how a loop ended. ``values`` is a
    mapping or a function that returns one, called only when a line is written: a running loss that
    costs a device synchronisation is read only then. ``scale`` multiplies the samples counted here
    (a rank sees 1/world of a run's samples: ``scale`` = world gives the run's rate).
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        emit: Callable[[str], None],
        every_s: float = 30.0,
        *,
        unit: str = "step",
        scale: float = 1.0,
        final: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0 or not math.isfinite(every_s):
            raise ValueError(f"Progress: every_s must be a finite number >= 0, got {every_s}")
        self.label, self.total, self.emit, self.every_s = label, total, emit, every_s
        self.unit, self.scale, self.final, self.clock = unit, scale, final, clock
        self.start = self.last = clock()
        self.done, self.samples = 0, 0
        self.lines = 0

    def due(self) -> bool:
        """Whether the next :meth:`update` writes a line."""
        return self.every_s > 0 and self.clock() - self.last >= self.every_s

    def update(self, done: int, samples: int = 0, values: Values | None = None) -> str | None:
        """Record ``done`` steps and ``samples`` samples so far; the line written, if one was due."""
        self.done, self.samples = done, samples
        if not self.due():
            return None
        return self._write(values)

    def finish(self, values: Values | None = None) -> str | None:
        """The loop is over: the last line when ``final`` is set and lines are on."""
        if not self.final or self.every_s == 0:
            return None
        return self._write(values)

    def _write(self, values: Values | None) -> str:
        now = self.clock()
        self.last = now
        line = self.line(now, values() if callable(values) else values)
        self.emit(line)
        self.lines += 1
        return line

    def line(self, now: float, values: Mapping[str, float] | None = None) -> str:
        """The text of a line at time ``now``."""
        elapsed = max(0.0, now - self.start)
        parts = [self.label] if self.label else []
        if self.total:
            parts.append(f"{self.unit} {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{self.unit} {self.done}")
        for k, v in (values or {}).items():
            parts.append(f"{k} {v:.4f}")
        if self.samples and elapsed > 0:
            parts.append(f"{self.samples * self.scale / elapsed:.1f} samples/s")
        if self.total and self.done < self.total:
            eta = (self.total - self.done) * elapsed / self.done if self.done else math.nan
            parts.append(f"ETA {format_duration(eta)}")
        else:
            parts.append(f"{format_duration(elapsed)} elapsed")
        return "  ".join(parts)
