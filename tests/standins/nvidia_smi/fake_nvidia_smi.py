"""Stand-in for NVIDIA's `nvidia-smi`, for lab hosts and unit tests that have no GPU.

Test-only: it lives under tests/ and is never installed by a role. It prints what the real
tool prints for the subset the toolkit uses (formats: docs/gpu-and-drivers.md, sections 2-3):

  nvidia-smi                                   the default table (header carries the CUDA version)
  nvidia-smi --query-gpu=F,... --format=csv[,noheader][,nounits] [-i N]
  nvidia-smi --query-compute-apps=F,... --format=csv[,noheader][,nounits]
  nvidia-smi -L | -q | -q -x | --version

The profile comes from $LAB_GPU_PROFILE or /etc/lab-gpu-profile; profiles are in
profiles.json beside this file (a profile with "base" is that profile with its own keys on top).
A profile with "hang" blocks forever without output, as the real tool does in a wedged driver (the
fault the callers' time limits are tested against).

`-q -x` prints the XML health report with the elements and value forms of the profile's driver
generation (published outputs: tests/unit/fixtures/nvidia_smi): a healthy GPU, unless the profile's
"health" or the file /etc/lab-gpu-health.json (which the tests write) sets elements of a GPU, by
index, or of every GPU ("*"): {"1": {"remapped_row_pending": "Yes"}}.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

PROFILES = Path(__file__).resolve().with_name("profiles.json")
PROFILE_FILE = Path("/etc/lab-gpu-profile")
HEALTH_FILE = Path("/etc/lab-gpu-health.json")
INVALID_ARGS = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."

# field -> (header unit or None, function(gpu) -> (value, unit suffix or ""))
GPU_FIELDS = {
    "index": (None, lambda g: (str(g["index"]), "")),
    "count": (None, lambda g: (str(g["count"]), "")),
    "name": (None, lambda g: (g["name"], "")),
    "gpu_name": (None, lambda g: (g["name"], "")),
    "uuid": (None, lambda g: (g["uuid"], "")),
    "gpu_uuid": (None, lambda g: (g["uuid"], "")),
    "pci.bus_id": (None, lambda g: (g["bus_id"], "")),
    "gpu_bus_id": (None, lambda g: (g["bus_id"], "")),
    "driver_version": (None, lambda g: (g["driver_version"], "")),
    "memory.total": ("MiB", lambda g: (str(g["memory_total_mib"]), " MiB")),
    "memory.reserved": ("MiB", lambda g: (str(g["memory_reserved_mib"]), " MiB")),
    "memory.used": ("MiB", lambda g: (str(g["memory_used_mib"]), " MiB")),
    "memory.free": ("MiB", lambda g: (str(g["memory_free_mib"]), " MiB")),
    "compute_cap": (None, lambda g: (g["compute_cap"], "")),
    "persistence_mode": (None, lambda g: ("Enabled", "")),
    "compute_mode": (None, lambda g: ("Default", "")),
    "mig.mode.current": (None, lambda g: (g.get("mig_mode", "[N/A]"), "")),
    "temperature.gpu": (None, lambda g: ("34", "")),
    "utilization.gpu": ("%", lambda g: ("0", " %")),
    "power.limit": ("W", lambda g: (f"{g['power_limit_w']:.2f}", " W")),
}
APP_FIELDS = {
    "pid": (None, lambda a: (str(a["pid"]), "")),
    "process_name": (None, lambda a: (a["process_name"], "")),
    "name": (None, lambda a: (a["process_name"], "")),
    "used_memory": ("MiB", lambda a: (str(a["used_memory_mib"]), " MiB")),
    "used_gpu_memory": ("MiB", lambda a: (str(a["used_memory_mib"]), " MiB")),
    "gpu_uuid": (None, lambda a: (a["gpu_uuid"], "")),
    "gpu_bus_id": (None, lambda a: (a["gpu_bus_id"], "")),
}


def load_profile(name: str, profiles_path: Path = PROFILES) -> dict:
    profiles = json.loads(profiles_path.read_text())
    if name not in profiles:
        raise KeyError(name)
    profile = profiles[name]
    if "base" in profile:
        profile = {**load_profile(profile["base"], profiles_path), **profile}
    return profile


def expand_gpus(profile_name: str, profile: dict) -> list[dict]:
    """One record per GPU, with the per-device values a real host would report."""
    apps = profile.get("compute_apps", [])
    gpus = []
    for index in range(profile["count"]):
        gpu = dict(profile["gpu"])
        used = sum(app["used_memory_mib"] for app in apps if app["gpu"] == index)
        gpu.update(
            index=index,
            count=profile["count"],
            driver_version=profile["driver_version"],
            uuid="GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"lab-gpu/{profile_name}/{index}")),
            bus_id=f"00000000:{0x10 + index:02X}:00.0",
            memory_used_mib=used,
            memory_free_mib=gpu["memory_total_mib"] - gpu["memory_reserved_mib"] - used,
        )
        gpus.append(gpu)
    return gpus


def expand_apps(profile: dict, gpus: list[dict]) -> list[dict]:
    return [
        dict(app, gpu_uuid=gpus[app["gpu"]]["uuid"], gpu_bus_id=gpus[app["gpu"]]["bus_id"])
        for app in profile.get("compute_apps", [])
    ]


def csv_query(records, fields_arg, format_arg, known, unsupported) -> tuple[str, int]:
    fields = [field.strip() for field in fields_arg.split(",") if field.strip()]
    options = [option.strip() for option in format_arg.split(",")]
    if not fields or options[0] != "csv" or any(o not in ("csv", "noheader", "nounits") for o in options):
        return INVALID_ARGS + "\n", 2
    for field in fields:
        if field not in known or field in unsupported:
            return f'Field "{field}" is not a valid field to query.\n\n', 2
    lines = []
    if "noheader" not in options:
        lines.append(", ".join(f"{f} [{known[f][0]}]" if known[f][0] else f for f in fields))
    for record in records:
        cells = []
        for field in fields:
            value, unit = known[field][1](record)
            cells.append(value if "nounits" in options else value + unit)
        lines.append(", ".join(cells))
    return "".join(line + "\n" for line in lines), 0


def default_table(profile: dict, gpus: list[dict], apps: list[dict]) -> str:
    """The human table; R470 drivers print the narrow pre-R535 layout."""
    driver, cuda = profile["driver_version"], profile["cuda_version"]
    narrow = driver.startswith("470")
    left, mid, right, name_width, pid_width = (31, 22, 22, 20, 9) if narrow else (41, 24, 22, 31, 15)
    width = left + mid + right + 2
    if narrow:
        header = f" NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda}"
        titles = [
            (" GPU  Name        Persistence-M", " Bus-Id        Disp.A ", " Volatile Uncorr. ECC "),
            (" Fan  Temp  Perf  Pwr:Usage/Cap", "         Memory-Usage ", " GPU-Util  Compute M. "),
        ]
    else:
        header = f" NVIDIA-SMI {driver}             Driver Version: {driver}     CUDA Version: {cuda}"
        titles = [
            (" GPU  Name                 Persistence-M ", " Bus-Id          Disp.A ", " Volatile Uncorr. ECC "),
            (" Fan  Temp   Perf          Pwr:Usage/Cap ", "           Memory-Usage ", " GPU-Util  Compute M. "),
        ]

    def row(a: str, b: str, c: str) -> str:
        return f"|{a.ljust(left)}|{b.ljust(mid)}|{c.ljust(right)}|"

    def full(text: str) -> str:
        return f"|{text.ljust(width)}|"

    border = "+" + "-" * width + "+"
    lines = [time.strftime("%a %b %d %H:%M:%S %Y"), border, full(header)]
    lines.append(f"|{'-' * left}+{'-' * mid}+{'-' * right}+")
    lines += [row(*title) for title in titles]
    lines.append(row("", "", "MIG M. ".rjust(right)))
    lines.append(f"|{'=' * left}+{'=' * mid}+{'=' * right}|")
    for gpu in gpus:
        power = f"35W / {gpu['power_limit_w']:>4}W"
        used, total = gpu["memory_used_mib"], gpu["memory_total_mib"]
        lines.append(
            row(
                f"{gpu['index']:>4}  {gpu['name']:<{name_width}}On   "[:left],
                f"{'' if narrow else '  '} {gpu['bus_id']} Off ",
                "0 ".rjust(right),
            )
        )
        lines.append(
            row(
                f" N/A   34C    P0{power:>{left - 17}} ",
                f"{used:>{7 if narrow else 8}}MiB / {total:>{5 if narrow else 6}}MiB ",
                f"{'0%':>8}      Default ",
            )
        )
        lines.append(row("", "", "N/A ".rjust(right)))
        lines.append(f"+{'-' * left}+{'-' * mid}+{'-' * right}+")
    lines += ["", border, full(" Processes:")]
    lines.append(full(f"  GPU   GI   CI  {'PID':>{pid_width}}   Type   Process name".ljust(width - 11) + "GPU Memory "))
    lines.append(full("        ID   ID".ljust(width - 11) + "Usage      "))
    lines.append("|" + "=" * width + "|")
    if not apps:
        lines.append(full("  No running processes found"))
    for app in apps:
        text = f"  {app['gpu']:>3}   N/A  N/A  {app['pid']:>{pid_width}}      C   {app['process_name']}"
        lines.append(full(text.ljust(width - 11) + f"{app['used_memory_mib']:>7}MiB "))
    lines.append(border)
    return "\n".join(lines) + "\n"


def query_report(profile: dict, gpus: list[dict]) -> str:
    """A short `nvidia-smi -q` with the sections the toolkit reads."""
    lines = ["", "==============NVSMI LOG==============", ""]
    lines.append(f"{'Timestamp':<42}: {time.strftime('%a %b %d %H:%M:%S %Y')}")
    lines.append(f"{'Driver Version':<42}: {profile['driver_version']}")
    lines.append(f"{'CUDA Version':<42}: {profile['cuda_version']}")
    lines += ["", f"{'Attached GPUs':<42}: {len(gpus)}"]
    for gpu in gpus:
        lines.append(f"GPU {gpu['bus_id']}")
        lines.append(f"    {'Product Name':<38}: {gpu['name']}")
        lines.append(f"    {'GPU UUID':<38}: {gpu['uuid']}")
        lines.append(f"    {'Minor Number':<38}: {gpu['index']}")
        lines.append("    FB Memory Usage")
        for label, key in (
            ("Total", "memory_total_mib"),
            ("Reserved", "memory_reserved_mib"),
            ("Used", "memory_used_mib"),
            ("Free", "memory_free_mib"),
        ):
            lines.append(f"        {label:<34}: {gpu[key]} MiB")
    return "\n".join(lines) + "\n\n"


# Each GPU's health elements as a healthy GPU reports them; a profile's "health" and HEALTH_FILE override
# them per GPU index.
HEALTHY = {
    "persistence_mode": "Enabled",
    "reset_required": "No",
    "drain_and_reset_recommended": "No",
    "gpu_recovery_action": "None",
    "current_link_gen": None,  # the profile's maximum
    "current_link_width": "16x",
    "clocks_gpu_idle": "Active",
    "clocks_hw_slowdown": "Not Active",
    "clocks_hw_thermal_slowdown": "Not Active",
    "clocks_hw_power_brake_slowdown": "Not Active",
    "clocks_sw_thermal_slowdown": "Not Active",
    "volatile_uncorrectable": "0",
    "aggregate_uncorrectable": "0",
    "pending_retirement": "No",
    "remapped_row_unc": "0",
    "remapped_row_pending": "No",
    "remapped_row_failure": "No",
    "gpu_temp": "34 C",
    "fabric_state": None,  # Completed on an NVSwitch profile, N/A elsewhere
}
CLOCK_REASONS = ("gpu_idle", "hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown")


def health_overrides(profile: dict, health_file: Path = HEALTH_FILE) -> dict[str, dict]:
    overrides = {index: dict(values) for index, values in profile.get("health", {}).items()}
    try:
        written = json.loads(health_file.read_text())
    except (OSError, ValueError):
        written = {}
    for index, values in written.items():
        overrides.setdefault(str(index), {}).update(values)
    return overrides


def gpu_state(overrides: dict[str, dict], index: int) -> dict:
    """A GPU's health elements: healthy, then what applies to every GPU ("*"), then its own."""
    return {**HEALTHY, **overrides.get("*", {}), **overrides.get(str(index), {})}


