"""Preflight verdicts: every gate of the catalog's gates.yml applied to one host's facts.

Pure Python on the controller: the facts come from the nvidia_gpu_facts and llm_host_facts
modules and Ansible's own facts; the report says, per check, what was measured, what is
required, and how to fix it, and gives a verdict per phase.
"""

from __future__ import annotations

import math

from llm_toolkit import gpu_health, pylock
from llm_toolkit.host.llm_gpu import version_tuple
from llm_toolkit.planner import PlanError, lowest_compute_cap, plan, request_for_gpus

PHASES = ("phase1", "phase2")
MIB = 2**20


class Report:
    def __init__(self, host: str, phases: list[str]):
        self.host = host
        self.phases = phases
        self.checks: list[dict] = []

    def add(self, check: str, phases, ok: bool, measured, required, fix: str = "", skipped: bool = False):
        phases = [phase for phase in phases if phase in self.phases]
        if not phases:
            return
        self.checks.append(
            {
                "check": check,
                "phases": phases,
                "ok": bool(ok),
                "skipped": skipped,
                "measured": measured,
                "required": required,
                "fix": "" if ok else fix,
                "message": "" if ok else f"{self.host}: {check}: {measured}; required: {required}; fix: {fix}",
            }
        )

    def skip(self, check: str, phases, why: str):
        self.add(check, phases, True, why, "-", skipped=True)

    def warn(self, check: str, phases, measured, required, fix: str):
        """A degradation worth a line in the report: it passes the gate, and says what to do about it."""
        self.add(check, phases, True, measured, required)
        if self.checks and self.checks[-1]["check"] == check:
            self.checks[-1].update(
                warning=True, fix=fix, message=f"{self.host}: {check}: {measured}; expected: {required}; fix: {fix}"
            )

    def as_dict(self, **extra) -> dict:
        verdicts = {
            phase: "fail" if any(not c["ok"] and phase in c["phases"] for c in self.checks) else "pass"
            for phase in self.phases
        }
        failures = [c["message"] for c in self.checks if not c["ok"]]
        warnings = [c["message"] for c in self.checks if c.get("warning")]
        summary = f"{self.host}: " + ", ".join(f"{phase} {verdict}" for phase, verdict in verdicts.items())
        skipped = [c["measured"] for c in self.checks if c["skipped"]]
        if skipped:
            summary += " (" + "; ".join(skipped) + ")"
        return {
            "host": self.host,
            "phases": self.phases,
            "verdict": verdicts,
            "passed": not failures,
            "summary": summary,
            "failures": failures,
            "warnings": warnings,
            "checks": self.checks,
            **extra,
        }


def process_label(entry: dict) -> str:
    """A foreign process as reports show it: executable and user, never its arguments (they may hold secrets)."""
    executable = entry.get("executable") or entry.get("process_name") or "unknown"
    return f"{executable}, user {entry['user']}" if entry.get("user") else executable


def max_cuda_for_driver(driver: str | None, table: dict) -> str | None:
    """The newest CUDA version in the table that this driver supports."""
    best = None
    for cuda, minimum in table.items():
        if version_tuple(driver) >= version_tuple(minimum) and (
            best is None or version_tuple(cuda) > version_tuple(best)
        ):
            best = cuda
    return best


def evaluate(
    host: str, gpu: dict, probes: dict, system: dict, settings: dict, gates: dict, models: dict, serving: dict
) -> dict:
    """The preflight report of one host (see the module docstring)."""
    report = Report(host, [phase for phase in settings["phases"] if phase in PHASES])
    _system_checks(report, system, settings, gates)
    _disk_and_port_checks(report, probes, settings, models)
    plan_result = None
    if settings["accelerator"] == "cpu":
        report.skip("GPU", PHASES, "CPU accelerator set in the inventory (llm_accelerator: cpu): GPU gates skipped")
    elif _gpu_usable(report, gpu, settings, gates):
        plan_result = _gpu_checks(report, gpu, settings, gates, models, serving)
    measured_gpu = {key: gpu.get(key) for key in ("state", "error", "driver_version", "cuda_version", "fallbacks")}
    measured_gpu["gpus"] = [
        {key: card.get(key) for key in ("index", "name", "memory_total_mib", "compute_cap")}
        for card in gpu.get("gpus", [])
    ]
    return report.as_dict(accelerator=settings["accelerator"], gpu=measured_gpu, plan=plan_result)


