"""Parsers for nvidia-smi, nvcc and the kernel's view of NVIDIA GPUs (docs/gpu-and-drivers.md §2-3).

Pure Python, standard library only: shipped to managed hosts inside the nvidia_gpu_facts
module, and imported directly by the unit tests, which feed it real outputs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import subprocess

GPU_QUERY_FIELDS = [
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "driver_version",
    "compute_cap",
    "mig.mode.current",
]
APP_QUERY_FIELDS = ["pid", "process_name", "used_memory", "gpu_uuid"]
NOT_AVAILABLE = ("[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "[Insufficient Permissions]", "")

# Compute capability by product name, for drivers whose nvidia-smi has no compute_cap field
# (docs/gpu-and-drivers.md §4, compute capability by product). Longest match wins.
COMPUTE_CAP_BY_NAME = {
    "H200": "9.0",
    "H100": "9.0",
    "GH200": "9.0",
    "L40S": "8.9",
    "L40": "8.9",
    "L4": "8.9",
    "RTX 6000 Ada": "8.9",
    "RTX 40": "8.9",
    "A100": "8.0",
    "A30": "8.0",
    "A800": "8.0",
    "A10G": "8.6",
    "A10": "8.6",
    "A40": "8.6",
    "A16": "8.6",
    "A2": "8.6",
    "RTX A": "8.6",
    "RTX 30": "8.6",
    "T4": "7.5",
    "RTX 20": "7.5",
    "Quadro RTX": "7.5",
    "TITAN RTX": "7.5",
    "V100": "7.0",
    "TITAN V": "7.0",
    "P100": "6.0",
    "P40": "6.1",
    "P4": "6.1",
    "GTX 10": "6.1",
}

# nvidia-smi answers in seconds (tens of seconds on many GPUs without persistence mode); one that
# has not finished after this long is stuck in a wedged driver and would hang the play forever.
NVIDIA_SMI_TIMEOUT_S = 60
TIMED_OUT = "timed-out"
DRIVER_NOT_LOADED = "couldn't communicate with the NVIDIA driver"
VERSION_MISMATCH = "Driver/library version mismatch"
INVALID_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query')


def version_tuple(version: str | None) -> tuple[int, ...]:
    """'575.51.03' -> (575, 51, 3); '12.9' -> (12, 9); None or junk -> ()."""
    if not version:
        return ()
    parts = re.findall(r"\d+", str(version))
    return tuple(int(part) for part in parts)


def _value(text: str) -> str | None:
    text = text.strip()
    return None if text in NOT_AVAILABLE else text


def _int(text: str) -> int | None:
    value = _value(text)
    if value is None:
        return None
    match = re.match(r"^(\d+)", value)
    return int(match.group(1)) if match else None


def parse_csv(text: str, fields: list[str]) -> list[dict]:
    """Rows of `--query-*=fields --format=csv,noheader,nounits`, split on ', ' (names hold no commas)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(fields):
            raise ValueError(f"expected {len(fields)} fields, got {len(cells)}: {line!r}")
        rows.append(dict(zip(fields, cells)))  # noqa: B905  (lengths checked above; hosts may run Python < 3.10)
    return rows


def parse_gpus(text: str, fields: list[str]) -> list[dict]:
    """GPU records from a --query-gpu CSV; compute capability falls back to the name table."""
    gpus = []
    for row in parse_csv(text, fields):
        name = row.get("name", "")
        compute_cap = _value(row.get("compute_cap", ""))
        source = "nvidia-smi" if compute_cap else None
        if compute_cap is None:
            compute_cap = compute_cap_from_name(name)
            source = "name table" if compute_cap else None
        gpus.append(
            {
                "index": _int(row.get("index", "")),
                "name": name,
                "uuid": _value(row.get("uuid", "")),
                "memory_total_mib": _int(row.get("memory.total", "")),
                "memory_used_mib": _int(row.get("memory.used", "")),
                "driver_version": _value(row.get("driver_version", "")),
                "compute_cap": compute_cap,
                "compute_cap_source": source,
                "mig_mode": _value(row.get("mig.mode.current", "")),
            }
        )
    return gpus


