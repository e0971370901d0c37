"""Fleet mode on a lab of its own: two serving hosts (llm_servers, Ollama behind each host's gateway,
bound on the host's lab address with TLS from the controller's private CA) and a fleet gateway
(llm_gateways) that balances over them and is the app server too (llm_apps), all converged by
site.yml. Through the fleet gateway with the official `openai` client: both hosts answer in Italian;
each host's gateway serves verified TLS on the network and wants its own key; the fleet drill: one
host's backends stop under a stream of requests and the other host answers every one, and it is back
in rotation once started; the app server's .env names the fleet gateway and its key; a second run
and a check run change nothing; playbooks/upgrade.yml moves Ollama's release one host at a time under
that stream, and a batch that fails stops the rollout; playbooks/decommission.yml takes one host out
for good under that stream and leaves nothing of the toolkit on it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import requests
import testinfra
import yaml
from dotenv import dotenv_values

from llm_toolkit.smoke_test import PROMPT, detect_language
from tests.integration.conftest import NEW_OLLAMA, OLD_OLLAMA, REPO, PlaybookRun, lab, leftovers, require_lab
from tests.integration.test_gateway import gateway_tunnel
from tests.integration.test_ollama import api
from tests.verify.test_gateway import servers

LAB = "ifleet"
SERVERS, FLEET = [f"{LAB}1", f"{LAB}2"], f"{LAB}3"
KEY_FILE = "/etc/llm-toolkit/secrets/gateway_api_key"
# The serving hosts' gateways on their lab address, with TLS from the controller's private CA.
MEMBER_SETTINGS = {"llm_gateway_host": "{{ ansible_host }}", "llm_gateway_tls_ca": "private"}


def converge(inventory: Path, *args: str, playbook: str = "playbooks/site.yml") -> PlaybookRun:
    """site.yml as `make lab` runs it: with the Ollama stand-in's depot serving on this lab's bridge (two
    releases of the stand-in, for the upgrade)."""
    versions = ["--version", OLD_OLLAMA, "--version", NEW_OLLAMA]
    depot = [sys.executable, "-m", "tests.standins.ollama.depot", "lab", *versions, "--"]
    command = [*depot, "ansible-playbook", "-i", str(inventory), playbook, *args]
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the venv's ansible-playbook
    env = {**os.environ, "LAB_NAME": LAB, "ANSIBLE_NOCOLOR": "1", "PATH": path}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    return PlaybookRun(result.returncode, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def fleet():
    require_lab()
    lab(LAB, "down")
    tunnel = None
    try:
        profiles = [arg for host in [*SERVERS, FLEET] for arg in ("--gpu", f"{host}=none")]
        groups = ["--group", f"{FLEET}=llm_gateways", "--group", f"{FLEET}=llm_apps"]  # the app server's
        lab(LAB, "up", "3", *profiles, *groups)
        inventory = Path(lab(LAB, "inventory").stdout.strip()).parent
        # host_vars of this lab's own (its group_vars are the repository's, shared by every lab).
        (inventory / "host_vars").mkdir()
        for name in SERVERS:
            (inventory / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump(MEMBER_SETTINGS))
        first = converge(inventory)
        assert first.returncode == 0, first.output[-6000:]
        hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]
        address = hosts["children"]["llm_gateways"]["hosts"][FLEET]["ansible_host"]
        tunnel, port = gateway_tunnel(address, hosts["vars"])
        host = {
            name: testinfra.get_host(f"ansible://{name}", ansible_inventory=str(inventory))
            for name in [*SERVERS, FLEET]
        }
        with host[FLEET].sudo():
            key = host[FLEET].file(KEY_FILE).content_string.strip()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(url + "/health") == 200, "the fleet gateway's /health through the tunnel")
        # A converge ends with the fleet's checks under way: both hosts must pass theirs first.
        deadline = time.monotonic() + 60
        while (up := in_rotation(host[FLEET])) != set(SERVERS):
            assert time.monotonic() < deadline, f"only {sorted(up)} in the fleet's rotation: {states(host[FLEET])}"
            time.sleep(1)
        members = {name: hosts["children"]["llm_servers"]["hosts"][name]["ansible_host"] for name in SERVERS}
        yield {
            "url": url,
            "key": key,
            "host": host,
            "inventory": inventory,
            "members": members,
            "ca": inventory / "credentials" / "gateway-ca" / "ca.pem",
        }
    finally:
        if tunnel:
            tunnel.terminate()
            tunnel.wait(timeout=10)
        lab(LAB, "down")
    assert leftovers(LAB) == []


def states(fleet_host) -> dict[str, str]:
    """Each host's state in the fleet gateway, and why (HAProxy's last check)."""
    rows = servers(fleet_host, {"master_socket": "/run/haproxy/master.sock"})
    return {name: f"{row['status']} ({row.get('check_status')}: {row.get('last_chk')})" for name, row in rows.items()}


def in_rotation(fleet_host) -> set[str]:
    return {name for name, state in states(fleet_host).items() if state.startswith("UP ")}


def get(url: str, **kwargs) -> int:
    try:
        return requests.get(url, timeout=5, **kwargs).status_code
    except requests.RequestException:
        return 0


def wait_until(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def ask(fleet) -> tuple[str, str]:
    """One chat through the fleet gateway: (the host that answered, the answer)."""
    app = openai.OpenAI(base_url=fleet["url"] + "/v1", api_key=fleet["key"], max_retries=0, timeout=300)
    raw = app.chat.completions.with_raw_response.create(
        model="mixtral", messages=[{"role": "user", "content": PROMPT}], max_tokens=40, temperature=0
    )
    return raw.headers["X-LLM-Host"], raw.parse().choices[0].message.content


def test_both_hosts_answer_in_italian_through_the_fleet_gateway(fleet):
    answers = [ask(fleet) for _ in range(6)]
    assert {host for host, _ in answers} == set(SERVERS), states(fleet["host"][FLEET])
    assert {detect_language(text)[0] for _, text in answers} == {"it"}, answers


def test_each_hosts_gateway_serves_verified_tls_on_its_address_and_wants_its_own_key(fleet):
    for name, address in fleet["members"].items():
        base = f"https://{address}:8080"
        assert get(base + "/health", verify=str(fleet["ca"])) == 200, name
        assert get(base + "/v1/models", verify=str(fleet["ca"])) == 401, name
        fleet_key = {"Authorization": f"Bearer {fleet['key']}"}
        assert get(base + "/v1/models", verify=str(fleet["ca"]), headers=fleet_key) == 401, name
        assert get(f"http://{address}:8080/health") == 0, f"{name} answers plain HTTP"
        assert get(base + "/health") == 0, f"{name}'s certificate passes without the private CA"


@contextlib.contextmanager
def streaming(fleet):
    """Chats through the fleet gateway one after another until the block ends: (host, answer) or an error."""
    results: list[tuple[str, str] | str] = []
    running = threading.Event()
    running.set()

    def stream() -> None:
        while running.is_set():
            try:
                results.append(ask(fleet))
            except openai.APIError as error:
                results.append(f"error: {error}")

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        yield results
    finally:
        running.clear()
        sender.join(timeout=320)


def test_the_fleet_drill_keeps_answering_while_one_hosts_backends_are_stopped(fleet):
    stopped, other = SERVERS
    with streaming(fleet) as results:
        time.sleep(3)
        assert fleet["host"][stopped].run("systemctl stop ollama.service").rc == 0
        during = len(results)
        time.sleep(10)
        after_stop = results[during:]  # the first was under way as the stop returned
        assert fleet["host"][stopped].run("systemctl start ollama.service").rc == 0
        # Back once Ollama has loaded its model and both gateways' checks have passed: a minute or
        # more on a busy two-core machine; the test is that no request fails meanwhile.
        wait_until(
            lambda: stopped in {r[0] for r in results[-4:] if isinstance(r, tuple)}, f"{stopped} back", timeout_s=240
        )
    failed = [result for result in results if isinstance(result, str)]
    assert failed == [], failed[:3]
    assert after_stop and {host for host, _ in after_stop[1:]} == {other}, after_stop


def test_the_app_servers_env_points_at_the_fleet_gateway_with_its_key(fleet):
    host = fleet["host"][FLEET]
    with host.sudo():
        env = host.file("/etc/llm-toolkit/app.env")
        assert (env.user, env.mode) == ("root", 0o600)
        values = dotenv_values(stream=io.StringIO(env.content_string))
    assert values == {
        "LLM_BASE_URL": "http://127.0.0.1:8080/v1",
        "LLM_API_KEY": fleet["key"],
        "LLM_MODEL": "mixtral",
        "LLM_TIMEOUT_S": "60",
    }


def verify_fleet_gateway(fleet) -> dict:
    command = [sys.executable, "scripts/verify.py", "--inventory", str(fleet["inventory"]), "--hosts", FLEET, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.stdout.startswith("{"), result.stderr[-2000:]
    return {**json.loads(result.stdout), "rc": result.returncode}


def test_the_fleet_gateways_verifiers_report_a_host_gateway_that_stopped(fleet):
    member = fleet["host"][SERVERS[0]]
    assert member.run("systemctl stop haproxy.service").rc == 0
    try:
        wait_until(lambda: SERVERS[0] not in in_rotation(fleet["host"][FLEET]), f"{SERVERS[0]} out of rotation")
        assert get(fleet["url"] + "/health") == 200  # the other host serves
        summary = verify_fleet_gateway(fleet)
        assert summary["rc"] == 1, summary
        failed = {failure["check"] for failure in summary["hosts"][FLEET]["failed"]}
        assert failed == {
            "test_gateway::test_every_server_is_in_rotation_or_drained_for_a_reason",
            "test_gateway::test_each_backup_answers_through_the_gateways_route",
        }, summary["hosts"][FLEET]["failed"]
    finally:
        assert member.run("systemctl start haproxy.service").rc == 0
    wait_until(lambda: verify_fleet_gateway(fleet)["rc"] == 0, "the fleet gateway's verifiers green again")


def test_a_second_run_and_a_check_run_change_nothing(fleet):
    for run in (converge(fleet["inventory"]), converge(fleet["inventory"], "--check")):
        assert run.returncode == 0, run.output[-4000:]
        assert {host: counts["changed"] for host, counts in run.recap.items()} == dict.fromkeys(
            [*SERVERS, FLEET, "localhost"], 0
        ), run.output[-4000:]


def rotation_steps(output: str) -> list[tuple[str, str]]:
    """The fleet gateway drains and enables of an upgrade's output, in order: (drain|enable, host)."""
    steps, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif found := re.match(r"^(?:ok|changed): \[(\S+) -> ", line):
            for step in ("drain", "enable"):
                if f" : {step} | " in task:
                    steps.append((step, found.group(1)))
    return steps


