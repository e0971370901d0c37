"""GPU facts (plugins/module_utils/llm_gpu.py) on real nvidia-smi outputs and on the lab's stand-in."""

import json
from pathlib import Path

import pytest
from llm_toolkit.host.llm_gpu import (
    GPU_QUERY_FIELDS,
    classify_failure,
    collect,
    compute_cap_from_name,
    invalid_field,
    parse_compute_apps,
    parse_csv,
    parse_cuda_version,
    parse_driver_version,
    parse_gpus,
    parse_kernel_module_version,
    parse_nvcc,
    run_bounded,
    version_tuple,
)

from tests.standins.nvidia_smi.fake_nvidia_smi import run as fake_nvidia_smi

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia_smi"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


class FakeFiles:
    """The host's files as a dict: path -> text (or bytes), directory -> list of names."""

    def __init__(self, files=None, dirs=None, links=None):
        self.files = files or {}
        self.dirs = dirs or {}
        self.links = links or {}

    def text(self, path):
        value = self.files.get(path)
        return value.decode() if isinstance(value, bytes) else value

    def bytes(self, path):
        value = self.files.get(path)
        return value.encode() if isinstance(value, str) else value

    def listdir(self, path):
        return self.dirs.get(path, [])

    def link(self, path):
        return self.links.get(path)


def stand_in(profile: str):
    """A command runner whose nvidia-smi is the lab's stand-in with this profile."""

    def run(argv):
        output, code = fake_nvidia_smi(argv[1:], profile)
        return code, output, ""

    return run


@pytest.mark.parametrize(
    ("name", "cuda", "driver"),
    [
        ("table-l4-r570.txt", "12.8", "570.133.20"),
        ("table-a100x2-r580.txt", "13.0", "580.126.09"),
        ("table-h100-r535-header.txt", "12.2", "535.129.03"),
    ],
)
def test_the_table_header_gives_the_drivers_highest_cuda_version(name, cuda, driver):
    assert parse_cuda_version(fixture(name)) == cuda
    assert parse_driver_version(fixture(name)) == driver


def test_query_rows_are_split_on_comma_space():
    rows = parse_csv(fixture("query-h100.csv"), ["name", "memory.total", "compute_cap", "driver_version"])
    assert rows == [
        {"name": "NVIDIA H100 80GB HBM3", "memory.total": "81559", "compute_cap": "9.0", "driver_version": "550.54.15"}
    ]


def test_gpu_names_with_spaces_parse_with_their_compute_capability():
    body = "".join(fixture("query-two-gpus-header.csv").splitlines(keepends=True)[1:])
    gpus = parse_gpus(body, ["compute_cap", "compute_mode", "driver_version", "name", "index"])
    assert [(g["index"], g["name"], g["compute_cap"]) for g in gpus] == [
        (0, "NVIDIA TITAN V", "7.0"),
        (1, "NVIDIA RTX 5880 Ada Generation", "8.9"),
    ]


def test_a_row_with_the_wrong_number_of_fields_is_an_error():
    with pytest.raises(ValueError, match="expected 2 fields, got 3"):
        parse_csv("a, b, c\n", ["x", "y"])


def test_mig_enabled_gpus_report_mig_and_na_values_become_none():
    gpus = parse_gpus(fixture("query-mig-a100.csv"), GPU_QUERY_FIELDS)
    assert [g["mig_mode"] for g in gpus] == ["Enabled", "Disabled"]
    assert gpus[0]["memory_used_mib"] is None
    assert gpus[0]["memory_total_mib"] == 81920


def test_the_refused_field_is_read_from_old_drivers_error():
    assert invalid_field(fixture("invalid-field-compute-cap.txt")) == "compute_cap"
    assert invalid_field(fixture("driver-not-loaded.txt")) is None


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("driver-not-loaded.txt", "driver-not-loaded"),
        ("driver-mismatch.txt", "driver-mismatch"),
        ("invalid-field-compute-cap.txt", "error"),
    ],
)
def test_failures_are_classified_with_their_first_line(name, state):
    text = fixture(name)
    assert classify_failure(text, 9) == (state, text.splitlines()[0])


def test_nvcc_and_kernel_module_versions():
    assert parse_nvcc(fixture("nvcc-12.4.txt")) == "12.4"
    assert parse_kernel_module_version(fixture("proc-version-proprietary.txt")) == "515.76"
    assert parse_kernel_module_version(fixture("proc-version-open.txt")) == "575.57.08"
    assert parse_kernel_module_version("") is None


@pytest.mark.parametrize(
    ("name", "cap"),
    [
        ("Tesla T4", "7.5"),
        ("Tesla V100-SXM2-16GB", "7.0"),
        ("NVIDIA A100-SXM4-80GB", "8.0"),
        ("NVIDIA A10G", "8.6"),
        ("NVIDIA L4", "8.9"),
        ("NVIDIA L40S", "8.9"),
        ("NVIDIA H100 80GB HBM3", "9.0"),
        ("NVIDIA GeForce RTX 4090", "8.9"),
        ("NVIDIA RTX A6000", "8.6"),
        ("Some Future GPU", None),
    ],
)
def test_compute_capability_by_name_for_old_drivers(name, cap):
    assert compute_cap_from_name(name) == cap