def _system_checks(report: Report, system: dict, settings: dict, gates: dict) -> None:
    distribution, version = system.get("distribution"), str(system.get("distribution_version", ""))
    major = version if distribution == "Ubuntu" else version.split(".", maxsplit=1)[0]
    supported = major in gates["supported_os"].get(distribution, [])
    wanted = "; ".join(f"{name} {', '.join(versions)}" for name, versions in gates["supported_os"].items())
    if not supported and settings["allow_unsupported_os"]:
        report.skip(
            "operating system", PHASES, f"{distribution} {version} allowed by llm_preflight_allow_unsupported_os"
        )
    else:
        report.add(
            "operating system",
            PHASES,
            supported,
            f"{distribution} {version}",
            wanted,
            "use a supported OS, or set llm_preflight_allow_unsupported_os: true to accept the risk",
        )
    report.add(
        "service manager",
        PHASES,
        system.get("service_mgr") == "systemd",
        system.get("service_mgr"),
        "systemd",
        "use a host booted with systemd as PID 1",
    )
    ram_gb = round(system.get("memtotal_mb", 0) / 1024, 1)
    report.add(
        "RAM",
        PHASES,
        ram_gb >= settings["min_ram_gb"],
        f"{ram_gb} GiB",
        f"{settings['min_ram_gb']} GiB",
        "add memory, or lower llm_preflight_min_ram_gb for a smaller model",
    )
    cores = system.get("processor_vcpus", 0)
    report.add(
        "CPU cores",
        PHASES,
        cores >= settings["min_cpu_cores"],
        cores,
        settings["min_cpu_cores"],
        "add cores, or lower llm_preflight_min_cpu_cores for a smaller model",
    )


def _disk_and_port_checks(report: Report, probes: dict, settings: dict, models: dict) -> None:
    entry = models[settings["model"]]
    needs = {
        "phase1": (settings["ollama_models_dir"], entry["ollama"]["download_gb"], "Ollama model", 1),
        "phase2": (
            settings["vllm_models_dir"],
            entry["formats"][settings["vllm_format"]]["weights_gb"],
            "vLLM weights",
            int(settings.get("vllm_releases_kept", 1)),
        ),
    }
    disks = {disk["path"]: disk for disk in probes.get("disks", [])}
    for phase, (path, size_gb, what, kept) in needs.items():
        disk = disks.get(path)
        if disk is None:
            continue
        # vLLM keeps `kept` model revisions (docs/upgrades.md): room for those not on disk yet, and always
        # for one more (the next revision is downloaded before the oldest is removed). Ollama's kept is 1.
        revisions = max(1, kept - disk.get("directories", 0))
        required = math.ceil(size_gb * 1e9 / MIB * settings["disk_factor"] * revisions)
        times = f" x {revisions} revisions, vllm_releases_kept={kept}" if revisions > 1 else ""
        report.add(
            f"free disk for the {what}",
            [phase],
            disk["free_mib"] >= required,
            f"{disk['free_mib']} MiB free on {disk['measured_on']} (for {path})",
            f"{required} MiB ({settings['disk_factor']} x {size_gb} GB{times})",
            f"free space on {disk['measured_on']}, or point the models directory at a larger disk"
            + (", or lower vllm_releases_kept" if revisions > 1 else ""),
        )
    for phase, port_setting in (("phase1", settings["ports"]["ollama"]), ("phase2", settings["ports"]["vllm"])):
        port, unit = port_setting["port"], port_setting["unit"]
        listeners = probes.get("ports", {}).get(str(port), [])
        foreign = [entry for entry in listeners if entry.get("unit") != unit]
        holders = ", ".join(f"PID {entry['pid']} ({process_label(entry)})" for entry in foreign)
        report.add(
            f"port {port}",
            [phase],
            not foreign,
            f"held by {holders}" if foreign else "free",
            f"free, or held by {unit}",
            f"stop the process holding port {port}, or choose another port",
        )