def _element(tag: str, children: str | None = None, text: str = "") -> str:
    return f"<{tag}>{children if children is not None else text}</{tag}>"


def _ecc_counts(scope: str, uncorrectable: str, driver: int) -> str:
    """A <volatile> or <aggregate> block in the form of the driver's generation."""
    if driver < 515:
        single = "".join(_element(tag, text="0") for tag in ("device_memory", "register_file", "total"))
        double = "".join(_element(tag, text=uncorrectable if tag == "total" else "0")
                         for tag in ("device_memory", "register_file", "total"))  # fmt: skip
        return _element(scope, _element("single_bit", single) + _element("double_bit", double))
    sram = ("sram_uncorrectable_parity", "sram_uncorrectable_secded") if driver >= 570 else ("sram_uncorrectable",)
    tags = ("sram_correctable", *sram, "dram_correctable", "dram_uncorrectable")
    return _element(scope, "".join(_element(t, text=uncorrectable if t == "dram_uncorrectable" else "0") for t in tags))


def _link(state: dict, generation: str, driver: int) -> str:
    current = state["current_link_gen"] or generation
    gens = [("max_link_gen", generation), ("current_link_gen", current)]
    if driver >= 535:
        gens += [("device_current_link_gen", current), ("max_device_link_gen", generation),
                 ("max_host_link_gen", generation)]  # fmt: skip
    widths = _element("max_link_width", text="16x") + _element("current_link_width", text=state["current_link_width"])
    return _element(
        "pci_gpu_link_info",
        _element("pcie_gen", "".join(_element(tag, text=value) for tag, value in gens))
        + _element("link_widths", widths),
    )


