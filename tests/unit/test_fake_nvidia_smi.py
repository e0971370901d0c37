"""The nvidia-smi stand-in must print what the real tool prints (docs/gpu-and-drivers.md, sections 2-3)."""

import json
import re
import subprocess

import pytest

from tests.standins.nvidia_smi.fake_nvidia_smi import PROFILES, load_profile, run

ALL_PROFILES = sorted(json.loads(PROFILES.read_text()))
GPU_PROFILES = [
    name for name, profile in json.loads(PROFILES.read_text()).items() if not {"error", "hang"} & set(profile)
]
QUERY = ["--query-gpu=index,name,uuid,memory.total,memory.used,driver_version", "--format=csv,noheader,nounits"]
REQUIRED_BY_ISSUE = [
    "driver-broken",
    "driver-470",
    "1x-L4-24GB",
    "2x-A10G-24GB",
    "1x-A100-80GB",
    "4x-A100-40GB",
    "8x-H100-80GB",
]


def test_every_profile_the_lab_promises_exists():
    assert set(REQUIRED_BY_ISSUE) <= set(ALL_PROFILES)


@pytest.mark.parametrize(
    ("profile", "count", "name", "memory", "driver", "cuda", "compute_cap"),
    [
        ("1x-L4-24GB", 1, "NVIDIA L4", 23034, "550.54.15", "12.4", "8.9"),
        ("2x-A10G-24GB", 2, "NVIDIA A10G", 23028, "535.183.01", "12.2", "8.6"),
        ("1x-A100-80GB", 1, "NVIDIA A100-SXM4-80GB", 81920, "570.133.20", "12.8", "8.0"),
        ("4x-A100-40GB", 4, "NVIDIA A100-SXM4-40GB", 40960, "580.95.05", "13.0", "8.0"),
        ("8x-H100-80GB", 8, "NVIDIA H100 80GB HBM3", 81559, "575.57.08", "12.9", "9.0"),
    ],
)
def test_csv_query_lists_each_gpu_in_the_asked_field_order(profile, count, name, memory, driver, cuda, compute_cap):
    output, code = run(
        ["--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader,nounits"], profile
    )
    assert code == 0
    assert output.splitlines() == [f"{name}, {memory}, {driver}, {compute_cap}"] * count
    table, _ = run([], profile)
    assert re.search(r"CUDA Version: ([0-9]+\.[0-9]+)", table).group(1) == cuda


def test_csv_query_fields_split_on_comma_space_and_units_follow_the_format_options():
    output, code = run(QUERY, "2x-A10G-24GB")
    assert code == 0
    rows = [line.split(", ") for line in output.splitlines()]
    assert [row[0] for row in rows] == ["0", "1"]
    assert all(re.fullmatch(r"GPU-[0-9a-f-]{36}", row[2]) for row in rows)
    assert rows[0][2] != rows[1][2]
    assert [row[3:] for row in rows] == [["23028", "0", "535.183.01"]] * 2
    with_units, _ = run(["--query-gpu=memory.total,name", "--format=csv"], "1x-L4-24GB")
    assert with_units.splitlines() == ["memory.total [MiB], name", "23034 MiB, NVIDIA L4"]


def test_query_accepts_the_option_value_as_a_separate_argument():
    joined, _ = run(["--query-gpu=name", "--format=csv,noheader"], "1x-L4-24GB")
    split, _ = run(["--query-gpu", "name", "--format", "csv,noheader"], "1x-L4-24GB")
    assert joined == split == "NVIDIA L4\n"


def test_old_driver_rejects_the_compute_cap_field_with_exit_2():
    output, code = run(["--query-gpu=name,compute_cap", "--format=csv,noheader"], "driver-470")
    assert code == 2
    assert output.splitlines()[0] == 'Field "compute_cap" is not a valid field to query.'
    output, code = run(["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"], "driver-470")
    assert (output, code) == ("Tesla T4, 15360, 470.256.02\n", 0)


