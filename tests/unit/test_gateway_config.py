"""The gateway's HAProxy configuration, rendered by Ansible from the role (tests/playbooks/render_gateway.yml)
and run by the real HAProxy in front of two loopback stand-ins of the backends (tests/unit/gateway_backends.py):
authentication, the allowlist, the limits, credentials kept from the backends, failover to the backup before
the first byte, /health, metrics on their own listener, and drain/enable with reasons over the runtime API.
The lab runs the same role in front of the real vLLM (tests/integration/test_gateway.py)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest
import requests
import yaml
from llm_toolkit.host import llm_haproxy

from llm_toolkit import gateway_config, tls
from tests.ansible_plugins import run_test_playbook
from tests.unit.gateway_backends import Backend
from tests.verify import test_gateway as gateway_verifiers
from tests.verify.verify_helpers import certificate_days_left

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
REQUIRED = os.environ.get("CI") == "true"
CLIENT_KEY = "client-key-0123456789"
# A key HAProxy would read as a variable ($HOME), an escape, a log-format directive (%) and a quote.
VLLM_KEY = 'vllm "key" \\ $HOME 50% it\'s'
BLOCKED = [
    "/pause", "/resume", "/update_weights", "/collective_rpc", "/tokenize", "/detokenize", "/invocations",
    "/sleep", "/wake_up", "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/metrics", "/api/pull",
    "/api/delete", "/api/create", "/api/copy", "/api/push", "/api/generate", "/v1/models/../../api/pull",
    "/v1/chat/completions/", "/V1/models",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def render_config(base: Path, host: dict, replacements: dict[str, str]) -> Path:
    """The role's haproxy.cfg for a host with these variables, rendered by Ansible into base. Only the log
    target and the given paths differ from the role's file (the test machine may have no /dev/log, and
    the certificates are the test's own)."""
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "hosts": {"gateway": {"render_dir": str(base), **host}},
        }
    }
    (base / "inventory.yml").write_text(yaml.safe_dump(inventory))
    run_test_playbook("render_gateway.yml", "-i", str(base / "inventory.yml"))
    config = base / "haproxy.cfg"
    text = config.read_text().replace("log /dev/log local0 info", "log stderr format raw local0 err")
    for role_path, test_path in replacements.items():
        text = text.replace(role_path, test_path)
    config.write_text(text)
    return config