def _gpu_usable(report: Report, gpu: dict, settings: dict, gates: dict) -> bool:
    state = gpu.get("state")
    modules = gpu.get("kernel_modules", {})
    report.add(
        "nouveau driver",
        PHASES,
        not modules.get("nouveau"),
        "nouveau loaded" if modules.get("nouveau") else "-",
        "nouveau not loaded",
        "blacklist nouveau (/etc/modprobe.d/blacklist-nouveau.conf), run update-initramfs -u, and reboot",
    )
    if state == "ok" and gpu.get("gpus"):
        return True
    floor = gates["cuda_min_driver"][gates["baseline_cuda"]]
    if state == "not-installed" and not gpu.get("pci_devices"):
        measured = "no NVIDIA GPU (no nvidia-smi, no NVIDIA PCI device)"
        fix = "use a GPU host, or set llm_accelerator: cpu in the inventory of a lab, development or CI host"
    elif state == "not-installed":
        measured = f"{gpu['pci_devices']} NVIDIA PCI device(s) but no nvidia-smi: the driver is not installed"
        fix = f"install the NVIDIA driver ({floor} or newer), then reboot"
    elif state == "driver-not-loaded":
        measured = f"nvidia-smi: {gpu.get('error')}"
        fix = _driver_not_loaded_fix(gpu)
    elif state == "driver-mismatch":
        measured = f"nvidia-smi: {gpu.get('error')}"
        fix = (
            "the driver was upgraded without a reboot (user-space library and kernel module differ): reboot, and "
            "keep nvidia packages out of unattended-upgrades"
        )
    elif state == "timed-out":
        measured = f"nvidia-smi hangs: {gpu.get('error')}"
        fix = (
            "the GPU or its driver is wedged: look for Xid errors (dmesg | grep -i xid), then reset the GPU "
            "(nvidia-smi -r) or reboot the host"
        )
    else:
        measured = f"nvidia-smi state {state}: {gpu.get('error')}"
        fix = "check the driver with nvidia-smi and dmesg | grep -i nvrm"
    report.add("NVIDIA GPU and driver", PHASES, False, measured, "a working NVIDIA driver and at least one GPU", fix)
    return False


def _driver_not_loaded_fix(gpu: dict) -> str:
    modules = gpu.get("kernel_modules", {})
    if modules.get("nouveau"):
        return "nouveau holds the GPU: blacklist it, run update-initramfs -u, and reboot"
    if gpu.get("secure_boot") and not modules.get("nvidia"):
        return (
            "Secure Boot is on and the nvidia module is not loaded: enroll the DKMS signing key (mokutil --import) "
            "or disable Secure Boot, then reboot"
        )
    return (
        "load the module (modprobe nvidia); if that fails, DKMS has no module for the running kernel: install "
        "linux-headers-$(uname -r), run dkms autoinstall, and reboot"
    )


