"""Integration tests run the real playbooks against lab hosts (scripts/lab).

The lab needs root and systemd-nspawn. Elsewhere these tests are skipped, except in CI
(CI=true) or with LAB_REQUIRED=1, where a lab that cannot start is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra

from scripts.lablib.core import COMMENT_PREFIX, bridge_name
from tests.standins.ollama import depot

REPO = Path(__file__).resolve().parents[2]
LAB_SCRIPT = REPO / "scripts" / "lab"
LAB_HOME = Path(os.environ.get("LAB_HOME", "/var/cache/llm-lab"))
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("LAB_REQUIRED") == "1"
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.M,
)
# testinfra and the playbooks use the Ansible of the interpreter running the tests, with our config.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
os.environ["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
# The session lab: two GPU hosts that pass preflight and one CPU host (its inventory opts in).
# Tests that need another profile switch a host with `scripts/lab gpu` and switch it back.
SESSION_LAB = "itest"
SESSION_PROFILES = {"itest1": "4x-A100-40GB", "itest2": "8x-H100-80GB", "itest3": "none"}

# The vLLM API key of every playbook run on the session lab (inventory/lab/group_vars reads it from
# LAB_VLLM_API_KEY): a canary that must never show in output, logs or process lists.
CANARY = "canary-key-7f3a9c"
# What every playbook run on the session lab sees, once `converged` has set it: the tiny model, the
# test depot and the key, so that no run disables a backend another module converged.
LAB_ENV: dict[str, str] = {"LAB_VLLM_API_KEY": CANARY}


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (scripts/lab deps)"
    return None


def require_lab() -> None:
    reason = lab_unavailable_reason()
    if reason and REQUIRED:
        pytest.fail(f"lab hosts cannot start here: {reason}")
    if reason:
        pytest.skip(reason)


def lab(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run scripts/lab for the named lab."""
    result = subprocess.run(
        [sys.executable, str(LAB_SCRIPT), "--name", name, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, LAB_HOME=str(LAB_HOME)),
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"scripts/lab --name {name} {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def processes_matching(*needles: str) -> list[tuple[int, str]]:
    """(PID, command line) of every process whose command line contains one of the needles."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # the process ended while we looked
            continue
        if any(needle in cmdline for needle in needles):
            found.append((int(proc.name), cmdline))
    return found


def leftovers(name: str) -> list[str]:
    """Everything a lab could leave on the machine: mounts, processes, cgroups, bridge, NAT rules."""
    found = []
    state = str(LAB_HOME / "labs" / name)
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        found += [f"mount {line.split()[4]}" for line in mountinfo if state in line]
    found += [f"process {pid}: {cmdline[:80]}" for pid, cmdline in processes_matching(f"--machine={name}", state)]
    found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob(f"*/llm-lab/{name}[0-9]*")]
    found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob(f"llm-lab/{name}[0-9]*")]
    # A host that escaped its own cgroup lands in a root-level payload cgroup that nspawn creates.
    found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob("*/payload")]
    found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob("payload")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found += [f"interface {line.split(':')[1].strip()}" for line in links.splitlines() if f": vb-{name}" in line]
    bridge = bridge_name(name)
    if subprocess.run(["ip", "link", "show", bridge], capture_output=True, check=False).returncode == 0:
        found.append(f"bridge {bridge}")
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True)
        found += [f"rule {rule}" for rule in rules.stdout.splitlines() if f"{COMMENT_PREFIX}{name}" in rule]
    return found


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return {
            match["host"]: {key: int(match[key]) for key in ("ok", "changed", "unreachable", "failed")}
            for match in RECAP.finditer(self.output)
        }


def run_playbook(*args: str, env: dict | None = None) -> PlaybookRun:
    """ansible-playbook from the repository root, with the test run's Ansible."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", **LAB_ENV, **(env or {})},
        check=False,
    )
    return PlaybookRun(result.returncode, result.stdout + result.stderr)


