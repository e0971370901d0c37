"""GPU health: the parser of `nvidia-smi -q -x` and of the kernel log's Xid lines
(llm_toolkit.host.llm_gpu_health), and the health gates (llm_toolkit.gpu_health) as preflight applies
them. Published real outputs are in tests/unit/fixtures/nvidia_smi (README.md there names each source);
the states no published output shows are built from the same elements, one state at a time."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
from llm_toolkit.host import llm_gpu_health as health

from llm_toolkit import gpu_health
from llm_toolkit.catalog import load_gates
from tests.standins.nvidia_smi.fake_nvidia_smi import PROFILES
from tests.standins.nvidia_smi.fake_nvidia_smi import run as fake_nvidia_smi
from tests.unit.test_preflight_gates import gpu_facts
from tests.unit.test_preflight_gates import report as preflight

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia_smi"
GATES = load_gates()
STANDIN_GPU_PROFILES = sorted(
    name for name, profile in json.loads(PROFILES.read_text()).items() if not {"error", "hang"} & set(profile)
)

# One H100 as drivers of R535 and later print it (element names and value forms of nvidia-smi -q -x);
# each test changes the elements of the state it shows.
HEALTHY = {
    "persistence_mode": "Enabled",
    "gpu_recovery_action": "None",
    "reset_required": "No",
    "drain_and_reset_recommended": "No",
    "max_link_gen": "5",
    "current_link_gen": "5",
    "max_device_link_gen": "5",
    "max_link_width": "16x",
    "current_link_width": "16x",
    "gpu_idle": "Active",
    "hw_slowdown": "Not Active",
    "hw_thermal_slowdown": "Not Active",
    "hw_power_brake_slowdown": "Not Active",
    "sw_thermal_slowdown": "Not Active",
    "volatile_dram_uncorrectable": "0",
    "aggregate_dram_uncorrectable": "0",
    "pending_retirement": "No",
    "remapped_row_unc": "0",
    "remapped_row_pending": "No",
    "remapped_row_failure": "No",
    "gpu_temp": "33 C",
    "gpu_temp_slow_threshold": "87 C",
    "fabric_state": "N/A",
    "fabric_status": "N/A",
}


def gpu_element(bus: str = "00000000:18:00.0", **state: str) -> str:
    values = {**HEALTHY, **state}
    reasons = "".join(
        f"<clocks_event_reason_{name}>{values[name]}</clocks_event_reason_{name}>"
        for name in ("gpu_idle", "hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown")
    )
    return f"""<gpu id="{bus}">
  <product_name>NVIDIA H100 80GB HBM3</product_name>
  <persistence_mode>{values["persistence_mode"]}</persistence_mode>
  <uuid>GPU-{bus[9:11]}</uuid>
  <gpu_reset_status>
    <reset_required>{values["reset_required"]}</reset_required>
    <drain_and_reset_recommended>{values["drain_and_reset_recommended"]}</drain_and_reset_recommended>
  </gpu_reset_status>
  <gpu_recovery_action>{values["gpu_recovery_action"]}</gpu_recovery_action>
  <pci>
    <pci_bus_id>{bus}</pci_bus_id>
    <pci_gpu_link_info>
      <pcie_gen>
        <max_link_gen>{values["max_link_gen"]}</max_link_gen>
        <current_link_gen>{values["current_link_gen"]}</current_link_gen>
        <device_current_link_gen>{values["current_link_gen"]}</device_current_link_gen>
        <max_device_link_gen>{values["max_device_link_gen"]}</max_device_link_gen>
        <max_host_link_gen>5</max_host_link_gen>
      </pcie_gen>
      <link_widths>
        <max_link_width>{values["max_link_width"]}</max_link_width>
        <current_link_width>{values["current_link_width"]}</current_link_width>
      </link_widths>
    </pci_gpu_link_info>
  </pci>
  <clocks_event_reasons>{reasons}</clocks_event_reasons>
  <ecc_mode><current_ecc>Enabled</current_ecc><pending_ecc>Enabled</pending_ecc></ecc_mode>
  <ecc_errors>
    <volatile>
      <sram_correctable>0</sram_correctable>
      <sram_uncorrectable_parity>0</sram_uncorrectable_parity>
      <sram_uncorrectable_secded>0</sram_uncorrectable_secded>
      <dram_correctable>0</dram_correctable>
      <dram_uncorrectable>{values["volatile_dram_uncorrectable"]}</dram_uncorrectable>
    </volatile>
    <aggregate>
      <sram_correctable>0</sram_correctable>
      <sram_uncorrectable_parity>0</sram_uncorrectable_parity>
      <sram_uncorrectable_secded>0</sram_uncorrectable_secded>
      <dram_correctable>0</dram_correctable>
      <dram_uncorrectable>{values["aggregate_dram_uncorrectable"]}</dram_uncorrectable>
      <sram_threshold_exceeded>No</sram_threshold_exceeded>
    </aggregate>
  </ecc_errors>
  <retired_pages>
    <multiple_single_bit_retirement><retired_count>N/A</retired_count></multiple_single_bit_retirement>
    <double_bit_retirement><retired_count>N/A</retired_count></double_bit_retirement>
    <pending_blacklist>N/A</pending_blacklist>
    <pending_retirement>{values["pending_retirement"]}</pending_retirement>
  </retired_pages>
  <remapped_rows>
    <remapped_row_corr>0</remapped_row_corr>
    <remapped_row_unc>{values["remapped_row_unc"]}</remapped_row_unc>
    <remapped_row_pending>{values["remapped_row_pending"]}</remapped_row_pending>
    <remapped_row_failure>{values["remapped_row_failure"]}</remapped_row_failure>
  </remapped_rows>
  <temperature>
    <gpu_temp>{values["gpu_temp"]}</gpu_temp>
    <gpu_temp_max_threshold>92 C</gpu_temp_max_threshold>
    <gpu_temp_slow_threshold>{values["gpu_temp_slow_threshold"]}</gpu_temp_slow_threshold>
  </temperature>
  <fabric>
    <state>{values["fabric_state"]}</state>
    <status>{values["fabric_status"]}</status>
  </fabric>
