"""Preflight verdicts (plugins/module_utils/llm_preflight.py): every gate, its boundary and its fix."""

from pathlib import Path

import pytest
import yaml
from llm_toolkit.host.llm_gpu import collect
from llm_toolkit.host.llm_host import free_mib

from llm_toolkit import pylock
from llm_toolkit.catalog import load_gates, load_models, load_serving
from llm_toolkit.preflight import evaluate, max_cuda_for_driver
from llm_toolkit.pylock import LOCKS, Lock
from tests.unit.test_gpu_facts import FakeFiles, stand_in

REPO = Path(__file__).resolve().parents[2]
SHARED_DEFAULTS = yaml.safe_load((REPO / "roles" / "llm_defaults" / "defaults" / "main.yml").read_text())
GATES = load_gates()
MODELS = load_models()
SERVING = load_serving()
SYSTEM = {
    "distribution": "Debian",
    "distribution_version": "12.8",
    "service_mgr": "systemd",
    "memtotal_mb": 64 * 1024,
    "processor_vcpus": 16,
}
PROBES = {
    "disks": [
        {"path": "/var/lib/ollama", "measured_on": "/var/lib", "free_mib": 500_000},
        {"path": "/var/lib/vllm", "measured_on": "/var/lib", "free_mib": 500_000},
    ],
    "ports": {"11434": [], "8000": []},
}
SETTINGS = {
    "phases": ["phase1", "phase2"],
    "accelerator": "gpu",
    "model": "mixtral-8x7b-instruct",
    "vllm_format": "awq",
    "ollama_version": "0.32.15",
    "vllm_package": "vllm",
    "vllm_version": "0.33.0",
    "vllm_cuda_build": "cu130",
    "vllm_max_model_len": None,
    "vllm_gpu_memory_utilization": None,
    "vllm_concurrency": None,
    "ollama_models_dir": "/var/lib/ollama",
    "vllm_models_dir": "/var/lib/vllm",
    "disk_factor": 1.2,
    "min_ram_gb": 32,
    "min_cpu_cores": 8,
    "allow_unsupported_os": False,
    "ports": {"ollama": {"port": 11434, "unit": "ollama.service"}, "vllm": {"port": 8000, "unit": "vllm.service"}},
}


def gpu_facts(profile: str) -> dict:
    return collect(stand_in(profile), FakeFiles(), "/usr/bin/nvidia-smi")


def report(gpu=None, probes=None, system=None, **settings):
    return evaluate(
        "gpu1",
        gpu if gpu is not None else gpu_facts("4x-A100-40GB"),
        probes or PROBES,
        {**SYSTEM, **(system or {})},
        {**SETTINGS, **settings},
        GATES,
        MODELS,
        SERVING,
    )


def check(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["check"] == name)


def with_driver(driver: str, cuda: str | None = None, cap: str = "8.0") -> dict:
    gpu = gpu_facts("4x-A100-40GB")
    gpu["driver_version"] = driver
    gpu["cuda_version"] = cuda
    for card in gpu["gpus"]:
        card["compute_cap"] = cap
    return gpu


# The expected verdicts of every lab profile with the default model (Mixtral 8x7B; AWQ for vLLM 0.33.0 cu130,
# which needs driver 580.65.06: the H100 profile's R575 driver is too old for it).
@pytest.mark.parametrize(
    ("profile", "phase1", "phase2"),
    [
        ("driver-broken", "fail", "fail"),
        ("driver-mismatch", "fail", "fail"),
        ("driver-470", "fail", "fail"),
        ("1x-L4-24GB", "fail", "fail"),
        ("1x-L4-24GB-busy", "fail", "fail"),
        ("2x-A10G-24GB", "fail", "fail"),
        ("1x-A100-80GB", "pass", "fail"),
        ("4x-A100-40GB", "pass", "pass"),
        ("8x-H100-80GB", "pass", "fail"),
    ],
)
def test_every_gpu_profile_gets_its_verdict(profile, phase1, phase2):
    assert report(gpu_facts(profile))["verdict"] == {"phase1": phase1, "phase2": phase2}


def test_a_passing_host_reports_its_serving_plan():
    result = report(gpu_facts("4x-A100-40GB"))
    assert result["passed"] is True
    assert result["failures"] == []
    assert result["plan"]["tensor_parallel_size"] == 1
    assert check(result, "VRAM for mixtral-8x7b-instruct (awq)")["measured"].startswith("TP 1: ")


def test_every_failure_names_host_measured_required_and_fix():
    result = report(gpu_facts("1x-L4-24GB-busy"))
    assert len(result["failures"]) == 4
    for message in result["failures"]:
        assert message.startswith("gpu1: ")
        assert "; required: " in message
        assert "; fix: " in message


