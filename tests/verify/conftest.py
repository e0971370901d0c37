"""Shared fixtures of the host verifiers.

The service roles record each deployed backend in a local fact (<llm_facts_dir>/llm_<name>.fact, the
backend record of docs/backend-record.md, no secret in it); the .env role records the file it wrote.
A check for something a host does not have is skipped with that reason, never failed.
"""

import pytest

from tests.verify.verify_helpers import BACKENDS, backend_record, setting


@pytest.fixture(params=BACKENDS, ids=[f"backend={name}" for name in BACKENDS])
def backend(request, host) -> dict:
    """The recorded backend (vllm, ollama); skipped where that phase is not deployed."""
    record = backend_record(host, request.param)
    if record is None:
        facts_dir = setting(host, "llm_facts_dir")
        pytest.skip(f"{request.param} is not deployed on this host (no {facts_dir}/llm_{request.param}.fact)")
    return record
