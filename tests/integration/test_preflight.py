"""Preflight on lab hosts: the right verdict for every simulated GPU, nothing changed, every problem reported."""

import json
import math
import shutil
from pathlib import Path

import pytest
import testinfra

from tests.integration.conftest import (
    LAB_HOME,
    REPO,
    SESSION_LAB,
    SESSION_PROFILES,
    lab,
    leftovers,
    require_lab,
    run_playbook,
)

MIB = 2**20
FRESH_LAB = "pflab"
# Expected verdicts with the default model (Mixtral 8x7B; Ollama 0.32.15; vLLM 0.33.0 cu130 serving AWQ,
# which needs driver 580.65.06: the H100 profile's R575 fails phase 2), before the disk gate, which
# depends on this machine's free space (see expected()).
VERDICTS = {
    "none": ("fail", "fail"),
    "driver-broken": ("fail", "fail"),
    "driver-mismatch": ("fail", "fail"),
    "driver-470": ("fail", "fail"),
    "1x-L4-24GB": ("fail", "fail"),
    "1x-L4-24GB-busy": ("fail", "fail"),
    "2x-A10G-24GB": ("fail", "fail"),
    "1x-A100-80GB": ("pass", "fail"),
    "4x-A100-40GB": ("pass", "pass"),
    "8x-H100-80GB": ("pass", "fail"),
    # GPU health (docs/gpu-health.md): fail states fail both phases; a degradation only warns.
    "4x-A100-40GB-remap-pending": ("fail", "fail"),
    "8x-H100-80GB-fabric-in-progress": ("fail", "fail"),
    "1x-L4-24GB-thermal-slowdown": ("fail", "fail"),
}
REMEDIATIONS = {
    "none": "set llm_accelerator: cpu in the inventory",
    "driver-broken": "modprobe nvidia",
    "driver-mismatch": "reboot",
    "driver-470": "upgrade the NVIDIA driver to 520.61.05 or newer",
    "1x-L4-24GB-busy": "PID 4242 (/usr/bin/python3) holds 8192 MiB",
    "2x-A10G-24GB": "upgrade the NVIDIA driver to 550 or newer",
    "1x-A100-80GB": "or use the cu128 build, which this driver runs",
    "8x-H100-80GB": "upgrade the NVIDIA driver to 580.65.06 or newer, or use the cu129 build",
    "4x-A100-40GB-remap-pending": "a row remap waits for a GPU reset; required: no pending page retirement or row"
    " remap; fix: reset the GPU (nvidia-smi -r -i 1) or reboot, which applies it",
    "8x-H100-80GB-fabric-in-progress": "fabric state In Progress, status unknown; required: fabric state Completed",
    "1x-L4-24GB-thermal-slowdown": "clock slowdown: GPU 0 (00000000:10:00.0): slowed down now (hw_thermal_slowdown)",
}
# Both phases gated whatever is enabled (by default preflight gates the backends enabled on each host).
BOTH_PHASES = ["-e", '{"llm_preflight_phases": ["phase1", "phase2"]}']
# The default model, gated for both phases.
DEFAULT_MODEL = ["-e", "llm_model=mixtral-8x7b-instruct", *BOTH_PHASES]


def expected(profile: str) -> dict:
    """Verdicts for a profile, with the disk gate applied to the free space this machine really has."""
    free = shutil.disk_usage(LAB_HOME).free / MIB
    disk_ok = {
        "phase1": free >= math.ceil(26.4e9 / MIB * 1.2),
        # No model revision on these hosts yet: room for the two that vllm_releases_kept keeps.
        "phase2": free >= math.ceil(24.7e9 / MIB * 1.2 * 2),
    }
    phase1, phase2 = VERDICTS[profile]
    return {
        "phase1": phase1 if disk_ok["phase1"] else "fail",
        "phase2": phase2 if disk_ok["phase2"] else "fail",
    }


def reports(directory) -> dict:
    return {path.stem: json.loads(path.read_text()) for path in directory.glob("*.json")}