def test_no_gpu_without_cpu_opt_in_fails_and_says_how_to_opt_in():
    result = report(collect(stand_in("unused"), FakeFiles(), None))
    failure = check(result, "NVIDIA GPU and driver")
    assert not failure["ok"]
    assert "no NVIDIA GPU (no nvidia-smi, no NVIDIA PCI device)" in failure["measured"]
    assert "set llm_accelerator: cpu" in failure["fix"]


def test_cpu_opt_in_skips_the_gpu_gates_and_says_so():
    result = report(collect(stand_in("unused"), FakeFiles(), None), accelerator="cpu")
    assert result["verdict"] == {"phase1": "pass", "phase2": "pass"}
    skipped = [c for c in result["checks"] if c["skipped"]]
    assert [c["check"] for c in skipped] == ["GPU"]
    assert "GPU gates skipped" in result["summary"]
    assert not any(c["check"].startswith(("driver", "VRAM")) for c in result["checks"])


def test_a_gpu_without_a_driver_asks_for_the_driver():
    gpu = collect(stand_in("unused"), FakeFiles(), None)
    gpu["pci_devices"] = 2
    assert "install the NVIDIA driver (520.61.05 or newer)" in check(report(gpu), "NVIDIA GPU and driver")["fix"]


@pytest.mark.parametrize(
    ("modules", "secure_boot", "fix"),
    [
        ({"nvidia": False, "nouveau": True}, False, "nouveau holds the GPU: blacklist it"),
        ({"nvidia": False, "nouveau": False}, True, "Secure Boot is on and the nvidia module is not loaded"),
        ({"nvidia": False, "nouveau": False}, False, "install linux-headers-$(uname -r), run dkms autoinstall"),
    ],
)
def test_driver_not_loaded_gets_the_remediation_of_its_cause(modules, secure_boot, fix):
    gpu = gpu_facts("driver-broken")
    gpu["kernel_modules"], gpu["secure_boot"] = modules, secure_boot
    failure = check(report(gpu), "NVIDIA GPU and driver")
    assert "couldn't communicate with the NVIDIA driver" in failure["measured"]
    assert fix in failure["fix"]


def test_driver_mismatch_asks_for_a_reboot():
    assert "reboot" in check(report(gpu_facts("driver-mismatch")), "NVIDIA GPU and driver")["fix"]


def test_nouveau_loaded_fails_on_its_own():
    gpu = gpu_facts("4x-A100-40GB")
    gpu["kernel_modules"]["nouveau"] = True
    assert not check(report(gpu), "nouveau driver")["ok"]


@pytest.mark.parametrize(("driver", "ok"), [("520.61.05", True), ("520.61.04", False), ("470.256.02", False)])
def test_baseline_cuda_11_8_needs_driver_520_61_05(driver, ok):
    assert check(report(with_driver(driver)), "driver supports CUDA 11.8")["ok"] is ok


@pytest.mark.parametrize(
    ("driver", "cap", "ok"),
    [("550", "8.0", True), ("549.99", "8.0", False), ("569.9", "6.1", False), ("570", "6.1", True)],
)
def test_ollama_needs_driver_550_and_570_on_old_gpus(driver, cap, ok):
    assert check(report(with_driver(driver, cap=cap)), "driver for Ollama 0.32.15")["ok"] is ok


def test_the_default_cuda_build_is_the_one_the_vllm_role_has_a_lock_for():
    """PyPI's vLLM 0.33.0 resolves to a CUDA 13.0 stack (its lock's name and content): the default build
    and its driver gate follow it, so a GPU host with the defaults finds its lock and meets its driver."""
    default = SHARED_DEFAULTS["vllm_cuda_build"]
    assert default == "cu130"
    assert pylock.vllm_lock_builds("vllm", "0.33.0") == [default]
    assert pylock.cuda_build(pylock.pins((REPO / LOCKS["vllm"].path).read_text())) == default
    assert GATES["backends"]["vllm"]["0.33.0"]["cuda_builds"][default] == "13.0"


@pytest.mark.parametrize(
    ("driver", "ok"), [("580.65.06", True), ("580.95.05", True), ("580.65.05", False), ("575.57.08", False)]
)
def test_vllm_cu130_needs_driver_580_65_06(driver, ok):
    assert check(report(with_driver(driver)), "driver for vLLM 0.33.0 (cu130)")["ok"] is ok


@pytest.mark.parametrize(("build", "driver", "ok"), [("cu129", "575.51.03", True), ("cu129", "575.51.02", False)])
def test_a_build_of_an_operators_lock_is_gated_by_its_own_cuda(build, driver, ok):
    assert check(report(with_driver(driver), vllm_cuda_build=build), f"driver for vLLM 0.33.0 ({build})")["ok"] is ok