def parse_compute_apps(text: str, fields: list[str] | None = None) -> list[dict]:
    return [
        {
            "pid": _int(row["pid"]),
            "process_name": row["process_name"],
            "used_memory_mib": _int(row["used_memory"]),
            "gpu_uuid": _value(row["gpu_uuid"]),
        }
        for row in parse_csv(text, fields or APP_QUERY_FIELDS)
    ]


def compute_cap_from_name(name: str) -> str | None:
    best = None
    for key, cap in COMPUTE_CAP_BY_NAME.items():
        if re.search(r"(^|[\s-])" + re.escape(key) + r"($|[\s-]|\d)", name) and (
            best is None or len(key) > len(best[0])
        ):
            best = (key, cap)
    return best[1] if best else None


def invalid_field(output: str) -> str | None:
    """The field an old nvidia-smi refused ('Field "compute_cap" is not a valid field to query.')."""
    match = INVALID_FIELD.search(output)
    return match.group(1) if match else None


def parse_cuda_version(table: str) -> str | None:
    """The highest CUDA version the driver supports, from the default table's header or `-q`."""
    match = re.search(r"CUDA Version\s*:?\s*(\d+\.\d+)", table)
    return match.group(1) if match else None


def parse_driver_version(table: str) -> str | None:
    match = re.search(r"Driver Version\s*:?\s*(\d+(?:\.\d+)+)", table)
    return match.group(1) if match else None


def parse_nvcc(text: str) -> str | None:
    match = re.search(r"release (\d+\.\d+)", text)
    return match.group(1) if match else None


def parse_kernel_module_version(text: str) -> str | None:
    """Version in /proc/driver/nvidia/version: the first token after 'Module' that starts with a digit."""
    match = re.search(r"Module\b(.*)", text)
    if not match:
        return None
    for token in match.group(1).split():
        if token[0].isdigit():
            return token
    return None


def run_bounded(argv, timeout, env=None):
    """(returncode, stdout, stderr) of a command given `timeout` seconds in all; returncode is None
    when it did not finish in time. Its process group is then killed; a process stuck in the kernel
    (a wedged GPU driver: uninterruptible sleep) cannot die, and is left behind rather than waited for."""
    try:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
    except OSError as error:
        return 127, "", str(error)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=5)
        return None, "", f"{os.path.basename(argv[0])} did not finish within {timeout:g} s (killed)"
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def classify_failure(output: str, returncode: int) -> tuple[str, str]:
    """(state, first line of the error) for an nvidia-smi call that failed."""
    first = next((line.strip() for line in output.splitlines() if line.strip()), f"exit code {returncode}")
    if DRIVER_NOT_LOADED in output:
        return "driver-not-loaded", first
    if VERSION_MISMATCH in output:
        return "driver-mismatch", first
    if "NVML" in output and ("not found" in output or "Failed to initialize" in output):
        return "nvml-error", first
    if "No devices were found" in output:
        return "no-devices", first
    return "error", first


