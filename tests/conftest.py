"""Shared test setup: the project's Python importable, and the tiny model fixture."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for path in (
    REPO / "scripts",
    REPO / "plugins" / "module_utils",
    REPO / "plugins" / "filter",
    REPO / "tests" / "standins" / "nvidia_smi",
    REPO / "tests" / "models",
):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tiny_model_cache import tiny_mixtral  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny Mixtral model the engines serve in tests (built once, cached outside the clone)."""
    return tiny_mixtral()
