"""The gateway (roles/llm_gateway) on the session lab's CPU host, in front of vLLM's CPU build and the
Ollama stand-in, as `make lab` converged it: the official `openai` client through it (models, chat,
streamed chat, completions), 401 without or with a wrong key, the admin routes of both backends refused,
the app's .env pointing at it, a reload that drops no request, the metrics listener, the sandbox of
haproxy.service, and the failover drill (playbooks/drill.yml): vLLM stopped under load, Ollama answers,
vLLM back in rotation once ready (fault-matrix rows 13, 14 and 29).

The gateway binds loopback on the host; the tests reach it through an ssh tunnel from the controller,
as an operator would before opening it to the network.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest
import requests
import yaml
from dotenv import dotenv_values

from tests.integration.conftest import CANARY
from tests.integration.test_vllm import ITALIAN

HOST = "itest3"
GATEWAY_KEY_FILE = "/etc/llm-toolkit/secrets/gateway_api_key"
ENV_PATH = "/etc/llm-toolkit/app.env"
BLOCKED = [
    "/pause", "/resume", "/is_paused", "/update_weights", "/collective_rpc", "/tokenize", "/detokenize",
    "/invocations", "/sleep", "/wake_up", "/reset_prefix_cache", "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter", "/metrics", "/version", "/docs", "/openapi.json",
    "/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/push", "/api/tags", "/api/ps",
    "/api/generate", "/api/chat", "/v1/embeddings", "/v1/audio/transcriptions",
]  # fmt: skip


def host_address(inventory: Path, name: str) -> tuple[str, dict]:
    """The host's address and the lab's connection settings, from the lab's generated inventory."""
    for path in sorted(inventory.glob("*.yml")):
        data = yaml.safe_load(path.read_text()) or {}
        hosts = data.get("all", {}).get("children", {}).get("llm_servers", {}).get("hosts", {})
        if name in hosts:
            return hosts[name]["ansible_host"], data["all"]["vars"]
    raise LookupError(f"{name} is not in {inventory}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gateway_tunnel(address: str, settings: dict) -> tuple[subprocess.Popen, int]:
    """An ssh tunnel from a free local port of the controller to the gateway on the host's loopback
    (port 8080), with the lab's connection settings (the inventory's `all` vars)."""
    port = free_port()
    ssh = ["ssh", "-N", "-i", settings["ansible_ssh_private_key_file"], *settings["ansible_ssh_common_args"].split()]
    forward = ["-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{port}:127.0.0.1:8080"]
    return subprocess.Popen([*ssh, *forward, f"{settings['ansible_user']}@{address}"]), port


@pytest.fixture(scope="module")
def gateway(converged, session_lab):
    """The gateway of the CPU host on a local port of the controller (an ssh tunnel), with its key."""
    tunnel, port = gateway_tunnel(*host_address(session_lab.inventory, HOST))
    host = session_lab.host(HOST)
    with host.sudo():
        key = host.file(GATEWAY_KEY_FILE).content_string.strip()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield {"url": url, "key": key, "host": host}
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


def client(gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=key or gateway["key"], max_retries=0, timeout=120)


# The question the tiny test model answers with ITALIAN (the smoke test asks it too).
QUESTION = [{"role": "user", "content": "Ciao, come posso aiutarti?"}]


def test_the_official_openai_client_works_through_the_gateway(gateway):
    app = client(gateway)
    assert any(model.id.startswith("mixtral") for model in app.models.list().data)
    chat = app.chat.completions.create(model="mixtral", messages=QUESTION, max_tokens=30, temperature=0)
    assert chat.choices[0].message.content.strip() == ITALIAN
    stream = app.chat.completions.create(model="mixtral", messages=QUESTION, max_tokens=30, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices).strip() == ITALIAN
    completion = app.completions.create(model="mixtral", prompt="Ciao", max_tokens=8)
    assert completion.choices[0].text is not None


def test_without_the_key_or_with_a_wrong_one_the_gateway_answers_401(gateway):
    for key in ("wrong-key", CANARY):  # vLLM's own key is not the gateway's
        with pytest.raises(openai.AuthenticationError):
            client(gateway, key).models.list()
    assert requests.get(gateway["url"] + "/v1/models", timeout=10).status_code == 401
    forged = {"Host": "127.0.0.1:8000", "Authorization": f"Bearer {CANARY}"}
    assert requests.get(gateway["url"] + "/v1/models", headers=forged, timeout=10).status_code == 401


def test_the_admin_routes_of_both_backends_are_refused(gateway):
    headers = {"Authorization": f"Bearer {gateway['key']}", "Host": "localhost"}
    for path in BLOCKED:
        for method in ("GET", "POST"):
            answer = requests.request(method, gateway["url"] + path, headers=headers, json={}, timeout=10)
            assert answer.status_code in (403, 404), (method, path, answer.status_code)
    # The gateway's own health is public and says nothing else.
    assert requests.get(gateway["url"] + "/health", timeout=10).json() == {"status": "ok"}


def test_the_apps_env_points_at_the_gateway_and_holds_no_backend_key(gateway):
    host = gateway["host"]
    with host.sudo():
        values = dotenv_values(stream=io.StringIO(host.file(ENV_PATH).content_string))
    assert values["LLM_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert values["LLM_API_KEY"] == gateway["key"]
    assert values["LLM_MODEL"] == "mixtral"
    assert (values["LLM_BACKEND"], values["LLM_FALLBACK"]) == ("vllm", "ollama")
    assert CANARY not in values.values() and "VLLM_API_KEY" not in values


def test_the_configuration_is_root_only_and_holds_no_client_key(gateway):
    host = gateway["host"]
    with host.sudo():
        config = host.file("/etc/haproxy/haproxy.cfg")
        assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
        assert gateway["key"] not in config.content_string
        socket_file = host.file("/run/haproxy/admin.sock")
        assert (socket_file.user, socket_file.mode) == ("root", 0o600)


def test_haproxy_runs_in_a_sandbox_of_exposure_3_5_at_most(gateway):
    output = gateway["host"].run("systemd-analyze security haproxy.service --no-pager").stdout
    exposure = float(re.search(r"Overall exposure level for haproxy.service: ([0-9.]+)", output)[1])
    assert exposure <= 3.5, output[-2000:]


def test_metrics_are_on_their_own_loopback_listener(gateway):
    host = gateway["host"]
    fetch = "python3 -c 'import sys,urllib.request as u;print(u.urlopen(sys.argv[1],timeout=10).read().decode())' "
    assert "haproxy_backend_active_servers" in host.run(fetch + "http://127.0.0.1:8081/metrics").stdout
    assert "vllm:" in host.run(fetch + "http://127.0.0.1:8081/metrics/vllm").stdout


def test_a_reload_drops_no_request(gateway):
    app = client(gateway)
    results: list[str] = []

    def ask() -> None:
        for _ in range(12):
            try:
                answer = app.chat.completions.create(model="mixtral", messages=QUESTION, max_tokens=30, stream=True)
                results.append("".join(chunk.choices[0].delta.content or "" for chunk in answer if chunk.choices))
            except openai.APIError as error:
                results.append(f"error: {error}")

    asker = threading.Thread(target=ask)
    asker.start()
    for _ in range(4):
        time.sleep(1)
        assert gateway["host"].run("systemctl reload haproxy.service").rc == 0
    asker.join()
    assert [result.strip() for result in results] == [ITALIAN] * 12
    # Each reload tells the old worker to finish and leave: the master (root) must be allowed to signal
    # its workers (user haproxy), or old workers keep running checks and taking commands, and a stop
    # times out (docs/gateway.md).
    deadline = time.monotonic() + 30
    while (processes := haproxy_processes(gateway["host"])) != 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert processes == 2, gateway["host"].run("ps -o pid,user,args -C haproxy").stdout


def haproxy_processes(host) -> int:
    return len(host.run("pgrep -x haproxy").stdout.split())


def test_four_concurrent_drafts_are_all_answered_in_italian(gateway):
    app = client(gateway)
    answers: list[str] = [""] * 4

    def draft(number: int) -> None:
        reply = app.chat.completions.create(model="mixtral", messages=QUESTION, max_tokens=30, temperature=0)
        answers[number] = reply.choices[0].message.content.strip()

    threads = [threading.Thread(target=draft, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [ITALIAN] * 4


def test_the_failover_drill_keeps_answering_while_vllm_is_stopped(gateway, session_lab):
    timing = ["-e", "llm_drill_before_s=5", "-e", "llm_drill_stopped_s=10", "-e", "llm_drill_after_s=8"]
    timing += ["-e", "llm_drill_concurrency=1"]  # two cores: the backup's engine and vLLM's restart share them
    run = session_lab.playbook("--limit", HOST, *timing, playbook="playbooks/drill.yml")
    assert run.returncode == 0, run.output[-4000:]
    with gateway["host"].sudo():
        summary = json.loads(gateway["host"].file("/var/lib/llm-toolkit/drill/summary.json").content_string)
    phases = summary["phases"]
    assert phases["before"]["by_backend"].get("vllm", 0) > 0, summary
    assert phases["during"]["by_backend"].get("ollama", 0) > 0, summary
    assert phases["after"]["by_backend"].get("vllm", 0) > 0, summary
    assert summary["unacceptable_failures"] == 0, summary
    assert phases["during"]["italian"] == phases["during"]["answered"], summary
    assert CANARY not in run.output and gateway["key"] not in run.output