def test_old_driver_reports_a_cuda_version_below_11_8_in_the_table_header():
    table, code = run([], "driver-470")
    assert code == 0
    assert "NVIDIA-SMI 470.256.02   Driver Version: 470.256.02   CUDA Version: 11.4" in table


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("driver-broken", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
        ("driver-mismatch", "Failed to initialize NVML: Driver/library version mismatch"),
    ],
)
def test_broken_drivers_fail_every_call_with_the_real_message(profile, message):
    for argv in ([], QUERY, ["-L"]):
        output, code = run(argv, profile)
        assert code != 0
        assert output.startswith(message)


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_default_table_lines_line_up_like_the_real_table(profile):
    table, _ = run([], profile)
    lines = table.splitlines()
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", lines[0])
    framed = [line for line in lines[1:] if line]
    assert len({len(line) for line in framed}) == 1
    assert framed[0].startswith("+") and framed[-1].startswith("+")
    gpu_rows = [line for line in framed if re.match(r"\|\s+\d+\s+\S.*\|\s+[0-9A-F]{8}:", line)]
    assert len(gpu_rows) == load_profile(profile)["count"]


def test_processes_holding_gpu_memory_appear_in_queries_and_in_used_memory():
    apps, code = run(
        ["--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader,nounits"], "1x-L4-24GB-busy"
    )
    assert (apps, code) == ("4242, /usr/bin/python3, 8192\n", 0)
    used, _ = run(["--query-gpu=memory.used,memory.free", "--format=csv,noheader,nounits"], "1x-L4-24GB-busy")
    assert used == "8192, 14410\n"
    idle, code = run(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], "1x-L4-24GB")
    assert (idle, code) == ("", 0)
    table, _ = run([], "1x-L4-24GB")
    assert "No running processes found" in table


def test_list_and_detail_reports():
    listing, _ = run(["-L"], "2x-A10G-24GB")
    assert re.fullmatch(r"(GPU \d: NVIDIA A10G \(UUID: GPU-[0-9a-f-]{36}\)\n){2}", listing)
    detail, _ = run(["-q"], "1x-A100-80GB")
    assert re.search(r"^Driver Version\s+: 570.133.20$", detail, re.M)
    assert re.search(r"^CUDA Version\s+: 12.8$", detail, re.M)
    assert re.search(r"^\s+Product Name\s+: NVIDIA A100-SXM4-80GB$", detail, re.M)
    assert re.search(r"^\s+Total\s+: 81920 MiB$", detail, re.M)


def test_device_filter_selects_one_gpu_and_refuses_a_missing_one():
    output, _ = run(["-i", "3", "--query-gpu=index", "--format=csv,noheader"], "4x-A100-40GB")
    assert output == "3\n"
    output, code = run(["-i", "4", "--query-gpu=index", "--format=csv,noheader"], "4x-A100-40GB")
    assert code == 6
    assert output == "No devices were found\n"


@pytest.mark.parametrize(
    "argv",
    [["--bogus"], ["--query-gpu=name"], ["--query-gpu=name", "--format=json"], ["--query-gpu"]],
)
def test_invalid_arguments_exit_2(argv):
    output, code = run(argv, "1x-L4-24GB")
    assert code == 2
    assert output.startswith("Invalid combination of input arguments")


def test_unknown_field_is_rejected_like_the_real_tool():
    output, code = run(["--query-gpu=name,warp_speed", "--format=csv"], "1x-L4-24GB")
    assert code == 2
    assert output.startswith('Field "warp_speed" is not a valid field to query.')


def test_executable_reads_the_profile_from_the_environment():
    script = PROFILES.with_name("nvidia-smi")
    result = subprocess.run(
        [str(script), "--query-gpu=count", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        env={"LAB_GPU_PROFILE": "8x-H100-80GB", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["8"] * 8


def test_the_hung_profile_blocks_without_output_like_a_wedged_driver():
    script = PROFILES.with_name("nvidia-smi")
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        subprocess.run(
            [str(script), "-L"], env={"LAB_GPU_PROFILE": "gpu-hung"}, capture_output=True, timeout=2, check=False
        )
    assert not hung.value.stdout
