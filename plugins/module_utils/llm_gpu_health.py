"""GPU health facts: what `nvidia-smi -q -x` says of each GPU's fitness to serve, the Xid events the
kernel logged since boot, and the NVSwitch fabric (docs/gpu-health.md).

Pure Python, standard library only: shipped to managed hosts inside the nvidia_gpu_facts module,
imported by the unit tests, which feed it published real outputs, and runnable without Ansible on a
GPU machine that has no registry (`python3 -m llm_toolkit.host.llm_gpu_health` where the toolkit's
wheel is installed, or this file and llm_gpu.py carried there together). It measures; the gates
that judge the facts are data (the catalog's gates.yml), applied on the controller
(llm_toolkit.preflight).
"""

from __future__ import annotations

import json
import re
import sys
from xml.etree import ElementTree

try:  # inside a module on the host (Ansiballz ships llm_gpu along)
    from ansible.module_utils.llm_gpu import HostFiles, run_bounded
except ImportError:  # the controller's package, or the two files carried to a host by hand
    try:
        from llm_toolkit.host.llm_gpu import HostFiles, run_bounded
    except ImportError:
        from llm_gpu import HostFiles, run_bounded

# What nvidia-smi prints where a value does not apply, is not supported, or is no longer reported.
NOT_REPORTED = ("N/A", "[N/A]", "Not Supported", "[Not Supported]", "Unknown Error", "[Unknown Error]", "")
DEPRECATED = "Requested functionality has been deprecated"
# The clock event (throttle) reasons that mean the GPU is slowed down by something other than its
# own idle state or the operator's settings; drivers before R535 name the element clocks_throttle_reasons.
SLOWDOWNS = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown")
# A kernel log line of an Xid event: "NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus."
XID_LINE = re.compile(r"NVRM: Xid \((?P<device>[^)]*)\): (?P<code>\d+)(?:, ?(?P<detail>.*))?$")
FABRIC_MANAGER_VERSION = re.compile(r"Fabric Manager version is\s*:\s*(\S+)")
# The kernel log since boot, with each line's time (the default of llm_gpu_kernel_log_command).
KERNEL_LOG_COMMAND = ["journalctl", "-k", "-b", "-o", "short-iso", "--no-pager"]


def _value(element: ElementTree.Element | None, path: str) -> str | None:
    """The text at path under element; None where nvidia-smi reports no value."""
    found = element.find(path) if element is not None else None
    if found is None or found.text is None:
        return None
    text = found.text.strip()
    return None if text in NOT_REPORTED or text == DEPRECATED else text


def _number(text: str | None) -> int | None:
    """The leading integer of a value such as "16x", "89 C" or "0"; None for none."""
    match = re.match(r"-?\d+", text or "")
    return int(match.group(0)) if match else None


def _yes(text: str | None) -> bool | None:
    if text is None:
        return None
    return text.lower() in ("yes", "enabled", "active")


def _uncorrectable(counts: ElementTree.Element | None) -> int | None:
    """Uncorrectable ECC errors in a <volatile> or <aggregate> block, in both of nvidia-smi's forms:
    <double_bit><total> (older drivers), or <sram_uncorrectable*> and <dram_uncorrectable> (newer)."""
    if counts is None:
        return None
    values = [_number(_value(counts, "double_bit/total"))]
    values += [_number(_value(counts, child.tag)) for child in counts if "uncorrectable" in child.tag]
    measured = [value for value in values if value is not None]
    return sum(measured) if measured else None


def _slowdowns(gpu: ElementTree.Element) -> list[str] | None:
    """The slowdown reasons active now (SLOWDOWNS), or None where the driver reports none."""
    block = gpu.find("clocks_event_reasons")
    prefix = "clocks_event_reason_"
    if block is None:
        block, prefix = gpu.find("clocks_throttle_reasons"), "clocks_throttle_reason_"
    if block is None:
        return None
    reasons = {child.tag.removeprefix(prefix): _yes(_value(block, child.tag)) for child in block}
    return [reason for reason in SLOWDOWNS if reasons.get(reason)]


def parse_gpu(index: int, gpu: ElementTree.Element) -> dict:
    """The health facts of one <gpu> element (None: not reported by this GPU or driver)."""
    link = "pci/pci_gpu_link_info"
    retired = gpu.find("retired_pages")
    pending_retirement = _yes(_value(retired, "pending_retirement"))
    if pending_retirement is None:
        pending_retirement = _yes(_value(retired, "pending_blacklist"))
    recovery = _value(gpu, "gpu_recovery_action")
    return {
        "index": index,
        "name": _value(gpu, "product_name"),
        "uuid": _value(gpu, "uuid"),
        "pci_bus_id": gpu.get("id") or _value(gpu, "pci/pci_bus_id"),
        "persistence_mode": _yes(_value(gpu, "persistence_mode")),
        "ecc_mode": _value(gpu, "ecc_mode/current_ecc"),
        "ecc_uncorrectable_volatile": _uncorrectable(gpu.find("ecc_errors/volatile")),
        "ecc_uncorrectable_aggregate": _uncorrectable(gpu.find("ecc_errors/aggregate")),
        "retired_pages_double_bit": _number(_value(retired, "double_bit_retirement/retired_count")),
        "retirement_pending": pending_retirement,
        "remapped_rows_uncorrectable": _number(_value(gpu, "remapped_rows/remapped_row_unc")),
        "remap_pending": _yes(_value(gpu, "remapped_rows/remapped_row_pending")),
        "remap_failure": _yes(_value(gpu, "remapped_rows/remapped_row_failure")),
        "reset_required": _yes(_value(gpu, "gpu_reset_status/reset_required")),
        "drain_and_reset_recommended": _yes(_value(gpu, "gpu_reset_status/drain_and_reset_recommended")),
        "recovery_action": recovery,
        "slowdowns": _slowdowns(gpu),
        "idle": _yes(_value(gpu, "clocks_event_reasons/clocks_event_reason_gpu_idle"))
        or _yes(_value(gpu, "clocks_throttle_reasons/clocks_throttle_reason_gpu_idle")),
        "pcie_generation": _number(_value(gpu, f"{link}/pcie_gen/current_link_gen")),
        "pcie_generation_max": _number(
            _value(gpu, f"{link}/pcie_gen/max_device_link_gen") or _value(gpu, f"{link}/pcie_gen/max_link_gen")
        ),
        "pcie_width": _number(_value(gpu, f"{link}/link_widths/current_link_width")),
        "pcie_width_max": _number(_value(gpu, f"{link}/link_widths/max_link_width")),
        "temperature_c": _number(_value(gpu, "temperature/gpu_temp")),
        "slowdown_temperature_c": _number(_value(gpu, "temperature/gpu_temp_slow_threshold")),
        "fabric_state": _value(gpu, "fabric/state"),
        "fabric_status": _value(gpu, "fabric/status"),
    }


