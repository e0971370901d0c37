"""The lab itself: hosts with a real systemd, their own cgroups and addresses, simulated GPUs."""

import json

from tests.integration.conftest import SESSION_LAB, SESSION_PROFILES, lab


def test_every_host_runs_systemd_as_pid1_and_reports_running(session_lab):
    for name in session_lab.hosts:
        host = session_lab.host(name)
        assert host.file("/proc/1/comm").content_string.strip() == "systemd"
        assert host.run("systemctl is-system-running").stdout.strip() == "running"
        assert host.run("systemd-detect-virt").stdout.strip() == "systemd-nspawn"
        assert host.run("hostname").stdout.strip() == name


def test_hosts_are_reachable_on_their_own_addresses_and_see_each_other(session_lab):
    status = json.loads(lab(SESSION_LAB, "status", "--json").stdout)
    addresses = {row["host"]: row["address"] for row in status["hosts"]}
    assert len(set(addresses.values())) == len(SESSION_PROFILES)
    first = session_lab.host("itest1")
    for name, address in addresses.items():
        assert address in session_lab.host(name).run("ip -4 -o addr show dev host0").stdout
        assert first.run(f"python3 -c \"import socket; socket.create_connection(('{address}', 22), 3)\"").rc == 0


def test_hosts_have_separate_cgroups_so_a_unit_stopped_on_one_keeps_running_on_another(session_lab):
    one, two = session_lab.host("itest1"), session_lab.host("itest2")
    for host in (one, two):
        host.run("systemd-run --unit=lab-isolation --quiet sleep 600")
    try:
        one.run("systemctl stop lab-isolation")
        assert one.run("systemctl is-active lab-isolation").stdout.strip() != "active"
        assert two.run("systemctl is-active lab-isolation").stdout.strip() == "active"
    finally:
        two.run("systemctl stop lab-isolation")


def test_gpu_profiles_give_each_host_its_simulated_nvidia_smi(session_lab):
    query = "nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader,nounits"
    a100 = session_lab.host("itest1").run(query)
    assert (a100.rc, a100.stdout) == (0, "NVIDIA A100-SXM4-40GB, 40960, 580.95.05, 8.0\n" * 4)
    h100 = session_lab.host("itest2").run(query)
    assert (h100.rc, h100.stdout) == (0, "NVIDIA H100 80GB HBM3, 81559, 575.57.08, 9.0\n" * 8)
    assert "CUDA Version: 12.9" in session_lab.host("itest2").run("nvidia-smi").stdout
    none = session_lab.host("itest3").run("nvidia-smi")
    assert none.rc == 127


def test_a_running_hosts_gpu_profile_can_be_switched(session_lab):
    host = session_lab.host("itest3")
    lab(SESSION_LAB, "gpu", "itest3", "driver-broken")
    try:
        broken = host.run("nvidia-smi")
        assert broken.rc != 0
        assert "couldn't communicate with the NVIDIA driver" in broken.stdout
        lab(SESSION_LAB, "gpu", "itest3", "driver-470")
        old = host.run("nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader")
        assert old.rc == 2
        assert old.stdout.startswith('Field "compute_cap" is not a valid field to query.')
        assert "CUDA Version: 11.4" in host.run("nvidia-smi").stdout
        status = json.loads(lab(SESSION_LAB, "status", "--json").stdout)
        assert {row["host"]: row["gpu_profile"] for row in status["hosts"]}["itest3"] == "driver-470"
    finally:
        lab(SESSION_LAB, "gpu", "itest3", "none")
    assert host.run("nvidia-smi").rc == 127


def test_up_again_keeps_the_running_hosts(session_lab):
    boot_ids = {
        name: session_lab.host(name).file("/proc/sys/kernel/random/boot_id").content_string
        for name in session_lab.hosts
    }
    gpu_args = [arg for host, profile in SESSION_PROFILES.items() for arg in ("--gpu", f"{host}={profile}")]
    result = lab(SESSION_LAB, "up", "3", *gpu_args)
    assert "(0 booted)" in result.stderr
    for name, boot_id in boot_ids.items():
        assert session_lab.host(name).file("/proc/sys/kernel/random/boot_id").content_string == boot_id