</gpu>"""


def report(*gpus: str, driver: str = "550.54.15") -> str:
    return (
        '<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">\n<nvidia_smi_log>\n'
        f"<driver_version>{driver}</driver_version>\n<attached_gpus>{len(gpus)}</attached_gpus>\n"
        + "\n".join(gpus)
        + "\n</nvidia_smi_log>\n"
    )


def facts(xml: str, kernel_log: str = "", nvswitch: bool = False, fabric=(0, "active\n", "535.104.05")) -> dict:
    """collect_health on canned command outputs (the order of the calls is the collector's)."""

    def run(argv):
        if argv[-2:] == ["-q", "-x"]:
            return 0, xml, ""
        if argv[0] == "journalctl":
            return 0, kernel_log, ""
        if argv[0] == "systemctl":
            return fabric[0], fabric[1], ""
        if argv[0] == "nv-fabricmanager":
            return 0, f"Fabric Manager version is : {fabric[2]}\n", ""
        raise AssertionError(argv)

    return health.collect_health(run, "nvidia-smi", ["journalctl", "-k", "-b"], nvswitch)


def findings(host_facts: dict, ack=()) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for finding in gpu_health.assess(host_facts, GATES, ack):
        grouped.setdefault(finding["level"], []).append(finding)
    return grouped


def test_a_healthy_gpu_passes_every_gate():
    found = findings(facts(report(gpu_element())))
    assert set(found) == {gpu_health.OK}, found


@pytest.mark.parametrize(
    ("state", "check", "measured"),
    [
        ({"volatile_dram_uncorrectable": "2"}, "uncorrectable ECC errors", "2 uncorrectable ECC errors"),
        ({"remapped_row_pending": "Yes"}, "pending memory repair", "a row remap waits for a GPU reset"),
        ({"pending_retirement": "Yes"}, "pending memory repair", "a page retirement waits for a GPU reset"),
        ({"remapped_row_failure": "Yes"}, "row remapping failure", "a row remap failed"),
        ({"reset_required": "Yes"}, "GPU recovery", "reset required"),
        ({"gpu_recovery_action": "Reboot"}, "GPU recovery", "recovery action Reboot"),
        ({"fabric_state": "In Progress", "fabric_status": "N/A"}, "NVSwitch fabric", "fabric state In Progress"),
    ],
)
def test_each_state_that_makes_a_gpu_unfit_fails_with_its_fix(state, check, measured):
    found = findings(facts(report(gpu_element(), gpu_element("00000000:2A:00.0", **state))))
    failed = found[gpu_health.FAIL]
    assert [finding["check"] for finding in failed] == [check]
    assert failed[0]["measured"].startswith("GPU 1 (00000000:2A:00.0): "), failed[0]
    assert measured in failed[0]["measured"] and failed[0]["fix"]


@pytest.mark.parametrize(
    ("state", "check"),
    [
        ({"persistence_mode": "Disabled"}, "persistence mode"),
        ({"current_link_width": "8x"}, "PCIe link"),
        ({"current_link_gen": "3", "gpu_idle": "Not Active"}, "PCIe link"),
        ({"hw_thermal_slowdown": "Active"}, "clock slowdown"),
        ({"hw_power_brake_slowdown": "Active"}, "clock slowdown"),
        ({"gpu_temp": "84 C"}, "temperature"),
    ],
)
def test_each_degradation_warns_and_passes(state, check):
    found = findings(facts(report(gpu_element(**state))))
    assert gpu_health.FAIL not in found
    assert [finding["check"] for finding in found[gpu_health.WARN]] == [check]


def test_an_idle_gpu_on_a_lower_link_generation_is_not_a_degradation():
    """Idle GPUs lower their PCIe generation to save power; the width never changes for that."""
    found = findings(facts(report(gpu_element(current_link_gen="1", gpu_idle="Active"))))
    assert gpu_health.WARN not in found


def test_a_health_report_that_cannot_be_read_fails_closed():
    def run(argv):
        return (None, "", "nvidia-smi did not finish within 60 s (killed)") if argv[-1] == "-x" else (0, "", "")

    host = health.collect_health(run, "nvidia-smi", ["journalctl", "-k"], nvswitch=False)
    failed = findings(host)[gpu_health.FAIL]
    assert failed[0]["check"] == "GPU health report"
    assert failed[0]["measured"] == "`nvidia-smi -q -x` failed: nvidia-smi did not finish within 60 s (killed)"
    garbled = findings(facts("<html>not nvidia-smi</html>"))[gpu_health.FAIL]
    assert "root element <html>, expected <nvidia_smi_log>" in garbled[0]["measured"]


KERNEL_LOG = """\
2026-12-07T08:01:02+0000 gpu7 kernel: NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15
2026-12-07T09:14:55+0000 gpu7 kernel: NVRM: Xid (PCI:0000:2a:00): 79, pid=2417, GPU has fallen off the bus.
2026-12-07T09:20:00+0000 gpu7 kernel: NVRM: Xid (PCI:0000:18:00): 92, pid=2417, High single-bit ECC error rate
2026-12-07T09:30:00+0000 gpu7 kernel: NVRM: Xid (PCI:0000:18:00): 13, Graphics Exception: ESR 0x404600=0x80000002
"""


def test_xid_events_are_parsed_with_the_key_that_acknowledges_them():
    events = health.parse_xid_events(KERNEL_LOG)
    assert [(event["code"], event["device"]) for event in events] == [
        (79, "PCI:0000:2a:00"),
        (92, "PCI:0000:18:00"),
        (13, "PCI:0000:18:00"),
    ]
    assert events[0]["key"] == "Xid 79 PCI:0000:2a:00 2026-12-07T09:14:55+0000 gpu7"
    assert events[0]["detail"] == "pid=2417, GPU has fallen off the bus."


def test_published_xid_lines_of_every_log_form_are_read():
    """dmesg -T and --ctime, syslog, journal and bare kmsg lines (fixtures/nvidia_smi/kernel-log-xid.txt)."""
    events = health.parse_xid_events((FIXTURES / "kernel-log-xid.txt").read_text(encoding="utf-8"))
    assert [event["code"] for event in events] == [13, 109, 43, 31, 94, 79, 48, 64, 63, 45, 145]
    assert events[5]["key"] == "Xid 79 PCI:0000:a1:00 [Fri Apr 5 21:29:39 2024]"
    assert events[6]["key"] == "Xid 48 PCI:0000:07:00 Dec 2 11:38:47 worker4"
    assert events[9]["key"] == "Xid 45 PCI:0000:dc:00 -"
    found = findings({"gpus": [], "xid_events": events, "not_measured": {}})
    assert [finding["check"] for finding in found[gpu_health.FAIL]] == ["Xid 79", "Xid 48", "Xid 64", "Xid 63"]
    assert [finding["check"] for finding in found[gpu_health.WARN]] == ["Xid 94"]


def test_an_xid_of_the_fail_set_fails_until_acknowledged_and_one_of_the_warn_set_warns():
    host = facts(report(gpu_element()), KERNEL_LOG)
    found = findings(host)
    (fatal,) = found[gpu_health.FAIL]
    assert fatal["check"] == "Xid 79" and "the GPU has fallen off the bus" in fatal["measured"]
    key = "Xid 79 PCI:0000:2a:00 2026-12-07T09:14:55+0000 gpu7"
    assert f"acknowledge the event with llm_gpu_health_ack: ['{key}']" in fatal["fix"]
    assert [finding["check"] for finding in found[gpu_health.WARN]] == ["Xid 92"]
    assert gpu_health.FAIL not in findings(host, ack=[key])  # acknowledged: it no longer fails the host
    assert all(finding["check"] != "Xid 13" for finding in gpu_health.assess(host, GATES))  # reported only


def test_a_kernel_log_that_cannot_be_read_is_not_measured_with_the_reason():
    def run(argv):
        if argv[0] == "journalctl":
            return 1, "", "Failed to get journal access: Permission denied"
        return 0, report(gpu_element()), ""

    host = health.collect_health(run, "nvidia-smi", ["journalctl", "-k", "-b"], nvswitch=False)
    (unknown,) = findings(host)[gpu_health.NOT_MEASURED]
    assert unknown["measured"] == (
        "the kernel log could not be read (`journalctl -k -b`: Failed to get journal access: Permission denied)"
    )
    no_source = health.collect_health(run, "nvidia-smi", [], nvswitch=False)
    assert "llm_gpu_health_ack" not in str(no_source)
    assert no_source["not_measured"]["xid_events"] == "no kernel log source (llm_gpu_kernel_log_command is empty)"


@pytest.mark.parametrize(
    ("fabric", "problem"),
    [
        ((0, "active\n", "535.104.05"), None),
        ((0, "inactive\n", "535.104.05"), "nvidia-fabricmanager is inactive"),
        ((0, "active\n", "535.86.10"), "nvidia-fabricmanager 535.86.10 with driver 535.104.05"),
    ],
)
def test_an_nvswitch_host_needs_the_fabric_manager_running_at_the_drivers_version(fabric, problem):
    host = facts(report(gpu_element(fabric_state="Completed", fabric_status="Success"), driver="535.104.05"),
                 nvswitch=True, fabric=fabric)  # fmt: skip
    manager = [finding for finding in gpu_health.assess(host, GATES) if finding["check"] == "fabric manager"]
    if problem is None:
        assert manager[0]["level"] == gpu_health.OK
    else:
        assert manager[0]["level"] == gpu_health.FAIL and problem in manager[0]["measured"]
        assert "nvidia-fabricmanager 535.104.05" in manager[0]["fix"]


def test_the_older_ecc_form_and_the_throttle_reasons_element_are_read():
    """Drivers before R535 print <clocks_throttle_reasons> and <double_bit><total> counts."""
    older = (
        report(gpu_element())
        .replace("clocks_event_reason", "clocks_throttle_reason")
        .replace("<dram_uncorrectable>0</dram_uncorrectable>", "<double_bit><total>3</total></double_bit>", 1)
        .replace("<clocks_throttle_reason_hw_slowdown>Not Active", "<clocks_throttle_reason_hw_slowdown>Active")
    )
    (gpu,) = health.parse_health_xml(older)["gpus"]
    assert gpu["ecc_uncorrectable_volatile"] == 3 and gpu["slowdowns"] == ["hw_slowdown"]


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("q-x-*.xml")), ids=lambda path: path.name)
def test_published_health_reports_parse_into_every_gpu(fixture):
    text = fixture.read_text(encoding="utf-8")
    parsed = health.parse_health_xml(text)
    assert parsed["driver_version"]
    assert len(parsed["gpus"]) == text.count("<gpu id=")
    for gpu in parsed["gpus"]:
        assert gpu["name"] and gpu["pci_bus_id"]
        assert gpu["slowdowns"] is not None and gpu["pcie_width_max"]
    assert {finding["level"] for finding in gpu_health.assess(dict(parsed, xid_events=[]), GATES)} <= {
        gpu_health.OK,
        gpu_health.WARN,
    }


