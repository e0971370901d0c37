"""GPU health verdicts: the catalog's health gates (gates.yml, gpu_health) applied to one host's health
facts (llm_toolkit.host.llm_gpu_health). One function for every reader: preflight turns the findings
into its report, and the verifiers and the health probe read the same findings.

A finding is a dict: check, level ("fail", "warn", "not-measured" or "ok"), measured, required, fix.
"""

from __future__ import annotations

from llm_toolkit.host.llm_gpu import version_tuple

FAIL, WARN, NOT_MEASURED, OK = "fail", "warn", "not-measured", "ok"
RECOVERY_FIXES = {
    "Reset": "reset the GPU (nvidia-smi -r -i {index}) with nothing running on it",
    "Reboot": "reboot the host",
    "Drain P2P": "stop the peer-to-peer traffic to the GPU (drain the host), then let the driver recover it",
    "Drain and Reset": "drain the host, then reset the GPU (nvidia-smi -r -i {index})",
}


def _finding(check: str, level: str, measured, required, fix: str = "") -> dict:
    return {"check": check, "level": level, "measured": measured, "required": required, "fix": fix}


def _gpu_label(gpu: dict) -> str:
    return f"GPU {gpu['index']} ({gpu.get('pci_bus_id') or gpu.get('uuid') or 'unknown bus'})"