class HostFiles:
    """Read access to the host's files; tests pass a stand-in with the same four methods."""

    def text(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return None

    def bytes(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def link(self, path: str) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None


def collect(run, files: HostFiles, nvidia_smi: str | None, nvcc: str | None = None) -> dict:
    """Everything the toolkit knows about this host's NVIDIA GPUs.

    run(argv) -> (returncode, stdout, stderr) runs a command, returncode None when it did not
    finish in time (run_bounded). Never raises for a broken GPU stack, never waits on a hung one:
    `state` says what is wrong ("ok", "not-installed", "driver-not-loaded", "timed-out", ...), and
    after the first nvidia-smi call that timed out no other is made.
    """
    facts = {
        "nvidia_smi": nvidia_smi,
        "state": "not-installed",
        "error": None,
        "driver_version": None,
        "cuda_version": None,
        "nvcc_version": None,
        "gpus": [],
        "compute_apps": [],
        "fallbacks": [],
    }
    facts.update(kernel_facts(files))
    if nvcc:
        rc, out, _ = run([nvcc, "--version"])
        facts["nvcc_version"] = parse_nvcc(out) if rc == 0 else None
    if not nvidia_smi:
        return facts

    def smi(*args):
        if facts["state"] == TIMED_OUT:
            return 1, "", ""
        rc, out, err = run([nvidia_smi, *args])
        if rc is None:
            facts["state"] = TIMED_OUT
            facts["error"] = f"`nvidia-smi {' '.join(args)}`: {err.strip() or 'did not finish in time'}"
            return 1, "", ""
        return rc, out, err

    fields = list(GPU_QUERY_FIELDS)
    while True:
        rc, out, err = smi(f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits")
        refused = invalid_field(out + err) if rc != 0 else None
        if refused and refused in fields and len(fields) > 1:
            fields.remove(refused)
            facts["fallbacks"].append(f"nvidia-smi has no {refused} field")
            continue
        break
    if facts["state"] == TIMED_OUT:
        return facts
    if rc != 0:
        facts["state"], facts["error"] = classify_failure(out + err, rc)
        return facts
    facts["gpus"] = parse_gpus(out, fields)
    facts["state"] = "ok" if facts["gpus"] else "no-devices"
    if any(gpu["compute_cap_source"] == "name table" for gpu in facts["gpus"]):
        facts["fallbacks"].append("compute capability taken from the GPU name table")
    facts["driver_version"] = next((g["driver_version"] for g in facts["gpus"] if g["driver_version"]), None)
    rc, out, err = smi()
    facts["cuda_version"] = parse_cuda_version(out) if rc == 0 else None
    if facts["cuda_version"] is None:
        rc, out, err = smi("-q")
        facts["cuda_version"] = parse_cuda_version(out) if rc == 0 else None
    rc, out, err = smi(f"--query-compute-apps={','.join(APP_QUERY_FIELDS)}", "--format=csv,noheader,nounits")
    if rc == 0:
        facts["compute_apps"] = [
            dict(app, **process_identity(files, app["pid"]), unit=process_unit(files, app["pid"]))
            for app in parse_compute_apps(out)
        ]
    return facts


def kernel_facts(files: HostFiles) -> dict:
    """NVIDIA kernel state: modules loaded, kernel driver version, Secure Boot, PCI devices."""
    modules = files.text("/proc/modules") or ""
    loaded = {line.split()[0] for line in modules.splitlines() if line.strip()}
    efivar = files.bytes("/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")
    return {
        "kernel_modules": {"nvidia": "nvidia" in loaded, "nouveau": "nouveau" in loaded},
        "kernel_driver_version": parse_kernel_module_version(files.text("/proc/driver/nvidia/version") or ""),
        "secure_boot": (efivar[-1:] == b"\x01") if efivar else None,
        "pci_devices": len(nvidia_pci_devices(files)),
    }


def nvidia_pci_devices(files: HostFiles) -> list[str]:
    found = []
    for device in files.listdir("/sys/bus/pci/devices"):
        vendor = (files.text(f"/sys/bus/pci/devices/{device}/vendor") or "").strip()
        klass = (files.text(f"/sys/bus/pci/devices/{device}/class") or "").strip()
        # 0x10de is NVIDIA; classes 0x03xxxx are display controllers (VGA and 3D).
        if vendor == "0x10de" and klass.startswith("0x03"):
            found.append(device)
    return found


def process_identity(files: HostFiles, pid: int | None) -> dict:
    """PID, user and executable of a process: never its arguments, which may hold another user's secrets.

    executable: the program's path (/proc/PID/exe) where it can be read, else its kernel name
    (/proc/PID/comm); user: the name of its real UID (the number when it has none).
    """
    if pid is None:
        return {"pid": None, "user": None, "executable": None}
    executable = files.link(f"/proc/{pid}/exe") or (files.text(f"/proc/{pid}/comm") or "").strip() or None
    user = None
    for line in (files.text(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("Uid:") and len(line.split()) > 1:
            uid = int(line.split()[1])
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                user = str(uid)
    return {"pid": pid, "user": user, "executable": executable}


def process_unit(files: HostFiles, pid: int | None) -> str | None:
    """The systemd unit a process runs in (from its cgroup path), or None."""
    for line in (files.text(f"/proc/{pid}/cgroup") or "").splitlines() if pid is not None else []:
        for part in reversed(line.split(":")[-1].split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return None