def _gpu_checks(report: Report, gpu: dict, settings: dict, gates: dict, models: dict, serving: dict) -> dict | None:
    driver, gpus = gpu.get("driver_version"), gpu["gpus"]
    table = gates["cuda_min_driver"]
    cuda = gpu.get("cuda_version") or max_cuda_for_driver(driver, table)
    measured_driver = f"driver {driver} (CUDA {cuda or 'unknown'})"
    baseline = gates["baseline_cuda"]
    report.add(
        f"driver supports CUDA {baseline}",
        PHASES,
        version_tuple(driver) >= version_tuple(table[baseline]),
        measured_driver,
        f"driver {table[baseline]} or newer (CUDA {baseline})",
        f"upgrade the NVIDIA driver to {table[baseline]} or newer",
    )
    lowest_cc = lowest_compute_cap(gpus)
    mig = [str(g["index"]) for g in gpus if g.get("mig_mode") == "Enabled"]
    report.add(
        "MIG",
        PHASES,
        not mig,
        f"MIG enabled on GPU {', '.join(mig)}" if mig else "disabled",
        "MIG disabled",
        f"disable MIG (nvidia-smi -i {','.join(mig) or 'N'} -mig 0, then reset the GPU): the toolkit sizes whole GPUs",
    )
    foreign = [app for app in gpu.get("compute_apps", []) if app.get("unit") not in gates["own_units"]]
    holders = "; ".join(
        f"PID {app['pid']} ({process_label(app)}) holds {app['used_memory_mib']} MiB" for app in foreign
    )
    report.add(
        "GPU memory held by other processes",
        PHASES,
        not foreign,
        holders or "none",
        "none",
        "stop those processes (they are not the toolkit's services); check with nvidia-smi",
    )
    if "health" in gpu:
        _health_checks(report, gpu["health"], settings, gates)
    _ollama_checks(report, gpu, settings, gates, models, lowest_cc, measured_driver)
    return _vllm_checks(report, gpu, settings, gates, models, serving, lowest_cc, measured_driver)


def _health_checks(report: Report, health: dict, settings: dict, gates: dict) -> None:
    """The GPU health gates (llm_toolkit.gpu_health): fail states fail both phases, degradations warn."""
    for finding in gpu_health.assess(health, gates, settings.get("gpu_health_ack", [])):
        check, measured, required = finding["check"], finding["measured"], finding["required"]
        if finding["level"] == gpu_health.NOT_MEASURED:
            report.skip(check, PHASES, f"{check} not measured: {measured}")
        elif finding["level"] == gpu_health.WARN:
            report.warn(check, PHASES, measured, required, finding["fix"])
        else:
            report.add(check, PHASES, finding["level"] == gpu_health.OK, measured, required, finding["fix"])


def _ollama_checks(report, gpu, settings, gates, models, lowest_cc, measured_driver) -> None:
    pin = gates["backends"]["ollama"].get(settings["ollama_version"])
    if pin is None:
        report.add(
            "Ollama version",
            ["phase1"],
            False,
            settings["ollama_version"],
            f"one of {', '.join(gates['backends']['ollama'])}",
            "add its gates to src/llm_toolkit/catalog/gates.yml",
        )
        return
    old_gpu = lowest_cc and version_tuple(lowest_cc) < version_tuple(pin["old_gpu_below_compute_capability"])
    floor = pin["old_gpu_min_driver"] if old_gpu else pin["min_driver"]
    report.add(
        f"driver for Ollama {settings['ollama_version']}",
        ["phase1"],
        version_tuple(gpu["driver_version"]) >= version_tuple(floor),
        measured_driver,
        f"driver {floor} or newer",
        f"upgrade the NVIDIA driver to {floor} or newer (Ollama's CUDA runners need it)",
    )
    report.add(
        "compute capability for Ollama",
        ["phase1"],
        bool(lowest_cc) and version_tuple(lowest_cc) >= version_tuple(pin["min_compute_capability"]),
        lowest_cc or "unknown",
        f"{pin['min_compute_capability']} or higher",
        "use a newer GPU",
    )
    total = sum(g.get("memory_total_mib") or 0 for g in gpu["gpus"])
    tag = models[settings["model"]]["ollama"]["tag"]
    needed = math.ceil(models[settings["model"]]["ollama"]["download_gb"] * 1e9 / MIB * 1.1)
    report.add(
        f"GPU memory for {tag}",
        ["phase1"],
        total >= needed,
        f"{total} MiB on {len(gpu['gpus'])} GPU(s)",
        f"{needed} MiB (the model plus 10% for context)",
        "use a smaller model or quantization, or more GPU memory; otherwise Ollama runs it partly on the CPU",
    )