def assess(health: dict, gates: dict, acknowledged: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Every health finding of one host, fails first."""
    rules = gates["gpu_health"]
    findings = _gpu_findings(health, rules)
    findings += _xid_findings(health, rules, set(acknowledged))
    findings += _fabric_findings(health)
    order = {FAIL: 0, NOT_MEASURED: 1, WARN: 2, OK: 3}
    return sorted(findings, key=lambda finding: order[finding["level"]])


def _gpu_findings(health: dict, rules: dict) -> list[dict]:
    reason = health.get("not_measured", {}).get("gpus")
    if reason:  # fail closed: a GPU whose state cannot be read is not known to be fit to serve
        return [
            _finding(
                "GPU health report",
                FAIL,
                reason,
                "nvidia-smi -q -x answers",
                "check the driver (nvidia-smi -q, dmesg | grep -i nvrm); reset the GPU or reboot if it hangs",
            )
        ]
    findings = []
    for gpu in health.get("gpus", []):
        findings += _one_gpu(gpu, rules)
    return findings or [_finding("GPU health", OK, f"{len(health.get('gpus', []))} GPU(s) healthy", "-")]


def _one_gpu(gpu: dict, rules: dict) -> list[dict]:
    label, index = _gpu_label(gpu), gpu["index"]
    reset = f"reset the GPU (nvidia-smi -r -i {index}) or reboot"
    found = []
    if (gpu.get("ecc_uncorrectable_volatile") or 0) > 0:
        found.append(
            _finding(
                "uncorrectable ECC errors",
                FAIL,
                f"{label}: {gpu['ecc_uncorrectable_volatile']} uncorrectable ECC errors since the driver loaded"
                f" ({gpu.get('ecc_uncorrectable_aggregate')} in its lifetime)",
                "none since the driver loaded",
                f"{reset}; replace the GPU if they come back",
            )
        )
    if gpu.get("retirement_pending") or gpu.get("remap_pending"):
        what = "a row remap" if gpu.get("remap_pending") else "a page retirement"
        found.append(
            _finding(
                "pending memory repair",
                FAIL,
                f"{label}: {what} waits for a GPU reset",
                "no pending page retirement or row remap",
                f"{reset}, which applies it",
            )
        )
    if gpu.get("remap_failure"):
        found.append(
            _finding(
                "row remapping failure",
                FAIL,
                f"{label}: a row remap failed (no spare rows left)",
                "no row remapping failure",
                "the GPU's memory is failing: take the GPU out of service and call the vendor",
            )
        )
    action = gpu.get("recovery_action")
    if gpu.get("reset_required") or (action and action != "None"):
        shown = f"recovery action {action}" if action and action != "None" else "reset required"
        fix = RECOVERY_FIXES.get(action or "Reset", "do what nvidia-smi -q reports as GPU Recovery Action")
        found.append(_finding("GPU recovery", FAIL, f"{label}: {shown}", "no recovery action", fix.format(index=index)))
    fabric_state, fabric_status = gpu.get("fabric_state"), gpu.get("fabric_status")
    if fabric_state and (fabric_state != "Completed" or (fabric_status and fabric_status != "Success")):
        found.append(
            _finding(
                "NVSwitch fabric",
                FAIL,
                f"{label}: fabric state {fabric_state}, status {fabric_status or 'unknown'}",
                "fabric state Completed, status Success",
                "run nvidia-fabricmanager of the driver's exact version (systemctl enable --now nvidia-fabricmanager)",
            )
        )
    found += _degradations(gpu, label, rules)
    return found


def _degradations(gpu: dict, label: str, rules: dict) -> list[dict]:
    found = []
    if gpu.get("persistence_mode") is False:
        found.append(
            _finding(
                "persistence mode",
                WARN,
                f"{label}: persistence mode off",
                "on (nvidia-persistenced running)",
                "enable nvidia-persistenced (systemctl enable --now nvidia-persistenced)",
            )
        )
    width, width_max = gpu.get("pcie_width"), gpu.get("pcie_width_max")
    generation, generation_max = gpu.get("pcie_generation"), gpu.get("pcie_generation_max")
    # An idle GPU lowers its link generation to save power; a narrower link is never a power state.
    narrow = width is not None and width_max is not None and width < width_max
    slow = not gpu.get("idle") and generation is not None and generation_max is not None and generation < generation_max
    if narrow or slow:
        found.append(
            _finding(
                "PCIe link",
                WARN,
                f"{label}: PCIe gen {generation} x{width}",
                f"gen {generation_max} x{width_max}",
                "reseat the GPU or its riser, check the slot's BIOS settings: transfers to the GPU are slower",
            )
        )
    if gpu.get("slowdowns"):
        found.append(
            _finding(
                "clock slowdown",
                WARN,
                f"{label}: slowed down now ({', '.join(gpu['slowdowns'])})",
                "no hardware, thermal or power-brake slowdown",
                "check the cooling, the power supply and the power-brake signal: the GPU serves slower",
            )
        )
    temperature, slowdown = gpu.get("temperature_c"), gpu.get("slowdown_temperature_c")
    margin = rules.get("slowdown_temperature_margin_c", 5)
    if temperature is not None and slowdown is not None and temperature >= slowdown - margin:
        found.append(
            _finding(
                "temperature",
                WARN,
                f"{label}: {temperature} C",
                f"below {slowdown - margin} C (slowdown at {slowdown} C)",
                "check the cooling: the GPU slows itself down at its slowdown temperature",
            )
        )
    return found


def _xid_findings(health: dict, rules: dict, acknowledged: set[str]) -> list[dict]:
    reason = health.get("not_measured", {}).get("xid_events")
    if reason or health.get("xid_events") is None:
        return [_finding("Xid events since boot", NOT_MEASURED, reason or "no kernel log was read", "-")]
    fail, warn = rules.get("xid_fail", {}), rules.get("xid_warn", {})
    findings = []
    for event in health["xid_events"]:
        code, key = event["code"], event["key"]
        rule = fail.get(code) or warn.get(code)
        if rule is None or key in acknowledged:
            continue
        level = FAIL if code in fail else WARN
        acknowledge = f"; then reboot, or acknowledge the event with llm_gpu_health_ack: ['{key}']"
        findings.append(
            _finding(
                f"Xid {code}",
                level,
                f"{key}: {rule['meaning']}" + (f" ({event['detail']})" if event.get("detail") else ""),
                "no Xid event of the fail set since boot" if level == FAIL else "no Xid event of the warn set",
                rule["fix"] + (acknowledge if level == FAIL else ""),
            )
        )
    return findings or [_finding("Xid events since boot", OK, "none to act on", "-")]


def _fabric_findings(health: dict) -> list[dict]:
    manager = health.get("fabric_manager")
    if manager is None:
        return []
    driver = health.get("driver_version")
    problems = []
    if manager.get("state") != "active":
        problems.append(f"nvidia-fabricmanager is {manager.get('state') or 'not installed'}")
    if manager.get("version") and driver and version_tuple(manager["version"]) != version_tuple(driver):
        problems.append(f"nvidia-fabricmanager {manager['version']} with driver {driver}")
    elif not manager.get("version"):
        problems.append("nvidia-fabricmanager's version could not be read")
    if not problems:
        return [_finding("fabric manager", OK, f"active, version {manager['version']}", f"active, version {driver}")]
    return [
        _finding(
            "fabric manager",
            FAIL,
            "; ".join(problems),
            f"nvidia-fabricmanager active at the driver's version ({driver}) on an NVSwitch host",
            f"install nvidia-fabricmanager {driver} (the package of the driver's exact version) and "
            "systemctl enable --now nvidia-fabricmanager",
        )
    ]