def make_lab(name: str) -> PlaybookRun:
    """The README's main command, `make lab`, exactly as a user runs it, for the named lab."""
    result = subprocess.run(
        ["make", "lab", f"LAB_NAME={name}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "LAB_VLLM_API_KEY": CANARY},
        check=False,
    )
    return PlaybookRun(result.returncode, result.stdout + result.stderr)


@dataclass
class Lab:
    name: str
    inventory: Path
    first: PlaybookRun
    hosts: list[str] = field(default_factory=lambda: sorted(SESSION_PROFILES))
    # What every playbook run on this lab sees besides LAB_ENV (a lab of its own has its own depot).
    env: dict[str, str] = field(default_factory=dict)

    def playbook(self, *args: str, playbook: str = "playbooks/site.yml", env: dict | None = None) -> PlaybookRun:
        return run_playbook("-i", str(self.inventory), playbook, *args, env={**self.env, **(env or {})})

    def host(self, name: str):
        return testinfra.get_host(f"ansible://{name}", ansible_inventory=str(self.inventory))

    def verify(self) -> subprocess.CompletedProcess:
        """Run the host verifiers (tests/verify) against every lab host, as `make lab` does."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(REPO / "tests" / "verify"),
                "-p",
                "no:cacheprovider",
                "-rA",
                "--hosts=ansible://llm_servers",
                f"--ansible-inventory={self.inventory}",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )


@dataclass
class Converged:
    """The main command's flow on the session lab: `make lab` on fresh hosts, `make lab` again, `--check`."""

    first: PlaybookRun
    second: PlaybookRun
    check: PlaybookRun
    depot: object  # the tests' depot server (depot.start_server), serving from here on


@pytest.fixture(scope="session")
def session_lab():
    """The README's main command on fresh hosts: `make lab` boots the three host kinds it documents
    (two simulated GPU hosts, one CPU host) and converges them with both backends, the .env, the smoke
    test and the verifiers. Shared by the whole run; always torn down, and checked to leave nothing."""
    require_lab()
    lab(SESSION_LAB, "down")
    try:
        first = make_lab(SESSION_LAB)
        status = json.loads(lab(SESSION_LAB, "status", "--json").stdout)
        assert status["healthy"], status
        assert sorted(node["host"] for node in status["hosts"]) == sorted(SESSION_PROFILES), status
        inventory = Path(lab(SESSION_LAB, "inventory").stdout.strip()).parent
        yield Lab(SESSION_LAB, inventory, first)
    finally:
        lab(SESSION_LAB, "down")
    assert leftovers(SESSION_LAB) == []


# The Ollama stand-in's depot (tests/standins/ollama) on the session lab's bridge: two releases of
# the stand-in, so that upgrades can be tested, and a registry with the tiny model. It serves on the
# port `make lab` serves its own depot on while it runs: the stand-in that make lab installed pulls
# from that address, so the tests' depot takes it over once make lab is done.
OLD_OLLAMA, NEW_OLLAMA = "0.32.15", "0.32.16"
BROKEN_OLLAMA = "0.32.17"  # a stand-in release whose server cannot start (its fault injector)
DEPOT_PORT = depot.DEFAULT_PORT


def start_tests_depot(name: str, tiny_model: Path):
    """The tests' depot on the named lab's bridge (make lab builds its own under the lab's name), serving;
    and what a playbook run on that lab needs to install from it and to serve the tiny model."""
    url = depot.lab_url(name, DEPOT_PORT)
    root = LAB_HOME / "depots" / f"{name}-tests"
    sums = depot.build_lab_depot(root, url, [OLD_OLLAMA, NEW_OLLAMA], cannot_serve=(BROKEN_OLLAMA,))
    server = depot.start_server(root, url)
    server.url = url
    return server, {"LAB_MODEL_DIR": str(tiny_model), "LAB_OLLAMA_DEPOT": url, **depot.sha256_env(sums)}


@pytest.fixture(scope="session")
def converged(session_lab, tiny_model):
    """The first `make lab` (it must pass), the second (it must change nothing, env and smoke included),
    then site.yml in check mode; from here on the tests' depot serves, and every playbook run sees both
    backends and the depot (LAB_ENV)."""
    first = session_lab.first
    assert first.returncode == 0, first.output[-6000:]
    second = make_lab(session_lab.name)
    server, env = start_tests_depot(session_lab.name, tiny_model)
    LAB_ENV.update(env)
    try:
        check = session_lab.playbook("--check")
        yield Converged(first, second, check, server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def depot_server(converged):
    return converged.depot


@pytest.fixture(scope="session")
def depot_url(depot_server):
    return depot_server.url


# A lab of one CPU host, converged by site.yml with both backends, the gateway, the .env, the smoke test
# and the verifiers, as the session lab's CPU host is: the modules that restart vLLM again and again
# (tests/integration/test_vllm.py) run there, so that `make test` runs them beside the session lab's.
CPU_LAB = "icpu"


@pytest.fixture(scope="session")
def cpu_lab(tiny_model):
    """The CPU lab, converged once (its first run must pass); its own depot of the Ollama stand-in
    serves on its bridge throughout. Always torn down, and checked to leave nothing."""
    require_lab()
    lab(CPU_LAB, "down")
    server = None
    try:
        lab(CPU_LAB, "up", "1", "--gpu", f"{CPU_LAB}1=none")
        inventory = Path(lab(CPU_LAB, "inventory").stdout.strip()).parent
        server, env = start_tests_depot(CPU_LAB, tiny_model)
        first = run_playbook("-i", str(inventory), "playbooks/site.yml", env=env)
        assert first.returncode == 0, first.output[-6000:]
        yield Lab(CPU_LAB, inventory, first, hosts=[f"{CPU_LAB}1"], env=env)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        lab(CPU_LAB, "down")
    assert leftovers(CPU_LAB) == []