def test_a_driver_too_old_for_the_default_is_told_the_build_that_fits_and_that_it_needs_a_lock():
    failure = check(report(gpu_facts("8x-H100-80GB")), "driver for vLLM 0.33.0 (cu130)")
    assert not failure["ok"]
    assert failure["required"] == "driver 580.65.06 or newer (CUDA 13.0)"
    assert failure["fix"] == (
        "upgrade the NVIDIA driver to 580.65.06 or newer, or use the cu129 build, which this driver runs "
        "(the vllm role has a lock for cu130 of vllm 0.33.0 only): set vllm_cuda_build: cu129 and vllm_pip_lock "
        "to a hash-pinned lock of that build"
    )
    older = check(report(gpu_facts("1x-A100-80GB")), "driver for vLLM 0.33.0 (cu130)")
    assert "use the cu128 build, which this driver runs" in older["fix"]
    assert report(gpu_facts("1x-A100-80GB"), vllm_cuda_build="cu128")["verdict"]["phase2"] == "pass"


def test_a_build_that_fits_and_has_a_lock_is_offered_as_a_plain_switch(monkeypatch):
    monkeypatch.setitem(LOCKS, "vllm-cu129", Lock("roles/vllm/files/locks/vllm-0.33.0-cu129-x86_64.txt", "test"))
    failure = check(report(gpu_facts("8x-H100-80GB")), "driver for vLLM 0.33.0 (cu130)")
    assert failure["fix"] == "upgrade the NVIDIA driver to 580.65.06 or newer, or set vllm_cuda_build: cu129"


def test_a_driver_too_old_for_every_build_is_told_only_to_upgrade():
    failure = check(report(gpu_facts("2x-A10G-24GB")), "driver for vLLM 0.33.0 (cu130)")
    assert failure["fix"] == "upgrade the NVIDIA driver to 580.65.06 or newer"


def test_unknown_pins_are_refused_until_their_gates_are_added():
    result = report(vllm_version="0.99.0", ollama_version="9.9.9")
    assert not check(result, "vLLM version")["ok"]
    assert not check(result, "Ollama version")["ok"]


def test_vllm_needs_compute_capability_7_5():
    assert not check(report(with_driver("580.95.05", cap="7.0")), "compute capability for vLLM")["ok"]
    assert check(report(with_driver("580.95.05", cap="7.5")), "compute capability for vLLM")["ok"]


def test_the_vram_gate_is_the_planners_verdict_and_carries_its_suggestions():
    failure = check(report(gpu_facts("1x-L4-24GB")), "VRAM for mixtral-8x7b-instruct (awq)")
    assert not failure["ok"]
    assert "2 GPUs of 23034 MiB fit with TP 2" in failure["fix"]


def test_the_ollama_model_must_fit_in_gpu_memory():
    assert not check(report(gpu_facts("1x-L4-24GB")), "GPU memory for mixtral:8x7b-instruct-v0.1-q4_K_M")["ok"]
    assert check(report(gpu_facts("2x-A10G-24GB")), "GPU memory for mixtral:8x7b-instruct-v0.1-q4_K_M")["ok"]


def test_foreign_gpu_processes_are_named_and_our_own_services_are_not():
    gpu = gpu_facts("1x-L4-24GB-busy")
    failure = check(report(gpu), "GPU memory held by other processes")
    assert failure["measured"] == "PID 4242 (/usr/bin/python3) holds 8192 MiB"
    gpu["compute_apps"][0]["unit"] = "ollama.service"
    assert check(report(gpu), "GPU memory held by other processes")["ok"]


def test_mig_enabled_fails_with_the_command_to_disable_it():
    gpu = gpu_facts("4x-A100-40GB")
    gpu["gpus"][2]["mig_mode"] = "Enabled"
    failure = check(report(gpu), "MIG")
    assert failure["measured"] == "MIG enabled on GPU 2"
    assert "nvidia-smi -i 2 -mig 0" in failure["fix"]


@pytest.mark.parametrize(("free_mib", "ok"), [(30_213, True), (30_212, False)])
def test_free_disk_must_reach_1_2_times_the_download(free_mib, ok):
    # Ollama's Mixtral download is 26.4 GB = 25,177.0 MiB; x 1.2 = 30,212.4 -> 30,213 MiB.
    probes = {**PROBES, "disks": [{"path": "/var/lib/ollama", "measured_on": "/var/lib", "free_mib": free_mib}]}
    assert check(report(probes=probes), "free disk for the Ollama model")["ok"] is ok