def xml_gpu(profile: dict, gpu: dict, state: dict) -> str:
    """One <gpu> of `nvidia-smi -q -x` in the form of the profile's driver generation (the published
    outputs in tests/unit/fixtures/nvidia_smi: R460, R515, R535, R570)."""
    driver = int(profile["driver_version"].split(".")[0])
    generation = str(profile.get("pcie_gen_max", 4))
    reasons = "clocks_event_reason" if driver >= 535 else "clocks_throttle_reason"
    clock_block = "".join(_element(f"{reasons}_{name}", text=state[f"clocks_{name}"]) for name in CLOCK_REASONS)
    fabric_state = state["fabric_state"] or ("Completed" if profile.get("nvswitch") else "N/A")
    fabric_status = "Success" if fabric_state == "Completed" else "N/A"
    reset = "Requested functionality has been deprecated" if driver >= 570 else state["reset_required"]
    retired = "".join(
        _element(kind, _element("retired_count", text="0") + _element("retired_pagelist", text=""))
        for kind in ("multiple_single_bit_retirement", "double_bit_retirement")
    )
    slowdown = profile.get("slowdown_temp_c", 87)
    parts = [
        _element("product_name", text=gpu["name"]),
        _element("persistence_mode", text=state["persistence_mode"]),
        _element("uuid", text=gpu["uuid"]),
        _element("minor_number", text=str(gpu["index"])),
        _element("gpu_reset_status", _element("reset_required", text=reset)
                 + _element("drain_and_reset_recommended", text=state["drain_and_reset_recommended"]))
        if driver >= 535 else "",
        _element("gpu_recovery_action", text=state["gpu_recovery_action"]) if driver >= 570 else "",
        _element("pci", _element("pci_bus_id", text=gpu["bus_id"]) + _link(state, generation, driver)),
        _element("clocks_event_reasons" if driver >= 535 else "clocks_throttle_reasons", clock_block),
        _element("fb_memory_usage", _element("total", text=f"{gpu['memory_total_mib']} MiB")
                 + _element("used", text=f"{gpu['memory_used_mib']} MiB")),
        _element("ecc_mode", _element("current_ecc", text="Enabled") + _element("pending_ecc", text="Enabled")),
        _element("ecc_errors", _ecc_counts("volatile", state["volatile_uncorrectable"], driver)
                 + _ecc_counts("aggregate", state["aggregate_uncorrectable"], driver)),
        _element("retired_pages", retired + _element("pending_blacklist", text="No")
                 + _element("pending_retirement", text=state["pending_retirement"])),
        _element("remapped_rows", _element("remapped_row_corr", text="0")
                 + _element("remapped_row_unc", text=state["remapped_row_unc"])
                 + _element("remapped_row_pending", text=state["remapped_row_pending"])
                 + _element("remapped_row_failure", text=state["remapped_row_failure"])),
        _element("temperature", _element("gpu_temp", text=state["gpu_temp"])
                 + _element("gpu_temp_max_threshold", text=f"{slowdown + 5} C")
                 + _element("gpu_temp_slow_threshold", text=f"{slowdown} C")),
        _element("fabric", _element("state", text=fabric_state) + _element("status", text=fabric_status))
        if driver >= 535 else "",
    ]  # fmt: skip
    return f'<gpu id="{gpu["bus_id"]}">' + "".join(parts) + "</gpu>"