def without_free_space(found: dict) -> dict:
    """Reports with the free-disk figures left out: other processes write to the same disk between
    two runs; the verdicts of the disk checks stay in."""
    for report in found.values():
        for check in report["checks"]:
            if check["check"].startswith("free disk"):
                check.pop("measured")
    return found


@pytest.fixture
def restore_profiles(session_lab):
    yield
    for host, profile in SESSION_PROFILES.items():
        lab(SESSION_LAB, "gpu", host, profile)


def test_every_gpu_profile_gets_the_right_verdict_and_remediation(session_lab, restore_profiles, tmp_path):
    profiles = list(VERDICTS)
    hosts = session_lab.hosts
    for batch_start in range(0, len(profiles), len(hosts)):
        batch = dict(zip(hosts, profiles[batch_start : batch_start + len(hosts)], strict=False))
        for host, profile in batch.items():
            lab(SESSION_LAB, "gpu", host, profile)
        report_dir = tmp_path / f"batch{batch_start}"
        run = session_lab.playbook(
            *DEFAULT_MODEL,
            "-e",
            "llm_accelerator=gpu",
            "-e",
            f"llm_preflight_report_dir={report_dir}",
            playbook="playbooks/preflight.yml",
        )
        found = reports(report_dir)
        for host, profile in batch.items():
            assert found[host]["verdict"] == expected(profile), (profile, found[host]["failures"])
            if profile in REMEDIATIONS:  # printed, and in the report (warnings are printed as a YAML list)
                said = " ".join(found[host]["failures"] + found[host]["warnings"])
                assert REMEDIATIONS[profile] in run.output or REMEDIATIONS[profile] in said, profile
        assert (run.returncode == 0) == all(report["passed"] for report in found.values())


def test_check_mode_gives_the_same_verdicts(session_lab, restore_profiles, tmp_path):
    lab(SESSION_LAB, "gpu", "itest1", "1x-L4-24GB-busy")
    normal, check = tmp_path / "normal", tmp_path / "check"
    session_lab.playbook(*DEFAULT_MODEL, "-e", f"llm_preflight_report_dir={normal}", playbook="playbooks/preflight.yml")
    session_lab.playbook(
        *DEFAULT_MODEL, "--check", "-e", f"llm_preflight_report_dir={check}", playbook="playbooks/preflight.yml"
    )
    assert without_free_space(reports(normal)) == without_free_space(reports(check))
    assert reports(check)["itest1"]["verdict"] == {"phase1": "fail", "phase2": "fail"}


@pytest.fixture
def fresh_hosts():
    """Two hosts that nothing has converged yet (the session lab's are converged by `make lab`)."""
    require_lab()
    lab(FRESH_LAB, "down")
    try:
        lab(FRESH_LAB, "up", "2", "--gpu", f"{FRESH_LAB}1=4x-A100-40GB", "--gpu", f"{FRESH_LAB}2=driver-broken")
        inventory = Path(lab(FRESH_LAB, "inventory").stdout.strip()).parent
        yield inventory
    finally:
        lab(FRESH_LAB, "down")
    assert leftovers(FRESH_LAB) == []


def test_a_failed_preflight_stops_every_host_before_anything_changes(fresh_hosts, tmp_path):
    run = run_playbook(
        "-i", str(fresh_hosts), "playbooks/site.yml", *BOTH_PHASES, "-e", f"llm_preflight_report_dir={tmp_path}"
    )
    assert run.returncode != 0
    assert f"{FRESH_LAB}2: NVIDIA GPU and driver" in run.output
    assert all(run.recap[name]["changed"] == 0 for name in (f"{FRESH_LAB}1", f"{FRESH_LAB}2"))
    for name in (f"{FRESH_LAB}1", f"{FRESH_LAB}2"):
        host = testinfra.get_host(f"ansible://{name}", ansible_inventory=str(fresh_hosts))
        assert not host.file("/etc/ansible/facts.d/llm_toolkit.fact").exists, name
        assert not host.file("/etc/llm-toolkit").exists, name
    assert reports(tmp_path)[f"{FRESH_LAB}1"]["passed"] is True