def _other_build(gpu: dict, settings: dict, gates: dict, pin: dict) -> str:
    """The remediation's alternative to a driver upgrade: the newest other CUDA build this driver runs,
    which the vllm role installs from its own lock, or else from a lock the operator supplies."""
    driver = version_tuple(gpu["driver_version"])
    fitting = sorted(
        (
            b
            for b, cuda in pin["cuda_builds"].items()
            if b != settings["vllm_cuda_build"] and driver >= version_tuple(gates["cuda_min_driver"][cuda])
        ),
        key=lambda b: version_tuple(pin["cuda_builds"][b]),
        reverse=True,
    )
    if not fitting:
        return ""
    package, version = settings["vllm_package"], settings["vllm_version"]
    locked = pylock.vllm_lock_builds(package, version)
    with_lock = [b for b in fitting if b in locked]
    if with_lock:
        return f", or set vllm_cuda_build: {with_lock[0]}"
    return (
        f", or use the {fitting[0]} build, which this driver runs (the vllm role has a lock for "
        f"{', '.join(locked) or 'no build'} of {package} {version} only): set vllm_cuda_build: {fitting[0]} "
        f"and vllm_pip_lock to a hash-pinned lock of that build"
    )


def _vllm_checks(report, gpu, settings, gates, models, serving, lowest_cc, measured_driver) -> dict | None:
    pin = gates["backends"]["vllm"].get(settings["vllm_version"])
    build = settings["vllm_cuda_build"]
    if pin is None or build not in pin["cuda_builds"]:
        report.add(
            "vLLM version",
            ["phase2"],
            False,
            f"{settings['vllm_version']} {build}",
            "a version and CUDA build listed in src/llm_toolkit/catalog/gates.yml",
            "add its gates to src/llm_toolkit/catalog/gates.yml",
        )
        return None
    cuda = pin["cuda_builds"][build]
    floor = gates["cuda_min_driver"][cuda]
    report.add(
        f"driver for vLLM {settings['vllm_version']} ({build})",
        ["phase2"],
        version_tuple(gpu["driver_version"]) >= version_tuple(floor),
        measured_driver,
        f"driver {floor} or newer (CUDA {cuda})",
        f"upgrade the NVIDIA driver to {floor} or newer{_other_build(gpu, settings, gates, pin)}",
    )
    report.add(
        "compute capability for vLLM",
        ["phase2"],
        bool(lowest_cc) and version_tuple(lowest_cc) >= version_tuple(pin["min_compute_capability"]),
        lowest_cc or "unknown",
        f"{pin['min_compute_capability']} or higher",
        "use a newer GPU",
    )
    try:
        result = plan(
            request_for_gpus(
                settings["model"],
                settings["vllm_format"],
                gpu["gpus"],
                max_model_len=settings.get("vllm_max_model_len"),
                gpu_memory_utilization=settings.get("vllm_gpu_memory_utilization"),
                concurrency=settings.get("vllm_concurrency"),
                fallback_warm=settings.get("fallback_warm", False) is True,
            ),
            models[settings["model"]],
            serving,
        )
    except PlanError as error:
        report.add("vLLM serving plan", ["phase2"], False, str(error), "valid planner inputs", "fix the variable named")
        return None
    budget = result["per_gpu_mib"]
    if result["fits"]:
        measured = f"TP {result['tensor_parallel_size']}: {budget['needed']} of {budget['available']} MiB per GPU"
    else:
        measured = f"nothing fits ({result['rejected'][-1]['reason']})"
    report.add(
        f"VRAM for {settings['model']} ({settings['vllm_format']})",
        ["phase2"],
        result["fits"],
        measured,
        "a valid tensor-parallel size that fits",
        "; or ".join(result["suggestions"]) or "use larger GPUs",
    )
    return result
