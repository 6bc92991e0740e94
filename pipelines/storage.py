"""Small files beside the checkpoints, on a local path or an object store.

``checkpoint.storage_path`` is a local (or network-mounted) directory, or a URI that Ray Train writes
through pyarrow (``s3://BUCKET/ray_results``, ``gs://...``, ``file:///...``). The driver keeps a run's
MLflow run id there (``fusionpipe-run.json``), so a resubmitted job resumes the same MLflow run
wherever it runs, and a worker records there an error that a retry cannot fix (``fusionpipe-fatal.json``). These helpers read and write such a file on either kind of storage: through
pyarrow's filesystem for a URI, with the local temp-then-rename for a path (an object-store PUT is
atomic by itself).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from datasets.manifest import write_atomic
from pipelines.checkpoints import CheckpointError


def is_uri(location: str) -> bool:
    return "://" in location


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URI. A URI keeps its scheme, host and query
    (``s3://bucket/dir?endpoint_override=host:9000``, as a MinIO store is named): the parts go on its path."""
    if is_uri(base):
        u = urlsplit(base)
        return urlunsplit((u.scheme, u.netloc, "/".join([u.path.rstrip("/"), *parts]), u.query, u.fragment))
    return str(Path(base, *parts))


def _fs(location: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(location)


def read_text(location: str) -> str | None:
    """The file's text, or None when there is no such file."""
    if not is_uri(location):
        p = Path(location)
        return p.read_text() if p.is_file() else None
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str, text: str) -> None:
    """Write ``text`` whole: a reader sees the old file or the new one, never a part."""
    if not is_uri(location):
        p = Path(location)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, text.encode())
        return
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def remove(location: str) -> None:
    """Delete the file at ``location``; no error when there is none."""
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        fs.delete_file(path)


def copy_to_local(uri: str, dest: Path) -> Path:
    """Copy the directory at ``uri`` (e.g. a checkpoint on an object store) to the local ``dest``."""
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise CheckpointError(f"{uri}: no such checkpoint directory")
    dest.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return dest


def checkpoint_uri(storage_path: str, checkpoint_path: str) -> str:
    """Where a Ray checkpoint is, as the user names the storage: Ray's ``Checkpoint.path`` on an object
    store is the path inside it (``BUCKET/ray_results/...``), without the scheme.

    The URI keeps the storage path's credentials (``s3://KEY:SECRET@BUCKET/...``, a secret query
    parameter), so it opens as the storage path does: redact it
    (``pipelines.track.redact.redact_url_password``) before writing it anywhere."""
    if not is_uri(storage_path) or is_uri(checkpoint_path):
        return checkpoint_path
    u = urlsplit(storage_path)
    if u.scheme == "file":
        return checkpoint_path
    key = checkpoint_path.lstrip("/")
    # An object store's bucket is the URI's host (after any userinfo: s3://KEY:SECRET@BUCKET) and the first
    # part of Ray's path (s3, gs); a filesystem with a host (hdfs://namenode:8020/dir) has a path of its own
    # under that host.
    userinfo, host = _authority(storage_path)
    where = key if key.startswith(f"{host}/") else f"{host}/{key}"
    return f"{u.scheme}://{userinfo}{'@' if userinfo else ''}{where}" + (f"?{u.query}" if u.query else "")


def _authority(uri: str) -> tuple[str, str]:
    """(userinfo, host) of ``uri``. The userinfo runs to the last "@" before the query: a secret may hold
    an "@", and an AWS secret key an unencoded "/" (``s3://KEY:SE/CRET@BUCKET``), which ``urlsplit`` reads
    as the start of the path. ``pipelines.track.redact`` finds the userinfo it hides the same way."""
    head = re.split(r"[?#]", uri.split("://", 1)[1], maxsplit=1)[0]
    at = head.rfind("@")
    if at > 0 and ("/" not in head[:at] or ":" in head[:at].split("/", 1)[0]):
        return head[:at], head[at + 1 :].split("/", 1)[0]
    return "", head.split("/", 1)[0]


def copy_checkpoint_to(location: str, dest: Path) -> Path:
    """Copy the checkpoint directory at ``location`` (a path, or a URI: :func:`copy_to_local`) to ``dest``,
    replacing what is there only once the copy is complete (``train --best-checkpoint``, a DVC output)."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_uri(location):
        copy_to_local(location, tmp)
    elif not Path(location).is_dir():
        raise CheckpointError(f"{location}: no such checkpoint directory")
    else:
        shutil.copytree(location, tmp)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