def test_an_xid_since_boot_fails_the_gpu_host_until_it_is_acknowledged(session_lab, tmp_path):
    """Issue 16: an Xid of the fail set in the host's kernel log (the lab's file, llm_gpu_kernel_log_command)
    fails both phases with its meaning and the key that acknowledges it; acknowledged, it fails no more."""
    host = session_lab.host("itest1")
    line = (
        "2026-12-07T09:14:55+0000 itest1 kernel: NVRM: Xid (PCI:0000:10:00): 79, pid=2417, GPU has fallen off the bus."
    )
    key = "Xid 79 PCI:0000:10:00 2026-12-07T09:14:55+0000 itest1"

    def preflight(directory, *args):
        return session_lab.playbook(
            *BOTH_PHASES, "-e", f"llm_preflight_report_dir={directory}", "--limit", "itest1", *args,
            playbook="playbooks/preflight.yml",
        )  # fmt: skip

    assert host.run(f"echo '{line}' > /var/log/lab-kernel.log").rc == 0
    try:
        failed = preflight(tmp_path / "failed")
        assert failed.returncode != 0
        report = reports(tmp_path / "failed")["itest1"]
        assert report["verdict"] == {"phase1": "fail", "phase2": "fail"}
        assert any(
            failure.startswith(f"itest1: Xid 79: {key}: the GPU has fallen off the bus (pid=2417")
            and f"acknowledge the event with llm_gpu_health_ack: ['{key}']" in failure
            for failure in report["failures"]
        ), report["failures"]
        preflight(tmp_path / "acknowledged", "-e", json.dumps({"llm_gpu_health_ack": [key]}))
        assert not any("Xid" in failure for failure in reports(tmp_path / "acknowledged")["itest1"]["failures"])
    finally:
        host.run("rm -f /var/log/lab-kernel.log")


def test_the_cpu_host_passes_with_the_gpu_gates_skipped_and_says_so(session_lab, tmp_path):
    # Only the CPU host: the session's H100 host (driver R575) fails phase 2 of the default vLLM (cu130).
    run = session_lab.playbook(
        *BOTH_PHASES,
        "-e",
        f"llm_preflight_report_dir={tmp_path}",
        "--limit",
        "itest3",
        playbook="playbooks/preflight.yml",
    )
    assert run.returncode == 0, run.output[-2000:]
    report = reports(tmp_path)["itest3"]
    assert report["accelerator"] == "cpu"
    assert "GPU gates skipped" in report["summary"]
    assert report["summary"].startswith("itest3: phase1 pass, phase2 pass (CPU accelerator set in the inventory")
    assert "msg: 'phase1 pass, phase2 pass (CPU accelerator" in run.output  # the host is not repeated


def test_only_the_phases_of_the_enabled_backends_are_gated_whatever_the_tags(session_lab, restore_profiles, tmp_path):
    lab(SESSION_LAB, "gpu", "itest1", "1x-A100-80GB")
    enabled = ["-e", '{"ollama_enabled": true, "vllm_enabled": false}']
    run = session_lab.playbook(
        "-e",
        "llm_model=mixtral-8x7b-instruct",
        *enabled,
        "--tags",
        "phase2",
        "-e",
        f"llm_preflight_report_dir={tmp_path}",
        "--limit",
        "itest1",
        playbook="playbooks/preflight.yml",
    )
    assert run.returncode == 0, run.output[-2000:]
    assert reports(tmp_path)["itest1"]["verdict"] == {"phase1": expected("1x-A100-80GB")["phase1"]}


