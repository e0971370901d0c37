"""Lab lifecycle on a lab of its own: parallel boot, teardown, crash recovery, reboot from inside."""

import json
import os
import signal
import subprocess
import time

import pytest

from scripts.lablib.system import SSH_OPTIONS
from tests.integration.conftest import LAB_HOME, lab, leftovers, processes_matching, require_lab

NAME = "cycle"


@pytest.fixture
def cycle_lab():
    require_lab()
    lab(NAME, "down")
    try:
        yield
    finally:
        lab(NAME, "down")
    assert leftovers(NAME) == []


def status() -> dict:
    return json.loads(lab(NAME, "status", "--json", check=False).stdout)


def ssh(host_address: str, command: str) -> str:
    key = LAB_HOME / "keys" / "id_ed25519"
    result = subprocess.run(
        ["ssh", *SSH_OPTIONS, "-i", str(key), f"root@{host_address}", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip()


def test_three_hosts_boot_in_parallel_and_down_leaves_nothing(cycle_lab):
    lab(NAME, "up", "3")
    report = status()
    assert report["healthy"]
    assert [row["systemd"] for row in report["hosts"]] == ["running"] * 3
    assert leftovers(NAME) != []
    lab(NAME, "down")
    assert leftovers(NAME) == []
    assert not (LAB_HOME / "labs" / NAME).exists()
    again = lab(NAME, "down")
    assert "is down" in again.stderr


def test_up_recovers_a_host_whose_processes_died(cycle_lab):
    lab(NAME, "up", "2")
    node_dir = LAB_HOME / "labs" / NAME / "nodes" / f"{NAME}1"
    supervisor = int((node_dir / "supervisor.pid").read_text())
    nspawn = int((node_dir / "nspawn.pid").read_text())
    os.kill(supervisor, signal.SIGKILL)
    os.kill(nspawn, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while status()["hosts"][0]["container"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status()["hosts"][0]["container"] == "stopped"
    assert not status()["healthy"]
    result = lab(NAME, "up", "2")
    assert "(1 booted)" in result.stderr
    assert status()["healthy"]


def test_a_host_rebooted_from_inside_comes_back_with_its_files(cycle_lab):
    lab(NAME, "up", "1")
    address = status()["hosts"][0]["address"]
    before = ssh(address, "cat /proc/sys/kernel/random/boot_id; echo kept > /root/marker")
    ssh(address, "systemctl reboot")
    deadline = time.monotonic() + 60
    after = before
    while time.monotonic() < deadline:
        after = ssh(address, "systemctl is-system-running --wait >/dev/null; cat /proc/sys/kernel/random/boot_id")
        if after and after != before:
            break
        time.sleep(0.5)
    assert after and after != before, "the host did not come back with a new boot id"
    assert ssh(address, "cat /root/marker") == "kept"
    assert status()["healthy"]


def test_shrinking_the_lab_stops_the_extra_hosts(cycle_lab):
    lab(NAME, "up", "3")
    lab(NAME, "up", "1")
    assert [row["host"] for row in status()["hosts"]] == [f"{NAME}1"]
    assert sorted(p.name for p in (LAB_HOME / "labs" / NAME / "nodes").iterdir()) == [f"{NAME}1"]
    assert processes_matching(f"--machine={NAME}2 ", f"--machine={NAME}3 ") == []
    assert processes_matching(f"--machine={NAME}1 ") != []
