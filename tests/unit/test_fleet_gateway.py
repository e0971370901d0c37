"""A fleet gateway (inventory group llm_gateways): the role's haproxy.cfg for it, rendered by Ansible and
run by the real HAProxy in front of two hosts' gateways (each the role's own configuration, with TLS from
a private CA, in front of its two stand-in backends): least outstanding requests over both hosts, each
host reached over verified TLS with its own key, a host whose backends are all gone (its /health 503)
out of rotation, a host that refuses connections failed over without losing a request, and the plan's
refusals (llm_toolkit.gateway_config.fleet_members)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import requests

from llm_toolkit import envfile, gateway_config, tls
from tests.unit.test_gateway_config import (
    _get,
    _server_state,
    free_port,
    needs_haproxy,
    render_config,
    running_gateway,
    start_haproxy,
    wait_for,
)

FLEET_KEY = "fleet-client-key-0123"
HOST_KEYS = {"gpu-a": "key-of-gpu-a-0123", "gpu-b": "key-of-gpu-b-4567"}
DEFAULTS = {
    "llm_gateway_enabled": True,
    "llm_gateway_host": "127.0.0.1",
    "llm_gateway_port": 8080,
    "llm_gateway_tls_certificate": "",
    "llm_gateway_tls_ca": "",
}


@contextlib.contextmanager
def running_fleet(ca_dir: Path):
    """Two hosts' gateways (TLS from the private CA in ca_dir, each its own key) and the fleet gateway in
    front of them; yields where everything is."""
    needs_haproxy()
    with contextlib.ExitStack() as stack:
        hosts = {}
        for name, key in HOST_KEYS.items():
            issued = tls.ensure_host_certificate(ca_dir, name, [name], ["127.0.0.1"])
            hosts[name] = stack.enter_context(
                running_gateway(
                    llm_gateway_api_key=key,
                    llm_gateway_tls_certificate=issued["certificate"],
                    llm_gateway_tls_private_key=issued["private_key"],
                )
            )
        base = Path(tempfile.mkdtemp(prefix="llm-fleet-"))
        base.chmod(0o755)
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        port = free_port()
        members = [
            {
                "name": name,
                "host": name,
                "address": "127.0.0.1",
                "port": int(hosts[name]["url"].rsplit(":", 1)[1]),
                "server_name": name,
                "private_ca": True,
            }
            for name in HOST_KEYS
        ]
        fleet_vars = {
            "render_fleet_members": members,
            "render_member_keys": HOST_KEYS,
            "llm_gateway_api_key": FLEET_KEY,
            "llm_gateway_port": port,
            "llm_gateway_metrics_port": free_port(),
            "llm_gateway_admin_socket": str(base / "admin.sock"),
            "llm_gateway_check_interval_s": 1,
        }
        config = render_config(base, fleet_vars, {"/etc/haproxy/llm-fleet-ca.pem": str(ca_dir / "ca.pem")})
        process = start_haproxy(config, base)
        stack.callback(process.wait, timeout=10)
        stack.callback(process.terminate)
        for name in HOST_KEYS:
            wait_for(lambda name=name: _server_state(base, name) == "UP", what=f"{name} up in the fleet")
        yield {"url": f"http://127.0.0.1:{port}", "dir": base, "hosts": hosts, "ca": str(ca_dir / "ca.pem")}


@pytest.fixture
def fleet(tmp_path):
    with running_fleet(tmp_path / "ca") as where:
        yield where


def ask(fleet) -> requests.Response:
    body = {"model": "mixtral", "messages": [{"role": "user", "content": "Come posso lavare la mia auto?"}]}
    headers = {"Authorization": f"Bearer {FLEET_KEY}"}
    return requests.post(fleet["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_requests_spread_over_both_hosts_each_reached_with_its_own_key(fleet):
    answers = [ask(fleet) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 6
    assert {answer.headers["X-LLM-Host"] for answer in answers} == set(HOST_KEYS)
    assert {answer.headers["X-LLM-Backend"] for answer in answers} == {"vllm"}
    # The fleet's client key reaches no host; each host's key stays out of what clients see.
    for name, host in fleet["hosts"].items():
        assert host["vllm"].seen, f"{name} got no request"
        assert all(FLEET_KEY not in str(seen["headers"]) for seen in host["vllm"].seen)
    assert all(key not in str(answer.headers) + answer.text for answer in answers for key in HOST_KEYS.values())
    unauthorised = requests.get(fleet["url"] + "/v1/models", timeout=5)
    assert unauthorised.status_code == 401


def test_a_host_with_no_backend_left_leaves_the_rotation(fleet):
    gone = fleet["hosts"]["gpu-a"]
    gone["vllm"].stop()
    gone["ollama"].stop()
    wait_for(lambda: _get(gone["url"] + "/health", verify=fleet["ca"]).status_code == 503, what="gpu-a's health 503")
    wait_for(lambda: _server_state(fleet["dir"], "gpu-a") == "DOWN", what="gpu-a out of the fleet's rotation")
    answers = [ask(fleet) for _ in range(4)]
    assert [(answer.status_code, answer.headers.get("X-LLM-Host")) for answer in answers] == [(200, "gpu-b")] * 4
    health = requests.get(fleet["url"] + "/health", timeout=5)
    assert health.status_code == 200


def test_a_host_that_refuses_connections_loses_no_request(fleet):
    """The host's gateway stops before the fleet's checks notice: requests that reach it are refused
    before any byte, and the fleet retries them on the other host."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        fleet["hosts"]["gpu-a"]["process"].kill()
        answers = list(pool.map(lambda _: ask(fleet), range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert {answer.headers["X-LLM-Host"] for answer in answers} == {"gpu-b"}


def test_a_host_whose_certificate_the_private_ca_did_not_issue_never_gets_a_request(tmp_path):
    needs_haproxy()
    with running_fleet(tmp_path / "ca") as fleet:
        # gpu-b's gateway gets a certificate from another CA, as an impostor on its address would have.
        other = tls.ensure_host_certificate(tmp_path / "other-ca", "gpu-b", ["gpu-b"], ["127.0.0.1"])
        pem = fleet["hosts"]["gpu-b"]["dir"] / "gateway.pem"
        pem.write_text(other["certificate"] + other["private_key"])
        fleet["hosts"]["gpu-b"]["process"].send_signal(signal.SIGUSR2)  # reload with it
        wait_for(lambda: _server_state(fleet["dir"], "gpu-b") == "DOWN", what="gpu-b refused by the fleet")
        answers = [ask(fleet) for _ in range(4)]
        assert {(answer.status_code, answer.headers.get("X-LLM-Host")) for answer in answers} == {(200, "gpu-a")}


def test_the_plan_refuses_hosts_the_fleet_cannot_reach_safely():
    members = {
        "gpu-a": {"llm_gateway_host": "10.0.0.1", "llm_gateway_tls_ca": "private"},
        "gpu-b": {"ansible_host": "10.0.0.2", "llm_gateway_host": "0.0.0.0", "llm_gateway_tls_certificate": "PEM"},  # noqa: S104
        "gpu-c": {},
        "gpu-d": {"llm_gateway_host": "10.0.0.4"},
        "gpu-e": {"llm_gateway_enabled": False},
    }
    plan = gateway_config.fleet_members("app", members, DEFAULTS)
    common = {"port": 8080}
    assert plan["members"] == [
        {"name": "gpu-a", "host": "gpu-a", "address": "10.0.0.1", "server_name": "gpu-a", "private_ca": True, **common},
        {
            "name": "gpu-b",
            "host": "gpu-b",
            "address": "10.0.0.2",
            "server_name": "10.0.0.2",
            "private_ca": False,
            **common,
        },
    ]
    assert plan["errors"] == [
        "app: the gateway of gpu-c listens on 127.0.0.1 (loopback), out of the fleet gateway's reach; expected a "
        "network address with TLS; fix: set llm_gateway_host for gpu-c to its network address, with "
        "llm_gateway_tls_ca: private",
        "app: the gateway of gpu-d serves plain HTTP on 10.0.0.4; expected TLS between the fleet gateway and each "
        "host; fix: set llm_gateway_host for gpu-d to its network address, with llm_gateway_tls_ca: private (or "
        "llm_gateway_tls_certificate)",
    ]
    nobody = gateway_config.fleet_members("app", {"gpu-e": {"llm_gateway_enabled": False}}, DEFAULTS)
    assert nobody["members"] == [] and len(nobody["errors"]) == 1
    assert nobody["errors"][0].startswith("app: no host of llm_servers has a gateway")


def test_inventory_names_become_haproxy_names():
    assert gateway_config.haproxy_name("gpu-a.example.com") == "gpu-a.example.com"
    assert gateway_config.haproxy_name("gpu a/1") == "gpu_a_1"


RECORD = {"url": "http://127.0.0.1:8080", "host": "127.0.0.1", "port": 8080, "tls": False, "ca_file": ""}


def test_an_app_on_the_fleet_gateways_own_host_uses_its_recorded_url():
    assert gateway_config.app_gateway_url("app", "app", RECORD, {}) == {"url": "http://127.0.0.1:8080", "errors": []}


def test_an_app_elsewhere_reaches_the_fleet_gateway_over_tls_on_its_network_address():
    tls_record = {**RECORD, "tls": True, "ca_file": "/etc/llm-toolkit/gateway-ca.pem"}
    bound = gateway_config.app_gateway_url("app", "fleet", {**tls_record, "host": "10.0.0.9"}, {})
    assert bound == {"url": "https://10.0.0.9:8080", "errors": []}
    everywhere = {**tls_record, "host": "0.0.0.0", "url": "https://127.0.0.1:8080"}  # noqa: S104
    assert gateway_config.app_gateway_url("app", "fleet", everywhere, {"ansible_host": "fd00::9"})["url"] == (
        "https://[fd00::9]:8080"
    )


def test_an_app_elsewhere_is_refused_a_fleet_gateway_on_loopback_plain_http_or_not_converged():
    loopback = gateway_config.app_gateway_url("app", "fleet", RECORD, {})
    assert loopback["errors"] == [
        "app: the fleet gateway fleet listens on 127.0.0.1 (loopback), out of app's reach; expected a network "
        "address with TLS; fix: set llm_gateway_host for fleet to its network address, with llm_gateway_tls_ca: private"
    ]
    plain = gateway_config.app_gateway_url("app", "fleet", {**RECORD, "host": "10.0.0.9"}, {})
    assert "serves plain HTTP on 10.0.0.9" in plain["errors"][0] and plain["url"] == ""
    missing = gateway_config.app_gateway_url("app", "fleet", {}, {})
    assert missing["errors"][0].startswith("app: the fleet gateway fleet has no gateway recorded;")


def test_an_app_servers_env_names_the_fleet_gateway_and_no_backend():
    pairs = envfile.fleet_app_env_pairs(
        {"url": "https://10.0.0.9:8080", "key": "k", "ca_file": "/srv/app/gateway-ca.pem"}, "mixtral", 60, {"X": "1"}
    )
    assert pairs == {
        "LLM_BASE_URL": "https://10.0.0.9:8080/v1",
        "LLM_API_KEY": "k",
        "LLM_MODEL": "mixtral",
        "LLM_TIMEOUT_S": "60",
        "LLM_CA_FILE": "/srv/app/gateway-ca.pem",
        "X": "1",
    }
    assert "LLM_CA_FILE" not in envfile.fleet_app_env_pairs({"url": "http://127.0.0.1:8080", "key": "k"}, "m", 5, {})