# Mixtral's AWQ weights are 24.7 GB = 23,555.8 MiB; x 1.2 = 28,266.9 MiB a revision.
@pytest.mark.parametrize(
    ("kept", "on_disk", "free_mib", "ok"),
    [
        (2, 0, 56_534, True),  # a new host: room for both revisions kept
        (2, 0, 56_533, False),
        (2, 1, 28_267, True),  # one revision there: room for the second
        (2, 2, 28_267, True),  # both there: room for the next one, downloaded before the oldest goes
        (2, 2, 28_266, False),
        (1, 0, 28_267, True),
    ],
)
def test_free_disk_for_vllm_counts_the_model_revisions_kept(kept, on_disk, free_mib, ok):
    disk = {"path": "/var/lib/vllm", "measured_on": "/var/lib", "free_mib": free_mib, "directories": on_disk}
    result = report(probes={**PROBES, "disks": [disk]}, vllm_releases_kept=kept)
    gate = check(result, "free disk for the vLLM weights")
    assert gate["ok"] is ok, gate
    if kept - on_disk > 1:
        assert "x 2 revisions, vllm_releases_kept=2" in gate["required"]
        assert ok or "lower vllm_releases_kept" in gate["fix"]


def test_the_disk_probe_counts_the_directories_of_the_models_directory(tmp_path):
    for name in ("tiny@aaa", "tiny@bbb"):
        (tmp_path / name).mkdir()
    (tmp_path / "stray-file").write_text("x")
    assert free_mib(str(tmp_path))["directories"] == 2
    absent = free_mib(str(tmp_path / "models"))
    assert absent["directories"] == 0 and absent["measured_on"] == str(tmp_path)


def test_ports_must_be_free_or_held_by_our_own_unit():
    held = {
        **PROBES,
        "ports": {
            "11434": [{"pid": 99, "user": "alice", "executable": "/usr/bin/nc", "unit": "session-1.scope"}],
            "8000": [{"pid": 7, "user": "vllm", "executable": "/opt/vllm/venv/bin/python3", "unit": "vllm.service"}],
        },
    }
    result = report(probes=held)
    assert check(result, "port 11434")["measured"] == "held by PID 99 (/usr/bin/nc, user alice)"
    assert not check(result, "port 11434")["ok"]
    assert check(result, "port 8000")["ok"]


@pytest.mark.parametrize(("ram_gb", "cores", "ram_ok", "cores_ok"), [(32, 8, True, True), (31.9, 7, False, False)])
def test_ram_and_cores_floors(ram_gb, cores, ram_ok, cores_ok):
    result = report(system={"memtotal_mb": ram_gb * 1024, "processor_vcpus": cores})
    assert (check(result, "RAM")["ok"], check(result, "CPU cores")["ok"]) == (ram_ok, cores_ok)


@pytest.mark.parametrize(
    ("distribution", "version", "ok"),
    [
        ("Debian", "12.8", True),
        ("Debian", "13.1", True),
        ("Ubuntu", "22.04", True),
        ("Ubuntu", "24.04", True),
        ("Ubuntu", "20.04", False),
        ("Debian", "11.9", False),
        ("Rocky", "9.4", False),
    ],
)
def test_supported_operating_systems(distribution, version, ok):
    result = report(system={"distribution": distribution, "distribution_version": version})
    assert check(result, "operating system")["ok"] is ok


def test_the_os_escape_hatch_accepts_and_says_so():
    result = report(system={"distribution": "Rocky", "distribution_version": "9.4"}, allow_unsupported_os=True)
    assert check(result, "operating system")["skipped"] is True
    assert "allowed by llm_preflight_allow_unsupported_os" in result["summary"]


def test_systemd_must_be_the_service_manager():
    assert not check(report(system={"service_mgr": "openrc"}), "service manager")["ok"]


def test_only_the_phases_asked_for_are_gated():
    result = report(gpu_facts("1x-A100-80GB"), phases=["phase1"])
    assert result["verdict"] == {"phase1": "pass"}
    assert result["passed"] is True
    assert all(c["phases"] == ["phase1"] or set(c["phases"]) == {"phase1"} for c in result["checks"])


def test_max_cuda_for_a_driver_follows_the_table():
    assert max_cuda_for_driver("550.54.15", GATES["cuda_min_driver"]) == "12.4"
    assert max_cuda_for_driver("470.256.02", GATES["cuda_min_driver"]) is None
    assert max_cuda_for_driver("590.44.01", GATES["cuda_min_driver"]) == "13.1"


def test_a_hung_nvidia_smi_fails_the_gpu_check_in_one_line_with_the_fix():
    gpu = gpu_facts("driver-broken")
    gpu["state"], gpu["error"] = "timed-out", "`nvidia-smi --query-gpu=index`: nvidia-smi did not finish within 60 s"
    failure = check(report(gpu), "NVIDIA GPU and driver")
    assert not failure["ok"]
    assert failure["measured"].startswith("nvidia-smi hangs: `nvidia-smi --query-gpu=index`")
    assert "Xid" in failure["fix"] and "reboot" in failure["fix"]
    assert "\n" not in failure["measured"] + failure["fix"]
