"""Shared test setup: the tiny model fixture."""

from pathlib import Path

import pytest

from tests.models.tiny_model_cache import tiny_mixtral


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny Mixtral model the engines serve in tests (built once, cached outside the clone)."""
    return tiny_mixtral()
