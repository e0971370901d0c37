"""Side effects of the lab: preflight checks, network, cgroups, overlays, node processes.

Processes are only ever signalled by the PIDs the lab recorded, after checking that the
PID still runs our command line for that node (a PID can be reused after a crash).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .core import (
    CGROUP_GROUP,
    NO_GPU_PROFILE,
    LabError,
    LabSpec,
    Node,
    check_free_space,
    iptables_rules,
    network_unit,
    nspawn_command,
    overlay_lower_dirs,
    overlay_options,
    rules_to_delete,
)

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests" / "standins"
SUPERVISOR = Path(__file__).resolve().with_name("supervisor.sh")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SSH_OPTIONS = [
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=3",
]


def run(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LabError(
            f"{' '.join(command[:3])} failed with exit code {result.returncode}: "
            f"{detail[-1] if detail else 'no output'}"
        )
    return result


# --- preflight: nothing on the machine changes before these pass -------------------------


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise LabError(
            f"scripts/lab {command} must run as root (the lab mounts overlays, creates a bridge and "
            "NAT rules, and boots containers); fix: run it with sudo or as root"
        )


def preflight(lab_home: Path, minimum_free_mib: int, need_image_tools: bool) -> None:
    """Checks before `up` or `image` change anything (the caller checked root already)."""
    tools = {
        "systemd-nspawn": "systemd-container",
        "iptables": "iptables",
        "ip": "iproute2",
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
    }
    if need_image_tools:
        tools["debootstrap"] = "debootstrap"
    missing = sorted({package for tool, package in tools.items() if shutil.which(tool) is None})
    if missing:
        absent = [tool for tool in tools if shutil.which(tool) is None]
        raise LabError(
            f"{', '.join(absent)} not found on PATH; the lab needs them; fix: scripts/lab deps "
            f"(apt-get install {' '.join(missing)})"
        )
    if not cgroup_bases():
        raise LabError(
            f"no writable cgroup hierarchy under {CGROUP_ROOT}; the lab needs one to give each host "
            "its own cgroup; fix: run on a Linux host with cgroups mounted"
        )
    existing = lab_home
    while not existing.exists():
        existing = existing.parent
    stats = os.statvfs(existing)
    check_free_space(lab_home, stats.f_bavail * stats.f_frsize // 2**20, minimum_free_mib)


def systemd_is_pid1() -> bool:
    return Path("/run/systemd/system").is_dir()


def cgroup_bases() -> list[Path]:
    """Hierarchies in which each node gets a cgroup of its own (hybrid or unified host)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return [CGROUP_ROOT / sub for sub in ("systemd", "unified") if (CGROUP_ROOT / sub / "cgroup.procs").exists()]


def node_cgroups(node: str) -> list[Path]:
    return [base / CGROUP_GROUP / node for base in cgroup_bases()]


# --- ssh key ---------------------------------------------------------------------------------


# iptables waits for the xtables lock instead of failing when another lab changes its rules at once.
IPTABLES = ["iptables", "-w"]


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on path (made with its directory when missing), held while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def shared_lock(lab_home: Path):
    """Held while one lab makes what every lab on the machine shares (the ssh key, the image): labs
    that come up at the same time (the test suite runs two at once) would build them twice in one place."""
    return file_lock(lab_home / ".shared.lock")


def ensure_key(lab_home: Path) -> Path:
    key = lab_home / "keys" / "id_ed25519"
    if key.exists():
        return key
    with shared_lock(lab_home):
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llm-lab", "-f", str(key)])
    return key


# --- network ---------------------------------------------------------------------------------


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def subnet_in_use_elsewhere(spec: LabSpec) -> str | None:
    """The interface that already holds an address in the lab's subnet, if it is not ours."""
    for line in run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
        fields = line.split()
        interface, address = fields[1], fields[3].split("/")[0]
        if interface != spec.bridge and _in_subnet(address, spec):
            return interface
    return None


def _in_subnet(address: str, spec: LabSpec) -> bool:
    return ipaddress.IPv4Address(address) in spec.network


def network_up(spec: LabSpec) -> None:
    if not link_exists(spec.bridge):
        run(["ip", "link", "add", spec.bridge, "type", "bridge"])
    run(["ip", "addr", "replace", f"{spec.gateway}/{spec.network.prefixlen}", "dev", spec.bridge])
    run(["ip", "link", "set", spec.bridge, "up"])
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    apply_nat(spec)


def apply_nat(spec: LabSpec) -> None:
    """Make the lab's tagged rules those of spec.nat: the new ones first, then the old ones go.

    Ours go first in their chains, so that no other rule on the machine decides for the lab.
    """
    for table, rule in iptables_rules(spec):
        if not _rule_present(table, rule):
            run([*IPTABLES, "-t", table, "-I", rule[0], "1", *rule[1:]])
    for table, rule in iptables_rules(spec, nat=not spec.nat):
        while _rule_present(table, rule):
            run([*IPTABLES, "-t", table, "-D", *rule])