def parse_health_xml(text: str) -> dict:
    """`nvidia-smi -q -x` as health facts: the driver version and one entry per GPU.
    Raises ValueError (with the parser's reason) for output that is not nvidia-smi's XML."""
    try:
        # nvidia-smi's own output; expat never fetches external entities and refuses entity expansion bombs.
        root = ElementTree.fromstring(text.strip())  # noqa: S314
    except ElementTree.ParseError as error:
        raise ValueError(f"not XML: {error}") from None
    if root.tag != "nvidia_smi_log":
        raise ValueError(f"root element <{root.tag}>, expected <nvidia_smi_log>")
    gpus = [parse_gpu(index, gpu) for index, gpu in enumerate(root.findall("gpu"))]
    return {"driver_version": _value(root, "driver_version"), "gpus": gpus}


def parse_xid_events(text: str) -> list[dict]:
    """The Xid events of a kernel log: code, device, detail, and the event's key (the line's own
    timestamp, device and code), which names it in an acknowledgement (llm_gpu_health_ack)."""
    events = []
    for line in text.splitlines():
        match = XID_LINE.search(line)
        if not match:
            continue
        stamp = " ".join(re.sub(r"(^|\s)kernel:.*$", "", line[: match.start()]).split()) or "-"
        code, device = int(match["code"]), match["device"].strip()
        events.append(
            {
                "code": code,
                "device": device,
                "detail": (match["detail"] or "").strip(),
                "key": f"Xid {code} {device} {stamp}",
            }
        )
    return events


def parse_fabric_manager_version(text: str) -> str | None:
    """`nv-fabricmanager --version` prints "Fabric Manager version is : 535.104.05"."""
    match = FABRIC_MANAGER_VERSION.search(text)
    return match.group(1) if match else None


def collect_health(run, nvidia_smi: str, kernel_log_command: list[str], nvswitch: bool) -> dict:
    """The health facts of one host. run(argv) -> (returncode, stdout, stderr), returncode None when
    the command did not finish in time (llm_gpu.run_bounded). Never raises: what cannot be measured is
    None with its reason in `not_measured`."""
    facts = {"gpus": [], "driver_version": None, "xid_events": None, "fabric_manager": None, "not_measured": {}}
    rc, out, err = run([nvidia_smi, "-q", "-x"])
    if rc == 0:
        try:
            facts.update(parse_health_xml(out))
        except ValueError as error:
            facts["not_measured"]["gpus"] = f"`nvidia-smi -q -x` printed no health report ({error})"
    else:
        facts["not_measured"]["gpus"] = f"`nvidia-smi -q -x` failed: {_first_line(rc, out, err)}"
    if kernel_log_command:
        rc, out, err = run(list(kernel_log_command))
        if rc == 0:
            facts["xid_events"] = parse_xid_events(out)
        else:
            command = " ".join(kernel_log_command)
            facts["not_measured"]["xid_events"] = (
                f"the kernel log could not be read (`{command}`: {_first_line(rc, out, err)})"
            )
    else:
        facts["not_measured"]["xid_events"] = "no kernel log source (llm_gpu_kernel_log_command is empty)"
    if nvswitch:
        facts["fabric_manager"] = fabric_manager(run)
    return facts


def _first_line(rc: int | None, out: str, err: str) -> str:
    lines = (err or out).strip().splitlines()
    return lines[0] if lines else ("did not finish in time" if rc is None else f"exit code {rc}")


def fabric_manager(run) -> dict:
    """The NVIDIA Fabric Manager service's state and version (NVSwitch hosts)."""
    rc, out, _ = run(["systemctl", "show", "--property=ActiveState", "--value", "nvidia-fabricmanager.service"])
    state = out.strip() if rc == 0 else None
    rc, out, err = run(["nv-fabricmanager", "--version"])
    return {"state": state, "version": parse_fabric_manager_version(out + err) if rc == 0 else None}


def nvswitch_devices(files: HostFiles) -> list[str]:
    """The NVSwitch device nodes (/dev/nvidia-nvswitch*): a host that has them needs the fabric manager."""
    return [name for name in files.listdir("/dev") if name.startswith("nvidia-nvswitch")]


def main(argv: list[str]) -> int:
    """Print this host's health facts as JSON: llm_gpu_health.py [NVIDIA_SMI [KERNEL_LOG_COMMAND...]]."""
    nvidia_smi = argv[0] if argv else "nvidia-smi"
    kernel_log = argv[1:] or KERNEL_LOG_COMMAND
    facts = collect_health(
        lambda command: run_bounded(command, 60), nvidia_smi, kernel_log, bool(nvswitch_devices(HostFiles()))
    )
    print(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