def test_preflight_fails_both_phases_on_a_health_fail_state_and_lists_warnings():
    """The gates as preflight applies them: one line per failure naming host, measured, required and fix;
    degradations pass and are listed as warnings; an acknowledged event no longer fails."""
    gpu = gpu_facts("4x-A100-40GB")
    gpu["health"] = facts(report(gpu_element(remapped_row_pending="Yes", persistence_mode="Disabled")), KERNEL_LOG)
    result = preflight(gpu=gpu)
    assert result["verdict"] == {"phase1": "fail", "phase2": "fail"}
    assert "gpu1: pending memory repair: GPU 0 (00000000:18:00.0): a row remap waits for a GPU reset; required: " in (
        " ".join(result["failures"])
    )
    assert any(line.startswith("gpu1: Xid 79: Xid 79 PCI:0000:2a:00 ") for line in result["failures"])
    assert [line.split(":")[1].strip() for line in result["warnings"]] == ["persistence mode", "Xid 92"]
    key = "Xid 79 PCI:0000:2a:00 2026-12-07T09:14:55+0000 gpu7"
    gpu["health"] = facts(report(gpu_element()), KERNEL_LOG)
    assert preflight(gpu=gpu, gpu_health_ack=[key])["passed"]


def element_paths(xml: str) -> set[str]:
    def walk(element, prefix: str) -> set[str]:
        path = f"{prefix}/{element.tag}"
        return {path}.union(*(walk(child, path) for child in element))

    return walk(ElementTree.fromstring(xml), "")  # noqa: S314 - the fixtures and the stand-in, in this repository


