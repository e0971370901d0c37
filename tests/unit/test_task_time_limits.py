"""The tasks that run the smoke test, the benchmark and nvidia-smi have a time limit (`timeout:`)
derived from the same settings as the requests' deadlines, so that a hung server or driver fails
the play instead of holding it forever."""

from pathlib import Path

import yaml

from llm_toolkit.backends import COMMAND_MARGIN_S, benchmark_time_limit, smoke_time_limit

ROLES = Path(__file__).resolve().parents[2] / "roles"


def task(path: str, name: str) -> dict:
    tasks = yaml.safe_load((ROLES / path).read_text())
    return next(item for item in tasks if item.get("name") == name)


def test_the_smoke_and_benchmark_tasks_are_bounded_by_their_request_deadlines():
    smoke = task("llm_smoke/tasks/smoke.yml", "smoke | Ask every backend in Italian")
    assert smoke["timeout"] == "{{ llm_smoke_timeout_s | llm_smoke_time_limit }}"
    bench = task("llm_benchmark/tasks/benchmark.yml", "benchmark | Measure every backend")
    assert "__llm_benchmark_options | llm_benchmark_time_limit(llm_benchmark_queries | length)" in bench["timeout"]
    gpu_name = task(
        "llm_benchmark/tasks/benchmark.yml", "benchmark | Read the GPU's name for the memory-bandwidth bound"
    )
    assert int(gpu_name["timeout"]) > 0


def test_the_time_limits_cover_every_request_at_its_deadline():
    assert smoke_time_limit(120) == 120 + COMMAND_MARGIN_S
    assert smoke_time_limit("2.5") == 3 + COMMAND_MARGIN_S
    options = {"runs": 5, "warmup": 1, "drafts": 3, "max_tokens": 256, "timeout_s": 300}
    # 6 runs x 3 default queries x 3 kinds of request (streamed, concurrent drafts, n=), each at 300 s.
    assert benchmark_time_limit(options, 0) == 6 * 3 * 3 * 300 + COMMAND_MARGIN_S
    assert benchmark_time_limit(options, 1) == 6 * 1 * 3 * 300 + COMMAND_MARGIN_S
    # The gateway's overhead: its requests both ways, 2 warm-up pairs included, each at 300 s.
    gateway = {**options, "gateway_requests": 50}
    assert benchmark_time_limit(gateway, 1) == (6 * 1 * 3 + 2 * (2 + 50)) * 300 + COMMAND_MARGIN_S
