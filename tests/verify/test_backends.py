"""Host verifiers for the serving backends (roles/ollama, roles/vllm), each as its role set it up.

    pytest tests/verify --hosts='ansible://llm_servers' --ansible-inventory=inventory/lab

Parametrized over the backends; a backend that is not deployed on a host is skipped there.
"""

import json
import shlex

import pytest
from llm_toolkit.host.llm_probe import parse_unit_properties

from tests.verify.verify_helpers import VLLM_ENV, api_get_command, key_to_stdout, setting

LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "RestrictSUIDSGID": "yes",
    "Restart": "always",
}
# vLLM drains the requests in flight when its API server alone gets SIGTERM; Ollama has no drain, and
# its runners must not outlive it.
KILL_MODE = {"vllm": "mixed", "ollama": "control-group"}


def test_service_is_enabled_and_active(host, backend):
    service = host.service(backend["unit"])
    assert service.is_enabled, f"{backend['unit']} is not enabled"
    state = host.run(f"systemctl is-active {backend['unit']}").stdout.strip()
    assert state == "active", f"{backend['unit']} is {state}; see journalctl -u {backend['unit']}"


def unit_listeners(host, unit: str) -> list[str]:
    """Local addresses of every TCP socket listening in the unit's cgroup."""
    cgroup = host.run(f"systemctl show -p ControlGroup --value {unit}").stdout.strip()
    if not cgroup:
        return []
    pids = set(host.run(f"cat $(find /sys/fs/cgroup{cgroup} -name cgroup.procs) 2>/dev/null").stdout.split())
    listeners = []
    for line in host.run("ss -Htlnp").stdout.splitlines():
        owners = {part.split("=", 1)[1] for part in line.replace(",", " ").split() if part.startswith("pid=")}
        if owners & pids:
            listeners.append(line.split()[3])
    return listeners


def test_it_listens_only_on_the_configured_address(host, backend):
    listeners = unit_listeners(host, backend["unit"])
    configured = backend["host"]
    api = [address for address in listeners if address.rsplit(":", 1)[1] == str(backend["port"])]
    assert api, f"nothing of {backend['unit']} listens on port {backend['port']}"
    for address in api:
        bound = address.rsplit(":", 1)[0].strip("[]")
        assert bound == configured or (configured == "localhost" and bound in LOOPBACK), (
            f"{backend['unit']} listens on {address}; configured {configured}:{backend['port']}"
        )
    others = [address for address in listeners if address not in api]
    exposed = [address for address in others if address.rsplit(":", 1)[0] not in LOOPBACK]
    assert not exposed, f"{backend['unit']} has sockets beyond loopback besides its API: {exposed}"


def test_the_unit_keeps_its_hardening(host, backend):
    expected = {**HARDENING, "KillMode": KILL_MODE[backend["backend"]]}
    properties = " ".join(f"-p {name}" for name in expected)
    shown = parse_unit_properties(host.run(f"systemctl show {properties} {backend['unit']}").stdout)
    loosened = {name: shown.get(name) for name, value in expected.items() if shown.get(name) != value}
    assert not loosened, f"{backend['unit']} lost hardening: {loosened} (expected {expected})"


def api_get(host, backend, path: str) -> dict:
    # The key goes from vLLM's root-only file to curl's standard input: never on a command line.
    keyed = backend["backend"] == "vllm" and backend["auth"] and host.file(VLLM_ENV).exists
    command = api_get_command(backend["base_url"] + path, VLLM_ENV if keyed else None)
    if keyed:
        with host.sudo():  # the file is root's alone
            result = host.run(command)
    else:
        result = host.run(command)
    assert result.rc == 0, f"{backend['base_url']}{path} did not answer (curl exit {result.rc})"
    return json.loads(result.stdout)


def test_the_backend_lists_its_model(host, backend):
    if backend["backend"] == "vllm":
        names = [model["id"] for model in api_get(host, backend, "/v1/models")["data"]]
        wanted = backend["model"]
    else:
        names = [model["name"] for model in api_get(host, backend, "/api/tags")["models"]]
        wanted = backend["model"] if ":" in backend["model"] else f"{backend['model']}:latest"
    assert wanted in names, f"{backend['backend']} does not list {wanted}; it lists {names}"


def test_the_italian_smoke_test_passes(host, backend):
    venv = setting(host, "llm_helper_venv")
    if host.run(f"{venv}/bin/python -c 'import llm_toolkit.smoke_test'").rc != 0:
        pytest.skip(f"the smoke stage has not run on this host (no llm_toolkit in {venv})")
    # The key goes from vLLM's own root-only file to the test's standard input: never on a command line.
    key_source = f"{key_to_stdout()} | " if backend["auth"] and host.file(VLLM_ENV).exists else ""
    command = (
        f"{key_source}{venv}/bin/python -m llm_toolkit.smoke_test --base-url {shlex.quote(backend['base_url'])} "
        f"--api {backend['api']} --model {shlex.quote(backend['model'])} --json"
        f"{' --api-key-stdin' if key_source else ''}"
    )
    with host.sudo():
        result = host.run(command)
    report = json.loads(result.stdout) if result.stdout.startswith("{") else {"error": result.stderr.strip()}
    failed = [f"{check['name']}: {check['detail']}" for check in report.get("checks", []) if not check["passed"]]
    assert result.rc == 0, (
        f"smoke test exit {result.rc}: {failed or report.get('error')}; answer starts {report.get('answer', '')[:80]!r}"
    )