def ollama_version(host) -> str:
    return api(host, "/api/version")["version"]


def test_an_upgrade_goes_one_host_at_a_time_and_a_failed_batch_stops_the_rollout(fleet):
    """Issue 15's fleet proof with playbooks/upgrade.yml (one host a batch) and Ollama's release: a rollout
    whose first batch fails (the new archive fails its checksum on the first host) stops there: the
    second host is not touched, and the first keeps serving its release, back in rotation. Then the
    upgrade moves both to the new release under a stream of chats through the fleet gateway, draining
    each host there while it switches: no chat fails, and never are both hosts out of rotation. Near
    the end of the module: it leaves the hosts on the new release."""
    first, second = SERVERS
    host_vars = fleet["inventory"] / "host_vars" / f"{first}.yml"
    settings = host_vars.read_text()
    host_vars.write_text(settings + f"ollama_archive_sha256: '{'0' * 64}'\n")
    try:
        stopped = converge(fleet["inventory"], "-e", f"ollama_version={NEW_OLLAMA}", playbook="playbooks/upgrade.yml")
    finally:
        host_vars.write_text(settings)
    assert stopped.returncode != 0 and "did not match" in stopped.output, stopped.output[-4000:]
    assert second not in stopped.recap, stopped.output[-4000:]  # the rollout stopped before its batch
    assert rotation_steps(stopped.output) == [("drain", first), ("enable", first)], stopped.output[-4000:]
    assert [ollama_version(fleet["host"][name]) for name in SERVERS] == [OLD_OLLAMA, OLD_OLLAMA]
    wait_until(lambda: in_rotation(fleet["host"][FLEET]) == set(SERVERS), "both hosts back in rotation", 120)

    with streaming(fleet) as results:
        upgraded = converge(fleet["inventory"], "-e", f"ollama_version={NEW_OLLAMA}", playbook="playbooks/upgrade.yml")
        time.sleep(3)
    assert upgraded.returncode == 0, upgraded.output[-4000:]
    assert rotation_steps(upgraded.output) == [
        ("drain", first), ("enable", first), ("drain", second), ("enable", second)
    ], upgraded.output[-4000:]  # fmt: skip
    assert [ollama_version(fleet["host"][name]) for name in SERVERS] == [NEW_OLLAMA, NEW_OLLAMA]
    failed = [result for result in results if isinstance(result, str)]
    print(f"fleet upgrade under load: {len(results)} sent, {len(results) - len(failed)} answered")
    assert failed == [], failed[:3]
    assert len(results) >= 4 and {r[0] for r in results if isinstance(r, tuple)} == set(SERVERS), results


