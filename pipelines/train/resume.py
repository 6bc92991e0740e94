"""Which checkpoint a resumed worker starts from: Ray's latest, or, when that one is corrupt, the newest
intact checkpoint of the same run.

Ray Train hands a resumed (or retried) worker the run's latest checkpoint (``ray.train.get_checkpoint()``).
When its files are damaged (:class:`pipelines.checkpoints.CorruptCheckpointError`: a digest that does not
match, a truncated or empty file, a meta.json that is not JSON or not of the right shape), a retry would
meet the same files again. The worker goes back instead to the other checkpoints of the run: Ray's
``checkpoint_*`` directories beside the latest one, in the same storage (a local path or an object store,
through the checkpoint's own filesystem), newest first (Ray names them by the time they were written),
and resumes from the first that is intact. When none is, :func:`resume_from` raises a
:class:`~pipelines.checkpoints.CheckpointError` (not a corrupt-checkpoint error: a retry cannot fix it),
which the worker records as fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow.fs

from pipelines.checkpoints import CheckpointError, CorruptCheckpointError

T = TypeVar("T")
PREFIX = "checkpoint_"


@dataclass(frozen=True)
class Resumed(Generic[T]):
    """What :func:`resume_from` loaded (``value``), from which checkpoint (``path``), and the corrupt
    checkpoints passed over on the way (``(path, why)``, newest first; empty when the latest was intact)."""

    value: T
    path: str
    passed_over: list[tuple[str, str]] = field(default_factory=list)

    def note(self, epoch: int) -> str | None:
        """One line saying which checkpoint the run resumed from and why, when it is not the latest."""
        if not self.passed_over:
            return None
        corrupt = "; ".join(f"{path} is corrupt: {why}" for path, why in self.passed_over)
        return (
            f"{corrupt}. Resuming from {self.path} (epoch {epoch}), the newest intact checkpoint of the run: "
            "the epochs after it run again"
        )


def sibling_checkpoints(latest: Any) -> Iterator[Any]:
    """The run's other checkpoints, newest first: the ``checkpoint_*`` directories beside ``latest`` (a
    ``ray.train.Checkpoint``), each as a checkpoint of the same class on the same filesystem."""
    fs, path = latest.filesystem, latest.path.rstrip("/")
    run_dir, _, name = path.rpartition("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    names = sorted(
        (i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(PREFIX)),
        reverse=True,
    )
    for other in names:
        if other != name:
            yield type(latest)(f"{run_dir}/{other}", filesystem=fs)


def resume_from(latest: Any, load: Callable[[Path], T]) -> Resumed[T]:
    """``load(directory)`` of ``latest``, or, when it raises :class:`CorruptCheckpointError`, of the newest
    other checkpoint of the run (:func:`sibling_checkpoints`) for which it does not.

    Any other error of ``load`` (a checkpoint of another model config, a store that is down) is raised
    as it is: another checkpoint of the same run would not fix it.
    """
    passed_over: list[tuple[str, str]] = []
    for candidate in _latest_then_siblings(latest):
        try:
            with candidate.as_directory() as d:
                value = load(Path(d))
        except CorruptCheckpointError as e:
            passed_over.append((candidate.path, str(e)))
            continue
        return Resumed(value, candidate.path, passed_over)
    raise CheckpointError(
        f"no intact checkpoint to resume from ({len(passed_over)} checkpoint(s) of the run, all corrupt): "
        + "; ".join(why for _, why in passed_over)
        + ". Restore the files, or train under another run name"
    )


def _latest_then_siblings(latest: Any) -> Iterator[Any]:
    yield latest
    yield from sibling_checkpoints(latest)  # listed only when the latest is corrupt