PUBLISHED_PATHS = set().union(*(element_paths(path.read_text()) for path in FIXTURES.glob("q-x-*.xml")))


@pytest.mark.parametrize("profile", STANDIN_GPU_PROFILES)
def test_the_standins_health_report_has_only_elements_real_outputs_have(profile):
    xml, code = fake_nvidia_smi(["-q", "-x"], profile)
    assert code == 0
    assert element_paths(xml) - PUBLISHED_PATHS == set()


@pytest.mark.parametrize(
    ("profile", "level", "check"),
    [
        ("4x-A100-40GB", None, None),
        ("8x-H100-80GB", None, None),
        ("driver-470", None, None),
        ("4x-A100-40GB-ecc-uncorrectable", gpu_health.FAIL, "uncorrectable ECC errors"),
        ("4x-A100-40GB-remap-pending", gpu_health.FAIL, "pending memory repair"),
        ("4x-A100-40GB-remap-failure", gpu_health.FAIL, "row remapping failure"),
        ("4x-A100-40GB-recovery-reboot", gpu_health.FAIL, "GPU recovery"),
        ("2x-A10G-24GB-reset-required", gpu_health.FAIL, "GPU recovery"),
        ("2x-A10G-24GB-retirement-pending", gpu_health.FAIL, "pending memory repair"),
        ("8x-H100-80GB-fabric-in-progress", gpu_health.FAIL, "NVSwitch fabric"),
        ("1x-L4-24GB-persistence-off", gpu_health.WARN, "persistence mode"),
        ("1x-L4-24GB-pcie-x8", gpu_health.WARN, "PCIe link"),
        ("1x-L4-24GB-thermal-slowdown", gpu_health.WARN, "clock slowdown"),
    ],
)
def test_each_standin_health_profile_gets_its_finding(profile, level, check):
    """The lab's simulated GPU hosts: the collector on the stand-in's report, through the gates."""

    def run(argv):
        output, code = fake_nvidia_smi(argv[1:], profile)
        return code, output, ""

    host = health.collect_health(run, "nvidia-smi", [], nvswitch=False)
    found = findings(host)
    if level is None:
        assert set(found) == {gpu_health.OK, gpu_health.NOT_MEASURED}, found
    else:
        assert check in [finding["check"] for finding in found[level]], found
        assert level == gpu_health.WARN or gpu_health.WARN not in found
