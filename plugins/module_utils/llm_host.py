"""Host probes for preflight: free disk under a path, and who listens on a TCP port.

Pure Python, standard library only (shipped to hosts in the llm_host_facts module).
"""

from __future__ import annotations

import os

try:  # inside a module on the host (Ansiballz ships llm_gpu along)
    from ansible.module_utils.llm_gpu import HostFiles, process_identity, process_unit
except ImportError:  # imported as llm_toolkit.host.llm_host: unit tests, the controller
    from llm_toolkit.host.llm_gpu import HostFiles, process_identity, process_unit

TCP_LISTEN = "0A"


def free_mib(path: str) -> dict:
    """Free MiB on the file system that holds path (or would hold it: the nearest existing parent), and
    how many directories path holds (the vLLM models directory: one per model revision kept)."""
    probe = path
    while not os.path.exists(probe) and probe not in ("", "/"):
        probe = os.path.dirname(probe.rstrip("/")) or "/"
    stats = os.statvfs(probe or "/")
    directories = 0
    if os.path.isdir(path):
        directories = sum(1 for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False))
    return {
        "path": path,
        "measured_on": probe or "/",
        "free_mib": stats.f_bavail * stats.f_frsize // 2**20,
        "directories": directories,
    }


def listening_inodes(proc_net_tcp: str, port: int) -> list[str]:
    """Socket inodes listening on port, from the text of /proc/net/tcp or /proc/net/tcp6."""
    inodes = []
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], fields[9]
        if state == TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.append(inode)
    return inodes


def socket_owners(files: HostFiles, inodes: list[str]) -> list[int]:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    owners = []
    for pid in files.listdir("/proc"):
        if not pid.isdigit():
            continue
        for fd in files.listdir(f"/proc/{pid}/fd"):
            if files.link(f"/proc/{pid}/fd/{fd}") in wanted:
                owners.append(int(pid))
                break
    return owners


def port_listeners(files: HostFiles, port: int) -> list[dict]:
    """Processes listening on a TCP port, each with its PID, user, executable and systemd unit (never its
    arguments: a foreign process's command line can hold its owner's secrets, and reports are kept)."""
    inodes = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        inodes += listening_inodes(files.text(table) or "", port)
    if not inodes:
        return []
    owners = socket_owners(files, inodes)
    if not owners:
        return [{"pid": None, "user": None, "executable": None, "unit": None}]
    return [dict(process_identity(files, pid), unit=process_unit(files, pid)) for pid in owners]