def _rule_present(table: str, rule: list[str]) -> bool:
    return run([*IPTABLES, "-t", table, "-C", *rule], check=False).returncode == 0


def network_down(spec: LabSpec) -> None:
    for table in ("nat", "filter"):
        listing = run([*IPTABLES, "-t", table, "-S"]).stdout.splitlines()
        for deletion in rules_to_delete(listing, spec.comment):
            run([*IPTABLES, "-t", table, *deletion], check=False)
    if link_exists(spec.bridge):
        run(["ip", "link", "del", spec.bridge])


def leftover_rules(spec: LabSpec) -> list[str]:
    found = []
    for table in ("nat", "filter"):
        listing = run([*IPTABLES, "-t", table, "-S"]).stdout.splitlines()
        found += [f"-t {table} -A {' '.join(rule[1:])}" for rule in rules_to_delete(listing, spec.comment)]
    return found


# --- nodes -----------------------------------------------------------------------------------


class NodePaths:
    def __init__(self, state_dir: Path, node: str):
        self.dir = state_dir / "nodes" / node
        self.root = self.dir / "root"
        self.upper = self.dir / "upper"
        self.work = self.dir / "work"
        self.network_file = self.dir / "host0.network"
        self.console = self.dir / "console.log"
        self.supervisor_pid = self.dir / "supervisor.pid"
        self.nspawn_pid = self.dir / "nspawn.pid"
        self.stopping = self.dir / "stopping"
        self.supervisor_rc = self.dir / "supervisor.rc"


def _pid_runs(pid_file: Path, needle: str) -> int | None:
    """The PID in pid_file if that process is alive and its command line contains needle."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if needle in cmdline else None


def nspawn_pid(paths: NodePaths, node: str) -> int | None:
    return _pid_runs(paths.nspawn_pid, f"--machine={node} ")


def supervisor_pid(paths: NodePaths) -> int | None:
    # Matched by file name, not full path: a lab may be stopped from another clone than started it.
    return _pid_runs(paths.supervisor_pid, f"/{SUPERVISOR.name} {paths.dir} ")


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return any(line.split()[4] == target for line in mountinfo)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(prefix)]


def lower_dirs_in_use() -> set[str]:
    """Directories some overlay on this machine has as a lower layer (images and layers in use)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return overlay_lower_dirs(mountinfo.read())


def start_node(
    state_dir: Path,
    spec: LabSpec,
    node: Node,
    image: Path,
    key: Path,
    layer: Path | None = None,
    extra_binds: tuple[str, ...] = (),
) -> None:
    """Boot a node on the image (and a saved layer above it, if any) under its own upper directory."""
    paths = NodePaths(state_dir, node.name)
    veth = f"vb-{node.name}"
    if link_exists(veth):
        raise LabError(
            f"network interface {veth} already exists, so host {node.name} of an earlier run still runs outside "
            f"the lab's control; expected no such interface; fix: find its processes with lsns -t net and stop them"
        )
    for directory in (paths.root, paths.upper, paths.work):
        directory.mkdir(parents=True, exist_ok=True)
    paths.stopping.unlink(missing_ok=True)
    paths.supervisor_rc.unlink(missing_ok=True)
    paths.console.write_text("")
    paths.network_file.write_text(network_unit(node.address, spec.network.prefixlen, spec.gateway))
    if not is_mounted(paths.root):
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                overlay_options([layer, image] if layer else [image], paths.upper, paths.work),
                str(paths.root),
            ]
        )
    set_gpu_profile(paths, node.gpu_profile)
    keep_unit = not systemd_is_pid1()
    cgroups = node_cgroups(node.name) if keep_unit else []
    for cgroup in cgroups:
        cgroup.mkdir(parents=True, exist_ok=True)
    venvs = key.parents[1] / "venvs"
    venvs.mkdir(parents=True, exist_ok=True)
    command = nspawn_command(
        node,
        paths.root,
        spec.bridge,
        paths.network_file,
        key.with_suffix(".pub"),
        STANDINS,
        keep_unit,
        local_wheels(),
        venvs,
        extra_binds,
    )
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
    with open(paths.console, "ab") as console:
        supervisor = subprocess.Popen(
            [str(SUPERVISOR), str(paths.dir), ":".join(map(str, cgroups)), *command],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=console,
            start_new_session=True,
            env=env,
        )
    paths.supervisor_pid.write_text(f"{supervisor.pid}\n")


