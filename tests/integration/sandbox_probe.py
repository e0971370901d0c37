"""Runs ON a lab host, as a service's user, inside or outside that service's sandbox
(tests/integration/test_units.py copies it there): tries what the sandbox must forbid and prints, as
JSON, what happened to each attempt ("ok" or the errno's name).

`--bpf` (as root): whether this host lets systemd attach cgroup BPF programs, which IPAddressDeny=,
IPAddressAllow=, DevicePolicy= and DeviceAllow= need on the unified cgroup hierarchy: bpf() loading
an empty program answers EINVAL where bpf() is allowed, EPERM where it is not.

Otherwise, arguments: the service's writable directory, a world-writable directory outside it, a
non-loopback address and port that answer, the service's loopback port, and two character
devices made for the probe (one the unit's device policy allows, one it does not).
"""

import contextlib
import ctypes
import errno
import json
import os
import platform
import socket
import struct
import sys


def attempt(action) -> str:
    try:
        action()
    except TimeoutError:
        return "timeout"
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))
    return "ok"


def write_in(directory: str):
    def write():
        path = os.path.join(directory, f".sandbox-probe-{os.getpid()}")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("probe")
        os.unlink(path)

    return write


def connect(host: str, port: int):
    def run():
        with socket.create_connection((host, port), timeout=5):
            pass

    return run


def open_socket(family: int, kind: int):
    def run():
        socket.socket(family, kind).close()

    return run


def open_device(path: str):
    def run():
        with open(path, "wb", buffering=0):
            pass

    return run


def bpf_allowed() -> str:
    number = {"x86_64": 321, "aarch64": 280}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("II", attr, 0, 8, 0)  # BPF_PROG_TYPE_CGROUP_SKB, no instructions
    if libc.syscall(number, 5, attr, len(attr)) >= 0:  # BPF_PROG_LOAD
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), "?")


def main() -> None:
    if sys.argv[1:] == ["--bpf"]:
        print(json.dumps({"bpf": bpf_allowed()}))
        return
    writable, outside, remote_host, remote_port, loopback_port, allowed_device, denied_device = sys.argv[1:8]
    with open("/proc/self/status", encoding="utf-8") as handle:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    pids = [name for name in os.listdir("/proc") if name.isdigit()]
    owners = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # gone while we looked
            owners.add(os.stat(f"/proc/{pid}").st_uid)
    print(
        json.dumps(
            {
                "uid": os.getuid(),
                "status": {key: status[key] for key in ("NoNewPrivs", "CapBnd")},
                "list /home": attempt(lambda: os.listdir("/home")),
                "write service dir": attempt(write_in(writable)),
                "write outside": attempt(write_in(outside)),
                "write /etc": attempt(write_in("/etc")),
                "pid 1 visible": os.path.exists("/proc/1"),
                "process owners": sorted(owners),
                "AF_PACKET": attempt(open_socket(socket.AF_PACKET, socket.SOCK_RAW)),
                "AF_INET": attempt(open_socket(socket.AF_INET, socket.SOCK_STREAM)),
                "connect remote": attempt(connect(remote_host, int(remote_port))),
                "connect loopback": attempt(connect("127.0.0.1", int(loopback_port))),
                "/dev": sorted(os.listdir("/dev")),
                "allowed device": attempt(open_device(allowed_device)),
                "denied device": attempt(open_device(denied_device)),
            }
        )
    )


if __name__ == "__main__":
    main()