def test_a_port_held_by_another_process_is_named_and_our_own_unit_is_accepted(session_lab, tmp_path):
    host = session_lab.host("itest1")
    # Only itest1 (driver R580, passes both phases): the session's H100 host fails phase 2 of vLLM cu130.
    only_itest1 = ["-e", f"llm_preflight_report_dir={tmp_path}", "--limit", "itest1"]
    host.run("systemd-run --unit=squatter --quiet python3 -m http.server 8000")
    try:
        host.run("for i in $(seq 50); do ss -Hltn 'sport = :8000' | grep -q . && break; sleep 0.1; done")
        run = session_lab.playbook(*BOTH_PHASES, *only_itest1, playbook="playbooks/preflight.yml")
        pid = host.run("systemctl show -p MainPID --value squatter").stdout.strip()
        assert run.returncode != 0
        # The holder by PID, executable and user, never its arguments (they can hold other people's secrets).
        held = [line for line in run.output.splitlines() if "itest1: port 8000: held by" in line]
        assert held, run.output[-2000:]
        assert f"itest1: port 8000: held by PID {pid} (/usr/bin/python3" in held[0]
        assert ", user root)" in held[0]
        assert "http.server" not in run.output
    finally:
        host.run("systemctl stop squatter")
    host.run("systemd-run --unit=vllm --quiet python3 -m http.server 8000")
    try:
        host.run("for i in $(seq 50); do ss -Hltn 'sport = :8000' | grep -q . && break; sleep 0.1; done")
        run = session_lab.playbook(*BOTH_PHASES, *only_itest1, playbook="playbooks/preflight.yml")
        assert run.returncode == 0, run.output[-2000:]
    finally:
        host.run("systemctl stop vllm")


def test_too_little_disk_for_the_model_fails_with_the_sizes(session_lab, tmp_path):
    host = session_lab.host("itest1")
    assert host.run("mkdir -p /var/lib/ollama && mount -t tmpfs -o size=10m tmpfs /var/lib/ollama").rc == 0
    try:
        run = session_lab.playbook(
            *BOTH_PHASES, "-e", f"llm_preflight_report_dir={tmp_path}", playbook="playbooks/preflight.yml"
        )
    finally:
        host.run("umount /var/lib/ollama && rmdir /var/lib/ollama")
    assert run.returncode != 0
    assert "itest1: free disk for the Ollama model: 10 MiB free on /var/lib/ollama" in run.output
    assert "required: 5036 MiB (1.2 x 4.4 GB)" in run.output


def test_bad_input_is_refused_before_anything_is_measured(session_lab):
    run = session_lab.playbook("-e", "llm_model=mixtral", playbook="playbooks/preflight.yml")
    assert run.returncode != 0
    assert "llm_model=mixtral is not in src/llm_toolkit/catalog/models.yml" in run.output
    assert "gather | Read the NVIDIA GPUs" not in run.output
    run = session_lab.playbook(
        "-e", '{"llm_preflight_allow_unsupported_os": "false"}', playbook="playbooks/preflight.yml"
    )
    assert "expected true or false unquoted" in run.output


def test_on_this_machine_preflight_uses_the_nvidia_smi_on_path_or_the_one_named(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(REPO / "tests" / "standins" / "nvidia_smi" / "nvidia-smi")
    on_path = run_playbook(
        "-i",
        "inventory/local.yml",
        "playbooks/preflight.yml",
        "-e",
        f"llm_preflight_report_dir={tmp_path / 'a'}",
        env={"PATH": f"{bin_dir}:/usr/bin:/bin:{REPO / '.venv' / 'bin'}", "LAB_GPU_PROFILE": "2x-A10G-24GB"},
    )
    gpu = reports(tmp_path / "a")["localhost"]["gpu"]
    assert (gpu["state"], len(gpu["gpus"]), gpu["gpus"][0]["name"]) == ("ok", 2, "NVIDIA A10G"), on_path.output[-2000:]
    named = run_playbook(
        "-i",
        "inventory/local.yml",
        "playbooks/preflight.yml",
        "-e",
        f"llm_preflight_report_dir={tmp_path / 'b'}",
        "-e",
        f"llm_nvidia_smi_path={bin_dir / 'nvidia-smi'}",
        env={"LAB_GPU_PROFILE": "8x-H100-80GB"},
    )
    gpu = reports(tmp_path / "b")["localhost"]["gpu"]
    assert (gpu["state"], len(gpu["gpus"]), gpu["cuda_version"]) == ("ok", 8, "12.9"), named.output[-2000:]