def test_versions_compare_numerically():
    assert version_tuple("575.51.03") > version_tuple("575.9")
    assert version_tuple("550") <= version_tuple("550.54.15")
    assert version_tuple(None) == ()


def test_compute_apps_rows():
    apps = parse_compute_apps("4242, /usr/bin/python3, 8192, GPU-abc\n")
    assert apps == [{"pid": 4242, "process_name": "/usr/bin/python3", "used_memory_mib": 8192, "gpu_uuid": "GPU-abc"}]


def test_collect_on_a_working_multi_gpu_host():
    facts = collect(stand_in("2x-A10G-24GB"), FakeFiles(), "/usr/bin/nvidia-smi")
    assert facts["state"] == "ok"
    assert (facts["driver_version"], facts["cuda_version"]) == ("535.183.01", "12.2")
    assert [(g["index"], g["name"], g["memory_total_mib"], g["compute_cap"]) for g in facts["gpus"]] == [
        (0, "NVIDIA A10G", 23028, "8.6"),
        (1, "NVIDIA A10G", 23028, "8.6"),
    ]
    assert facts["compute_apps"] == []


def test_collect_falls_back_when_an_old_driver_refuses_compute_cap():
    facts = collect(stand_in("driver-470"), FakeFiles(), "/usr/bin/nvidia-smi")
    assert facts["state"] == "ok"
    assert facts["gpus"][0]["compute_cap"] == "7.5"
    assert facts["gpus"][0]["compute_cap_source"] == "name table"
    assert "nvidia-smi has no compute_cap field" in facts["fallbacks"]
    assert facts["cuda_version"] == "11.4"


@pytest.mark.parametrize(
    ("profile", "state"), [("driver-broken", "driver-not-loaded"), ("driver-mismatch", "driver-mismatch")]
)
def test_collect_never_crashes_on_a_broken_driver(profile, state):
    facts = collect(stand_in(profile), FakeFiles(), "/usr/bin/nvidia-smi")
    assert facts["state"] == state
    assert facts["gpus"] == []
    assert facts["error"]


def test_collect_without_nvidia_smi_reads_the_kernel_and_pci_bus():
    files = FakeFiles(
        files={
            "/proc/modules": "nouveau 2285568 0 - Live 0x0\ndrm 614400 1 nouveau, Live 0x0\n",
            "/sys/bus/pci/devices/0000:01:00.0/vendor": "0x10de\n",
            "/sys/bus/pci/devices/0000:01:00.0/class": "0x030200\n",
            "/sys/bus/pci/devices/0000:00:02.0/vendor": "0x1af4\n",
            "/sys/bus/pci/devices/0000:00:02.0/class": "0x020000\n",
            "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c": b"\x06\x00\x00\x00\x01",
        },
        dirs={"/sys/bus/pci/devices": ["0000:00:02.0", "0000:01:00.0"]},
    )
    facts = collect(stand_in("none-unused"), files, None)
    assert facts["state"] == "not-installed"
    assert facts["kernel_modules"] == {"nvidia": False, "nouveau": True}
    assert facts["pci_devices"] == 1
    assert facts["secure_boot"] is True


def test_processes_holding_gpu_memory_get_user_executable_and_unit_but_never_their_arguments():
    files = FakeFiles(
        files={
            "/proc/4242/cmdline": "python3\0train.py\0--token\0other-users-secret\0",
            "/proc/4242/status": "Name:\tpython3\nUid:\t0\t0\t0\t0\n",
            "/proc/4242/cgroup": "0::/system.slice/trainer.service\n",
        },
        links={"/proc/4242/exe": "/usr/bin/python3.11"},
    )
    facts = collect(stand_in("1x-L4-24GB-busy"), files, "/usr/bin/nvidia-smi")
    assert facts["compute_apps"] == [
        {
            "pid": 4242,
            "process_name": "/usr/bin/python3",
            "used_memory_mib": 8192,
            "gpu_uuid": facts["gpus"][0]["uuid"],
            "user": "root",
            "executable": "/usr/bin/python3.11",
            "unit": "trainer.service",
        }
    ]
    assert "other-users-secret" not in json.dumps(facts)
    assert facts["gpus"][0]["memory_used_mib"] == 8192


def test_a_hung_nvidia_smi_is_killed_at_the_time_limit_and_reported_once():
    # The stand-in's gpu-hung profile never returns, like nvidia-smi in a wedged driver: without the
    # time limit collect() would never return (the test run's own limit would end it).
    script = str(Path(__file__).resolve().parents[1] / "standins" / "nvidia_smi" / "nvidia-smi")
    calls = []

    def run(argv):
        calls.append(argv)
        return run_bounded([script, *argv[1:]], 1, {"LAB_GPU_PROFILE": "gpu-hung", "PATH": "/usr/bin:/bin"})

    facts = collect(run, FakeFiles(), script)
    assert facts["state"] == "timed-out"
    assert "did not finish within 1 s (killed)" in facts["error"]
    assert facts["error"].startswith("`nvidia-smi --query-gpu=")
    assert len(calls) == 1, "no further nvidia-smi call after one timed out"


def test_a_command_that_finishes_in_time_gives_its_output():
    assert run_bounded(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], 30) == (3, "out\n", "err\n")
    assert run_bounded(["/nonexistent/nvidia-smi"], 30)[0] == 127
