"""``make install``'s choice of torch build and wheel source, run with a stand-in for the venv's python
that records each pip call (nothing is installed, nothing is downloaded)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

# Stands in for .venv/bin/python: `import torch` fails unless HAS_TORCH is set, the dry-run probe of
# the configured package sources succeeds iff PROBE is "found", every call is appended to LOG.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$LOG"
case "$*" in
  "-c import torch") [ -n "$HAS_TORCH" ] && exit 0; exit 1;;
  *--dry-run*) [ "$PROBE" = found ] && exit 0; exit 1;;
esac
exit 0
"""


def _install(tmp_path: Path, *make_vars: str, probe: str = "missing", has_torch: bool = False) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "LOG": str(log),
        "PROBE": probe,
        "HAS_TORCH": "1" if has_torch else "",
    }
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "install", f"VENV={venv}", *make_vars],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (venv / ".installed").is_file()
    return log.read_text().splitlines()


def _torch_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip install") and "torch" in c and "--dry-run" not in c]


def test_linux_without_cuda_gets_the_cpu_build_from_pytorchs_index_when_the_configured_sources_lack_it(tmp_path):
    calls = _install(tmp_path, "HAS_CUDA=", "UNAME_S=Linux")
    assert "-m pip install --dry-run --no-deps --quiet torch==2.13.0+cpu" in calls
    assert _torch_installs(calls) == [f"-m pip install torch==2.13.0+cpu --extra-index-url {CPU_INDEX}"]
    assert calls[-1] == "-m pip install -e .[dev]"


def test_linux_without_cuda_uses_a_configured_source_that_has_the_cpu_build(tmp_path):
    calls = _install(tmp_path, "HAS_CUDA=", "UNAME_S=Linux", probe="found")
    assert _torch_installs(calls) == ["-m pip install torch==2.13.0+cpu"]


@pytest.mark.parametrize("machine", [("HAS_CUDA=", "UNAME_S=Darwin"), ("HAS_CUDA=1", "UNAME_S=Linux")])
def test_macos_and_cuda_machines_get_pypis_torch_with_no_extra_index(tmp_path, machine):
    calls = _install(tmp_path, *machine)
    assert not [c for c in calls if "--dry-run" in c]
    assert _torch_installs(calls) == ["-m pip install torch==2.13.0"]


def test_torch_spec_and_index_can_be_overridden(tmp_path):
    cu126 = "https://download.pytorch.org/whl/cu126"
    calls = _install(tmp_path, "HAS_CUDA=", "UNAME_S=Linux", "TORCH_SPEC=torch==2.13.0", f"TORCH_INDEX_URL={cu126}")
    assert _torch_installs(calls) == [f"-m pip install torch==2.13.0 --extra-index-url {cu126}"]


def test_an_empty_index_url_uses_the_configured_sources_only(tmp_path):
    calls = _install(tmp_path, "HAS_CUDA=", "UNAME_S=Linux", "TORCH_INDEX_URL=", "TORCH_PIP_ARGS=--no-cache-dir")
    assert _torch_installs(calls) == ["-m pip install torch==2.13.0+cpu --no-cache-dir"]


def test_an_installed_torch_is_kept(tmp_path):
    calls = _install(tmp_path, "HAS_CUDA=", "UNAME_S=Linux", has_torch=True)
    assert _torch_installs(calls) == []
    assert calls == ["-c import torch", "-m pip install -e .[dev]"]