def xml_report(profile: dict, gpus: list[dict], health_file: Path = HEALTH_FILE) -> str:
    """`nvidia-smi -q -x`: the XML report, with the profile's (and the tests') health states."""
    overrides = health_overrides(profile, health_file)
    dtd = "nvsmi_device_v12.dtd" if int(profile["driver_version"].split(".")[0]) >= 535 else "nvsmi_device_v11.dtd"
    body = "".join(xml_gpu(profile, gpu, gpu_state(overrides, gpu["index"])) for gpu in gpus)
    return (
        f'<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM "{dtd}">\n<nvidia_smi_log>'
        f"<timestamp>{time.strftime('%a %b %d %H:%M:%S %Y')}</timestamp>"
        f"<driver_version>{profile['driver_version']}</driver_version>"
        f"<cuda_version>{profile['cuda_version']}</cuda_version>"
        f"<attached_gpus>{len(gpus)}</attached_gpus>{body}</nvidia_smi_log>\n"
    )


def parse_options(argv: list[str]) -> dict[str, str] | None:
    """`--opt=value`, `--opt value`, `-i N` and flags; None on anything nvidia-smi would reject."""
    options: dict[str, str] = {}
    with_value = {"--query-gpu", "--query-compute-apps", "--format", "-i", "--id"}
    flags = {"-L", "--list-gpus", "-q", "--query", "-x", "--xml-format", "--version", "-h", "--help"}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, sep, value = arg.partition("=")
        if name in with_value:
            if not sep:
                if not args:
                    return None
                value = args.pop(0)
            options[name] = value
        elif arg in flags:
            options[arg] = ""
        else:
            return None
    return options


