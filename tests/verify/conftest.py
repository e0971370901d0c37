"""Shared fixtures of the host verifiers.

The service roles record each deployed backend in a local fact (/etc/ansible/facts.d/llm_<name>.fact,
no secret in it); the .env role records the file it wrote. A check for something a host does not
have is skipped with that reason, never failed.
"""

import pytest

from tests.verify.verify_helpers import BACKENDS, FACTS_DIR, local_fact


@pytest.fixture(params=BACKENDS, ids=[f"backend={name}" for name in BACKENDS])
def backend(request, host) -> dict:
    """The recorded backend (vllm, ollama); skipped where that phase is not deployed."""
    fact = local_fact(host, f"llm_{request.param}")
    if fact is None:
        pytest.skip(f"{request.param} is not deployed on this host (no {FACTS_DIR}/llm_{request.param}.fact)")
    return fact
