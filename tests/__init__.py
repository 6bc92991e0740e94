"""The test suite. ``REPO_ROOT`` is this source tree (its configs/, docs/, dvc.yaml), which the tests
read; the code under test resolves a config's relative paths against the project root it runs in."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
