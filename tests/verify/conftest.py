"""Shared fixtures of the host verifiers.

The service roles record each deployed backend in a local fact (<llm_facts_dir>/llm_<name>.fact, the
backend record of docs/backend-record.md, no secret in it); the .env role records the file it wrote.
A check for something a host does not have is skipped with that reason, never failed.
"""

import pytest

from llm_toolkit.verify import UNREACHABLE
from tests.verify.verify_helpers import BACKENDS, backend_record, setting

# Whether each host answered its first command: None, or why it did not (one probe per host).
_UNREACHABLE: dict[str, str | None] = {}


@pytest.fixture(autouse=True)
def host_answers(host):
    """A host that does not answer over its connection fails every check with one reason, which
    scripts/verify.py reports as "could not verify" (exit 2) instead of as checks that failed."""
    name = host.backend.get_pytest_id()
    if name not in _UNREACHABLE:
        try:
            result = host.run("true")
        except RuntimeError as error:  # testinfra's ssh backend raises on ssh's own failure (exit 255)
            result = error.args[0] if error.args and hasattr(error.args[0], "rc") else None
            if result is None:
                _UNREACHABLE[name] = str(error).splitlines()[0] if str(error) else "RuntimeError"
        if name not in _UNREACHABLE:
            lines = (result.stderr or result.stdout).strip().splitlines()
            _UNREACHABLE[name] = None if result.rc == 0 else (lines[-1] if lines else f"exit {result.rc}")
    if _UNREACHABLE[name] is not None:
        pytest.fail(f"{UNREACHABLE} {_UNREACHABLE[name]}", pytrace=False)


@pytest.fixture(params=BACKENDS, ids=[f"backend={name}" for name in BACKENDS])
def backend(request, host) -> dict:
    """The recorded backend (vllm, ollama); skipped where that phase is not deployed."""
    record = backend_record(host, request.param)
    if record is None:
        facts_dir = setting(host, "llm_facts_dir")
        pytest.skip(f"{request.param} is not deployed on this host (no {facts_dir}/llm_{request.param}.fact)")
    return record