# What the toolkit puts on a serving host, gone after playbooks/decommission.yml.
TOOLKIT_PATHS = [
    "/etc/llm-toolkit",
    "/etc/haproxy/haproxy.cfg",
    "/etc/haproxy/llm-gateway.pem",
    "/etc/systemd/system/ollama.service",
    "/etc/systemd/system/ollama.service.d",
    "/etc/systemd/system/haproxy.service.d/llm-gateway.conf",
    "/etc/systemd/system/llm-firewall.service",
    "/opt/ollama",
    "/usr/local/bin/ollama",
    "/var/lib/ollama",
    "/opt/llm-toolkit",
    "/var/lib/llm-toolkit",
    "/etc/ansible/facts.d/llm_ollama.fact",
    "/etc/ansible/facts.d/llm_gateway.fact",
    "/etc/ansible/facts.d/llm_toolkit.fact",
]


def test_decommission_takes_one_host_out_for_good_and_leaves_nothing_of_the_toolkit(fleet):
    """playbooks/decommission.yml refuses without hosts named; then, under a stream of chats through the
    fleet gateway, it drains one host there for good (no chat fails, the other host answers them all),
    stops its services and removes what the toolkit put on it (secrets overwritten first); a second run
    changes nothing. Last in the module: the host is gone."""
    gone, stays = SERVERS[1], SERVERS[0]
    refused = converge(fleet["inventory"], playbook="playbooks/decommission.yml")
    assert refused.returncode != 0
    assert "localhost: llm_decommission_hosts=; expected a comma-separated list of llm_servers hosts" in refused.output
    assert gone not in refused.recap, refused.output[-3000:]

    with streaming(fleet) as results:
        run = converge(
            fleet["inventory"], "-e", f"llm_decommission_hosts={gone}", playbook="playbooks/decommission.yml"
        )
        time.sleep(3)
    assert run.returncode == 0, run.output[-4000:]
    assert stays not in run.recap, run.output[-3000:]
    failed = [result for result in results if isinstance(result, str)]
    assert failed == [], failed[:3]
    assert {r[0] for r in results[-3:] if isinstance(r, tuple)} == {stays}, results[-3:]
    assert in_rotation(fleet["host"][FLEET]) == {stays}, states(fleet["host"][FLEET])

    host = fleet["host"][gone]
    with host.sudo():
        for unit in ("ollama.service", "haproxy.service", "llm-firewall.service"):
            assert host.run(f"systemctl is-active {unit}").stdout.strip() != "active", unit
            assert host.run(f"systemctl is-enabled {unit}").stdout.strip() != "enabled", unit
        left = [path for path in TOOLKIT_PATHS if host.file(path).exists]
        assert left == [], left
        assert "llm_firewall" not in host.run("nft list tables").stdout
        assert host.run("getent passwd ollama").rc != 0

    again = converge(fleet["inventory"], "-e", f"llm_decommission_hosts={gone}", playbook="playbooks/decommission.yml")
    assert again.returncode == 0, again.output[-4000:]
    assert again.recap[gone]["changed"] == 0, again.output[-4000:]