def start_haproxy(config: Path, base: Path) -> subprocess.Popen:
    """The real HAProxy in master-worker mode with its master CLI in base, as the role's unit runs it."""
    return subprocess.Popen(
        [HAPROXY, "-W", "-db", "-S", f"{base / 'master.sock'},mode,600", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def needs_haproxy() -> None:
    if not Path(HAPROXY).exists() or os.geteuid() != 0:
        if REQUIRED:
            pytest.fail("HAProxy (apt-get install haproxy) and root are needed for the gateway tests")
        pytest.skip("needs HAProxy and root")


@contextlib.contextmanager
def running_gateway(**settings):
    """The role's haproxy.cfg (rendered by Ansible with these host settings) run by the real HAProxy in
    front of two stand-ins; yields where everything is."""
    needs_haproxy()
    # HAProxy's workers (user haproxy) reach the sockets in it: a directory they can enter.
    base = Path(tempfile.mkdtemp(prefix="llm-gateway-"))
    base.chmod(0o755)
    vllm, ollama = Backend("vllm", key=VLLM_KEY), Backend("ollama")
    port, metrics_port = free_port(), free_port()
    host = {
        "render_records": [
            {"backend": "vllm", "base_url": vllm.url, "auth": True},
            {"backend": "ollama", "base_url": ollama.url, "auth": False},
        ],
        "llm_gateway_api_key": CLIENT_KEY,
        "vllm_api_key": VLLM_KEY,
        "llm_gateway_port": port,
        "llm_gateway_metrics_port": metrics_port,
        "llm_gateway_admin_socket": str(base / "admin.sock"),
        "llm_gateway_check_interval_s": 1,
        "llm_gateway_rate_limit_per_minute": 120,
        **settings,
    }
    replacements = {}
    if settings.get("llm_gateway_tls_certificate"):
        pem = base / "gateway.pem"
        pem.write_text(settings["llm_gateway_tls_certificate"] + settings["llm_gateway_tls_private_key"])
        replacements["/etc/haproxy/llm-gateway.pem"] = str(pem)
    process = start_haproxy(render_config(base, host, replacements), base)
    url = f"{'https' if settings.get('llm_gateway_tls_certificate') else 'http'}://127.0.0.1:{port}"
    try:
        wait_for(lambda: _server_state(base, "vllm") == "UP", what="vLLM up in the gateway")
        yield {
            "url": url,
            "metrics": f"http://127.0.0.1:{metrics_port}",
            "dir": base,
            "vllm": vllm,
            "ollama": ollama,
            "process": process,
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
        for backend in (vllm, ollama):
            backend.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway():
    with running_gateway() as where:
        wait_for(lambda: _get(where["url"] + "/health").status_code == 200, what="the gateway's /health")
        yield where


def _get(url: str, **kwargs) -> requests.Response:
    try:
        return requests.get(url, timeout=5, **kwargs)
    except requests.ConnectionError:
        return requests.Response()


def _server_state(base: Path, server: str) -> str:
    try:
        return llm_haproxy.servers(str(base / "master.sock"))[f"llm/{server}"]["status"]
    except llm_haproxy.GatewayError:
        return "unreachable"


def auth(key: str = CLIENT_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def chat(gateway, body: dict | None = None, **kwargs) -> requests.Response:
    payload = {"model": "mixtral", "messages": [{"role": "user", "content": "Come posso lavare la mia auto?"}]}
    return requests.post(
        gateway["url"] + "/v1/chat/completions", json={**payload, **(body or {})}, timeout=10, **kwargs
    )


def test_the_client_key_is_required(gateway):
    for headers in ({}, auth("wrong"), {"Authorization": CLIENT_KEY}, {**auth("wrong"), "Host": "localhost"}):
        answer = requests.get(gateway["url"] + "/v1/models", headers=headers, timeout=5)
        assert answer.status_code == 401, headers
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(gateway["url"] + "/v1/models", headers=auth(), timeout=5).status_code == 200


def test_a_forged_host_header_changes_nothing(gateway):
    for host in ("localhost", "127.0.0.1:8000", "evil.example"):
        assert requests.get(gateway["url"] + "/v1/models", headers={"Host": host}, timeout=5).status_code == 401
        assert requests.get(gateway["url"] + "/pause", headers={**auth(), "Host": host}, timeout=5).status_code == 404


def test_only_the_openai_endpoints_are_forwarded(gateway):
    before = len(gateway["vllm"].seen) + len(gateway["ollama"].seen)
    for path in BLOCKED:
        for method in ("GET", "POST"):
            answer = requests.request(method, gateway["url"] + path, headers=auth(), json={}, timeout=5)
            assert answer.status_code == 404, (method, path)
    assert len(gateway["vllm"].seen) + len(gateway["ollama"].seen) == before
    assert chat(gateway, headers=auth()).json()["backend"] == "vllm"
    completions = requests.post(
        gateway["url"] + "/v1/completions", json={"model": "mixtral", "prompt": "Ciao"}, headers=auth(), timeout=5
    )
    assert completions.status_code == 200


def test_the_backends_never_see_the_client_key_and_only_vllm_gets_its_own(gateway):
    chat(gateway, headers={**auth(), "Cookie": "session=1"})
    seen = gateway["vllm"].seen[-1]["headers"]
    assert seen["authorization"] == f"Bearer {VLLM_KEY}"
    assert CLIENT_KEY not in json.dumps(seen)
    assert "cookie" not in seen
    config = (gateway["dir"] / "haproxy.cfg").read_text()
    assert CLIENT_KEY not in config  # only the digest of the client's header


def test_streaming_passes_through_as_it_is_made(gateway):
    started = time.monotonic()
    answer = chat(gateway, {"stream": True}, headers=auth(), stream=True)
    arrivals = [time.monotonic() - started for line in answer.iter_lines() if line.startswith(b"data: {")]
    assert len(arrivals) == 4
    # The stand-in waits between chunks: unbuffered, they arrive apart, not all at the end.
    assert arrivals[-1] - arrivals[0] >= 2 * gateway["vllm"].stream_delay_s


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": b"x" * (262144 + 1), "headers": {"Content-Type": "application/json"}}, 413),
        ({"data": iter([b"{}"])}, 411),  # a chunked body has no Content-Length
        ({"json": {"model": "mixtral", "prompt": "Ciao", "n": 5}}, 400),
        ({"json": {"model": "mixtral", "prompt": "Ciao"}, "headers": {"X-Pad": "p" * 17000}}, 431),
    ],
    ids=["body-too-large", "no-content-length", "n-over-cap", "headers-too-large"],
)
def test_oversized_or_over_the_cap_requests_get_a_clear_4xx_before_any_backend(gateway, kwargs, status):
    before = len(gateway["vllm"].seen)
    headers = {**auth(), **kwargs.pop("headers", {})}
    answer = requests.post(gateway["url"] + "/v1/completions", headers=headers, timeout=10, **kwargs)
    assert answer.status_code == status, answer.text
    assert len(gateway["vllm"].seen) == before


def test_metrics_are_served_on_their_own_listener_only(gateway):
    assert "haproxy_frontend_http_requests_total" in requests.get(gateway["metrics"] + "/metrics", timeout=5).text
    assert requests.get(gateway["metrics"] + "/metrics/vllm", timeout=5).status_code == 200
    assert gateway["vllm"].seen[-1]["path"] == "/metrics"
    assert requests.get(gateway["url"] + "/metrics", headers=auth(), timeout=5).status_code == 404


def test_a_server_drained_for_two_reasons_comes_back_when_both_are_cleared(gateway):
    args = (str(gateway["dir"] / "master.sock"), str(gateway["dir"] / "reasons"), "llm", "vllm")
    assert llm_haproxy.set_reason(*args, "upgrade", present=True, check_mode=False)["drained"]
    assert llm_haproxy.set_reason(*args, "gpu-health", present=True, check_mode=False)["reasons"] == [
        "gpu-health",
        "upgrade",
    ]
    assert chat(gateway, headers=auth()).json()["backend"] == "ollama"
    assert llm_haproxy.set_reason(*args, "upgrade", present=False, check_mode=False)["drained"]
    assert _server_state(gateway["dir"], "vllm").startswith("DRAIN")
    assert chat(gateway, headers=auth()).json()["backend"] == "ollama"
    result = llm_haproxy.set_reason(*args, "gpu-health", present=False, check_mode=False)
    assert result == {"changed": True, "reasons": [], "drained": False}
    assert chat(gateway, headers=auth()).json()["backend"] == "vllm"
    # Clearing a reason that is not there changes nothing.
    assert not llm_haproxy.set_reason(*args, "upgrade", present=False, check_mode=False)["changed"]


def test_a_request_that_meets_a_stopped_primary_is_answered_by_the_backup(gateway):
    vllm = gateway["vllm"]
    port = vllm.port
    vllm.stop()
    try:
        # A RAG-sized body (32 KiB and more) is retried whole on the backup, at once, before any health check.
        answer = chat(gateway, {"context": "c" * 40000}, headers=auth())
        assert answer.status_code == 200, answer.text
        assert answer.json()["backend"] == "ollama"
        assert answer.headers["X-LLM-Backend"] == "ollama"
        assert gateway["ollama"].seen[-1]["bytes"] > 40000
        assert "authorization" not in gateway["ollama"].seen[-1]["headers"]
        assert requests.get(gateway["url"] + "/health", timeout=5).status_code == 200
    finally:
        gateway["vllm"] = Backend("vllm", key=VLLM_KEY, port=port)
    wait_for(lambda: _server_state(gateway["dir"], "vllm") == "UP", what="vLLM back in rotation")
    assert chat(gateway, headers=auth()).json()["backend"] == "vllm"


def test_a_server_drained_while_down_comes_back_once_enabled_and_up(gateway):
    # What a unit's stop and start do: drained while it stops (it is then DOWN), enabled when it starts.
    where = ["--socket", str(gateway["dir"] / "master.sock"), "--state-dir", str(gateway["dir"] / "reasons")]
    port = gateway["vllm"].port
    gateway["vllm"].stop()
    wait_for(lambda: _server_state(gateway["dir"], "vllm").startswith("DOWN"), what="vLLM down")
    assert llm_haproxy.main(["drain", "vllm", "vllm-service-stopping", *where]) == 0
    assert llm_haproxy.main(["enable", "vllm", "vllm-service-stopping", *where]) == 0
    gateway["vllm"] = Backend("vllm", key=VLLM_KEY, port=port)
    wait_for(lambda: _server_state(gateway["dir"], "vllm") == "UP", what="vLLM back in rotation")


def test_health_is_503_with_retry_after_while_no_backend_serves(gateway):
    vllm, ollama = gateway["vllm"], gateway["ollama"]
    ports = vllm.port, ollama.port
    vllm.stop()
    ollama.stop()
    try:
        wait_for(lambda: _get(gateway["url"] + "/health").status_code == 503, what="/health 503")
        answer = _get(gateway["url"] + "/health")
        assert answer.headers["Retry-After"] == "10"
    finally:
        gateway["vllm"] = Backend("vllm", key=VLLM_KEY, port=ports[0])
        gateway["ollama"] = Backend("ollama", port=ports[1])
    wait_for(lambda: _get(gateway["url"] + "/health").status_code == 200, what="/health 200 again")
    wait_for(lambda: _server_state(gateway["dir"], "vllm") == "UP", what="vLLM back in rotation")
    wait_for(lambda: _server_state(gateway["dir"], "ollama") == "UP", what="Ollama back in rotation")


def test_the_units_helper_drains_and_enables_a_server_and_says_so(gateway, capsys):
    where = ["--socket", str(gateway["dir"] / "master.sock"), "--state-dir", str(gateway["dir"] / "reasons")]
    assert llm_haproxy.main(["drain", "ollama", "ollama-service-stopping", *where]) == 0
    assert "llm/ollama is out of rotation (ollama-service-stopping)" in capsys.readouterr().out
    assert _server_state(gateway["dir"], "ollama").startswith("DRAIN")
    assert llm_haproxy.main(["enable", "ollama", "ollama-service-stopping", *where]) == 0
    assert "llm/ollama is in rotation" in capsys.readouterr().out
    assert not _server_state(gateway["dir"], "ollama").startswith("DRAIN")
    # No gateway running: one line, exit 1 (the unit's `-` prefix keeps the stop going).
    missing = ["--socket", str(gateway["dir"] / "missing.sock"), "--state-dir", str(gateway["dir"] / "reasons")]
    assert llm_haproxy.main(["drain", "ollama", "ollama-service-stopping", *missing]) == 1
    assert "cannot reach HAProxy's runtime API" in capsys.readouterr().out


def test_a_certificate_expiring_within_30_days_fails_its_verifier():
    now = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)
    shown = "Filename: /etc/haproxy/llm-gateway.pem\nnotAfter: Dec 20 12:00:00 2026 GMT\n"
    assert certificate_days_left(shown, now) == 20 < gateway_verifiers.CERTIFICATE_WARNING_DAYS
    assert certificate_days_left("Filename: x\n", now) is None


def test_over_tls_the_official_client_trusts_the_private_ca_and_nothing_else(tmp_path):
    issued = tls.ensure_host_certificate(tmp_path / "ca", "gateway", ["gateway"], ["127.0.0.1"])
    (tmp_path / "ca.pem").write_text(issued["ca_certificate"])
    settings = {
        "llm_gateway_tls_certificate": issued["certificate"],
        "llm_gateway_tls_private_key": issued["private_key"],
    }
    with running_gateway(**settings) as where:
        assert where["url"].startswith("https://")
        trusted = openai.OpenAI(
            base_url=where["url"] + "/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=tmp_path / "ca.pem")),
        )
        assert [model.id for model in trusted.models.list().data] == ["mixtral"]
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(base_url=where["url"] + "/v1", api_key=CLIENT_KEY, max_retries=0).models.list()
        # What the verifier reads (tests/verify/test_gateway.py): HAProxy's view of the certificate.
        shown = llm_haproxy.command(str(where["dir"] / "master.sock"), f"show ssl cert {where['dir'] / 'gateway.pem'}")
        assert tls.DAYS - 2 <= certificate_days_left(shown) <= tls.DAYS
        plain = where["url"].replace("https://", "http://")
        with pytest.raises(requests.ConnectionError):
            requests.get(plain + "/v1/models", headers=auth(), timeout=5)


def test_the_servers_follow_the_operators_order_and_leave_out_what_is_not_deployed():
    records = [
        {"backend": "ollama", "base_url": "http://127.0.0.1:11434", "auth": False},
        {"backend": "vllm", "base_url": "http://[::1]:8000", "auth": True},
    ]
    assert gateway_config.servers(records, ["vllm", "ollama"]) == [
        {"name": "vllm", "upstream": "[::1]:8000", "auth": True},
        {"name": "ollama", "upstream": "127.0.0.1:11434", "auth": False},
    ]
    assert [server["name"] for server in gateway_config.servers(records[:1], ["vllm", "ollama"])] == ["ollama"]


def test_the_buffer_holds_the_largest_request_allowed_and_never_less_than_haproxys_default():
    assert gateway_config.buffer_size(262144, 16384) == 262144 + 16384 + 8192
    assert gateway_config.buffer_size(1000, 100) == 16384
    assert gateway_config.buffer_size(40000, 1000) % 1024 == 0


def test_a_value_with_a_control_character_is_refused_without_showing_it():
    with pytest.raises(ValueError, match="control character") as refused:
        gateway_config.log_format_word("secret\nkey")
    assert "secret" not in str(refused.value)
    assert gateway_config.log_format_word("a%b'c") == "'a%%b'\"'\"'c'"


def test_after_a_reload_the_toolkits_commands_reach_the_worker_that_serves(gateway):
    # A stream under way keeps the old worker alive after the reload. On the lab, such old workers took
    # some of the commands sent to the shared stats socket (docs/gateway.md); through the master CLI they
    # go to the worker that serves (@1), which this checks after a reload.
    gateway["vllm"].stream_delay_s = 2.0
    streaming = threading.Thread(target=lambda: chat(gateway, {"stream": True}, headers=auth(), stream=True).content)
    streaming.start()
    time.sleep(0.5)
    os.kill(gateway["process"].pid, signal.SIGUSR2)  # what systemctl reload sends the master
    wait_for(lambda: _server_state(gateway["dir"], "vllm") == "UP", what="the new worker's vLLM up")
    args = (str(gateway["dir"] / "master.sock"), str(gateway["dir"] / "reasons"), "llm", "vllm")
    try:
        for _ in range(6):
            assert llm_haproxy.set_reason(*args, "operator", present=True, check_mode=False)["drained"]
            assert chat(gateway, headers=auth()).json()["backend"] == "ollama"
            llm_haproxy.set_reason(*args, "operator", present=False, check_mode=False)
            assert chat(gateway, headers=auth()).json()["backend"] == "vllm"
    finally:
        gateway["vllm"].stream_delay_s = 0.05
        streaming.join()


# Last: it spends the key's quota for a minute.
def test_one_key_is_held_to_its_rate(gateway):
    statuses = [requests.get(gateway["url"] + "/v1/models", headers=auth(), timeout=5).status_code for _ in range(130)]
    assert 429 in statuses
    assert statuses.index(429) <= 121