def run(argv: list[str], profile_name: str, profiles_path: Path = PROFILES) -> tuple[str, int]:
    """What nvidia-smi prints (stdout, exit code) for argv on a host with this profile."""
    try:
        profile = load_profile(profile_name, profiles_path)
    except KeyError:
        return f"lab stand-in: unknown GPU profile {profile_name!r}\n", 255
    if profile.get("hang"):
        threading.Event().wait()  # like nvidia-smi stuck in a wedged driver: no output, no exit
    if "error" in profile:
        return profile["error"] + "\n", profile["exit_code"]
    options = parse_options(argv)
    if options is None:
        return INVALID_ARGS + "\n", 2
    gpus = expand_gpus(profile_name, profile)
    apps = expand_apps(profile, gpus)
    selected = options.get("-i", options.get("--id"))
    if selected is not None:
        if not selected.isdigit() or int(selected) >= len(gpus):
            return "No devices were found\n", 6
        gpus = [gpus[int(selected)]]
    unsupported = set(profile.get("unsupported_fields", []))
    if "--query-gpu" in options:
        return csv_query(gpus, options["--query-gpu"], options.get("--format", ""), GPU_FIELDS, unsupported)
    if "--query-compute-apps" in options:
        return csv_query(apps, options["--query-compute-apps"], options.get("--format", ""), APP_FIELDS, set())
    if "-L" in options or "--list-gpus" in options:
        return "".join(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n" for g in gpus), 0
    if "-q" in options or "--query" in options:
        xml = "-x" in options or "--xml-format" in options
        return (xml_report(profile, gpus) if xml else query_report(profile, gpus)), 0
    if "--version" in options:
        driver = profile["driver_version"]
        return (
            f"NVIDIA-SMI version  : {driver}\nNVML version        : {driver.rsplit('.', 1)[0]}\n"
            f"DRIVER version      : {driver}\nCUDA Version        : {profile['cuda_version']}\n"
        ), 0
    if "-h" in options or "--help" in options:
        return "NVIDIA System Management Interface -- lab stand-in (tests/standins/nvidia_smi)\n", 0
    return default_table(profile, gpus, apps), 0


def current_profile() -> str:
    if os.environ.get("LAB_GPU_PROFILE"):
        return os.environ["LAB_GPU_PROFILE"]
    try:
        return PROFILE_FILE.read_text().strip()
    except OSError:
        return "driver-broken"


def main() -> int:
    output, code = run(sys.argv[1:], current_profile())
    sys.stdout.write(output)
    return code


if __name__ == "__main__":
    sys.exit(main())