def local_wheels() -> Path | None:
    """The wheel directory pip on this machine finds local wheels in ($LAB_WHEELS, else PIP_FIND_LINKS)."""
    for candidate in [os.environ.get("LAB_WHEELS", ""), *os.environ.get("PIP_FIND_LINKS", "").split()]:
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def set_gpu_profile(paths: NodePaths, profile: str) -> None:
    """Give a node the fake nvidia-smi of a profile, or none at all; works on a running node."""
    binary = paths.root / "usr/bin/nvidia-smi"
    (paths.root / "etc/lab-gpu-profile").write_text(f"{profile}\n")
    if profile == NO_GPU_PROFILE:
        binary.unlink(missing_ok=True)
    elif not binary.is_symlink():
        binary.unlink(missing_ok=True)
        binary.symlink_to("/opt/lab-standins/nvidia_smi/nvidia-smi")


def ssh(node: Node, key: Path, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", *SSH_OPTIONS, "-i", str(key), f"root@{node.address}", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_node(state_dir: Path, node: Node, key: Path, timeout: float) -> None:
    """Wait until the node's sshd answers and systemd reports `running`."""
    paths = NodePaths(state_dir, node.name)
    deadline = time.monotonic() + timeout
    state = "not reachable over ssh"
    while time.monotonic() < deadline:
        # Right after its start, a supervisor's command line can still read empty (the kernel has not
        # finished setting up the new program): only a supervisor missing twice in a row has exited.
        if supervisor_pid(paths) is None and not _sleep_then(lambda: supervisor_pid(paths) is not None, 0.5):
            rc = paths.supervisor_rc.read_text().strip() if paths.supervisor_rc.exists() else "unknown"
            state = f"its supervisor exited (code {rc})"
            break
        try:
            result = ssh(node, key, "systemctl is-system-running --wait", timeout=deadline - time.monotonic())
        except subprocess.TimeoutExpired:
            break
        if result.returncode == 255:
            time.sleep(0.3)
            continue
        state = result.stdout.strip()
        if state == "running":
            return
        failed = ssh(node, key, "systemctl --failed --no-legend --plain | cut -d' ' -f1").stdout.split()
        state = f"systemd is {state!r} (failed units: {', '.join(failed) or 'none'})"
        break
    tail = " | ".join(paths.console.read_text(errors="replace").strip().splitlines()[-3:])
    raise LabError(
        f"host {node.name} ({node.address}) did not come up: {state}; console: {tail or 'empty'}; "
        "fix: see the console log in the lab's state directory, then scripts/lab down && scripts/lab up"
    )


def _sleep_then(check, seconds: float) -> bool:
    time.sleep(seconds)
    return check()


def stop_node(state_dir: Path, node_name: str, timeout: float = 30, keep_upper: Path | None = None) -> None:
    """Power the node off cleanly, then remove every trace of it (processes, cgroups, mount, files).

    keep_upper: move the node's upper directory (its changes to the image) there first.
    """
    paths = NodePaths(state_dir, node_name)
    if paths.dir.exists():
        paths.stopping.write_text("")
    pid = nspawn_pid(paths, node_name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        nspawn_pid(paths, node_name) or supervisor_pid(paths) or _cgroup_pids(node_name)
    ):
        time.sleep(0.1)
    for leftover in (nspawn_pid(paths, node_name), supervisor_pid(paths), *_cgroup_pids(node_name)):
        if leftover:
            with contextlib.suppress(ProcessLookupError):  # it ended between the listing and the kill
                os.kill(leftover, signal.SIGKILL)
    _wait_gone(node_name)
    for cgroup in node_cgroups(node_name):
        _remove_cgroup(cgroup)
    for parent in {cgroup.parent for cgroup in node_cgroups(node_name)}:
        # Shared by every lab: whoever stops the last host removes it; others may race us to it.
        with contextlib.suppress(OSError):
            parent.rmdir()
    if is_mounted(paths.root):
        run(["umount", str(paths.root)])
    if keep_upper is not None:
        paths.upper.rename(keep_upper)
    if paths.dir.exists():
        shutil.rmtree(paths.dir)


def _cgroup_pids(node_name: str) -> list[int]:
    pids: list[int] = []
    for cgroup in node_cgroups(node_name):
        if cgroup.exists():
            for procs in cgroup.rglob("cgroup.procs"):
                pids += [int(pid) for pid in procs.read_text().split()]
    return pids


def _wait_gone(node_name: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _cgroup_pids(node_name) and time.monotonic() < deadline:
        time.sleep(0.1)


def _remove_cgroup(cgroup: Path) -> None:
    if not cgroup.exists():
        return
    for child in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        child.rmdir()
    cgroup.rmdir()


def node_running(state_dir: Path, node_name: str) -> bool:
    paths = NodePaths(state_dir, node_name)
    return nspawn_pid(paths, node_name) is not None and is_mounted(paths.root)


def in_parallel(function, items, workers: int = 8) -> None:
    """Run function on every item at once; raise the first LabError after all have finished."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = [pool.submit(function, item) for item in items]
    errors = [future.exception() for future in results if future.exception()]
    if errors:
        raise errors[0]
