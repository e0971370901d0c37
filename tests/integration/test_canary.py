"""Canary secrets: a whole converge at -vvv with --diff, with a canary vLLM key and a canary Hugging
Face token (the CPU host downloads its model from the Hub stand-in with it), leaves neither anywhere:
not in the controller's output, not in any process's command line on a host during the run, not in
the hosts' journals (sudo logs there) or logs, not in a world-readable file under /etc, /var, /opt or
/tmp, not in the reports on the controller, not in the verifiers' output."""

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import CANARY, REPO
from tests.standins.hf_hub import hf_hub_standin
from tests.standins.ollama import depot

HF_TOKEN_CANARY = "hf_canary_token_5c1e9a"
HF_REPO = "toolkit-tests/tiny-mixtral-canary"
HUB_PORT = 8767
CPU_HOST = "itest3"
SNAPSHOT = "/root/canary-ps.txt"
# Every process's arguments, five times a second, for as long as the converge runs (short-lived
# processes escape a single snapshot; root-only file, outside the directories searched below).
SNAPSHOTTER = (
    f"systemd-run --unit=canary-ps --collect -p StandardOutput=file:{SNAPSHOT} "
    "/bin/sh -c 'while :; do ps -eo args; sleep 0.2; done'"
)


def split_on_the_command_line(secret: str) -> str:
    """A shell word that gives the secret without holding it whole on the command line."""
    half = len(secret) // 2
    return f"$(printf %s%s {secret[:half]} {secret[half:]})"


# The searches on the hosts never name the canaries whole on their own command lines (sudo logs
# every command it runs to the journal, and the search would find itself).
CANARIES_ON_HOST = f"K={split_on_the_command_line(CANARY)}; T={split_on_the_command_line(HF_TOKEN_CANARY)}; "
WORLD_READABLE_HITS = (
    CANARIES_ON_HOST + "find /etc /var /opt /tmp -xdev -type f -perm -o=r -size -64M -print0 2>/dev/null"
    ' | xargs -0 -r grep -l -F -e "$K" -e "$T" 2>/dev/null || true'
)


@pytest.fixture(scope="module")
def hub(session_lab, tiny_model):
    address = urlsplit(depot.lab_url(session_lab.name, HUB_PORT))
    server = hf_hub_standin.start(
        (address.hostname, address.port), [hf_hub_standin.Repo(HF_REPO, tiny_model, HF_TOKEN_CANARY)]
    )
    server.url = f"http://{address.hostname}:{address.port}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def canary_run(converged, session_lab, tiny_model, hub):
    """site.yml on every host at -vvv --diff while each host records its process list; then the CPU
    host goes back to its local model."""
    hosts = {name: session_lab.host(name) for name in session_lab.hosts}
    for host in hosts.values():
        host.run(f"rm -f {SNAPSHOT}; systemctl stop canary-ps 2>/dev/null; {SNAPSHOTTER}")
    source = {
        "vllm_model_source": "huggingface",
        "vllm_hf_repo": HF_REPO,
        "vllm_hf_revision": hub.repos[HF_REPO].commit,
        "vllm_hf_endpoint": hub.url,
        "vllm_hf_token": HF_TOKEN_CANARY,
    }
    try:
        # Every host switches its model at once: the operator allows it (a plain run otherwise refuses
        # more serving hosts than llm_upgrade_serial, and points to playbooks/upgrade.yml).
        run = session_lab.playbook("-vvv", "--diff", "-e", json.dumps({**source, "llm_upgrade_serial": len(hosts)}))
    finally:
        snapshots = {}
        for name, host in hosts.items():
            host.run("systemctl stop canary-ps")
            snapshots[name] = host.run(f"cat {SNAPSHOT}; rm -f {SNAPSHOT}").stdout
        restored = session_lab.playbook("--limit", CPU_HOST, "--tags", "phase2")
    assert restored.returncode == 0, restored.output[-3000:]
    return run, snapshots, hosts


def test_the_canary_converge_passes_and_downloads_with_the_token(canary_run):
    run, _, hosts = canary_run
    assert run.returncode == 0, run.output[-4000:]
    assert (
        f"/var/lib/vllm/models/{HF_REPO.replace('/', '--')}"
        in hosts[CPU_HOST].run("ls -d /var/lib/vllm/models/*").stdout
    )


def test_no_canary_in_the_controllers_output(canary_run):
    run, _, _ = canary_run
    assert "ESTABLISH SSH CONNECTION" in run.output  # it really ran at -vvv
    assert CANARY not in run.output
    assert HF_TOKEN_CANARY not in run.output


def test_no_canary_on_any_command_line_during_the_run(canary_run):
    _, snapshots, _ = canary_run
    for name, snapshot in snapshots.items():
        assert snapshot.count("ps -eo args") > 10, f"{name}: the process snapshots did not run"
        offending = [line for line in snapshot.splitlines() if CANARY in line or HF_TOKEN_CANARY in line]
        assert offending == [], f"{name}: {len(offending)} process command line(s) held a canary"


def test_no_canary_in_the_journals_or_logs_of_any_host(canary_run):
    _, _, hosts = canary_run
    for name, host in hosts.items():
        journal = host.run(CANARIES_ON_HOST + 'journalctl -o export --no-pager | grep -a -c -F -e "$K" -e "$T"')
        assert journal.stdout.strip() == "0", f"{name}: the journal holds a canary"
        logs = host.run(CANARIES_ON_HOST + 'grep -r -a -l -F -e "$K" -e "$T" /var/log 2>/dev/null || true')
        assert logs.stdout.strip() == "", f"{name}: logs holding a canary: {logs.stdout.split()}"
        assert host.run("journalctl --no-pager -t sudo -o cat | grep -c 'COMMAND=' || true").stdout.strip() != "0", (
            f"{name}: sudo logs nothing to the journal, so the sudo log was not searched"
        )


def test_no_canary_in_a_world_readable_file_of_any_host(canary_run):
    _, _, hosts = canary_run
    for name, host in hosts.items():
        found = host.run(WORLD_READABLE_HITS).stdout.split()
        assert found == [], f"{name}: world-readable files holding a canary: {found}"


def test_no_canary_in_the_reports_or_the_verifiers_output(canary_run, session_lab):
    reports = [path for path in (REPO / "reports").rglob("*") if path.is_file()]
    assert reports, "no report was written on the controller"
    for path in reports:
        content = Path(path).read_bytes()
        assert CANARY.encode() not in content, path
        assert HF_TOKEN_CANARY.encode() not in content, path
    verified = session_lab.verify()
    assert CANARY not in verified.stdout + verified.stderr
    assert HF_TOKEN_CANARY not in verified.stdout + verified.stderr
