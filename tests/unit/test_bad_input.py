"""Bad input to every command is one line on standard error and exit code 2, never a traceback
(README, "Commands": 0 passed, 1 a check failed, 2 could not run or bad input).

Table-driven: each row runs the real script as a subprocess. Answers that are not what the API
sends come from a loopback server that replays the body a row sets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.http_faults import FaultServer

REPO = Path(__file__).resolve().parents[2]
SSE_DONE = b"data: [DONE]\n\n"


def run_script(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
        cwd=REPO,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


def config_json(tmp_path: Path, content) -> str:
    path = tmp_path / "model" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(content))
    return str(path)


GOOD_CONFIG = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
}
PLAN = ["scripts/plan.py", "--gpus", "1", "--gpu-mem-mib", "24000"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([1, 2], "it holds a JSON list; expected a model's config.json"),
        ({**GOOD_CONFIG, "num_attention_heads": "x"}, "num_attention_heads is 'x'; expected a positive whole number"),
        ({**GOOD_CONFIG, "num_attention_heads": 0}, "num_attention_heads is 0; expected a positive whole number"),
        ({**GOOD_CONFIG, "hidden_size": True}, "hidden_size is True"),
        ({**GOOD_CONFIG, "text_config": [1]}, "text_config is not an object"),
    ],
)
def test_plan_refuses_a_bad_config_json(tmp_path, content, expected):
    assert_one_line_exit_2(run_script([*PLAN, "--config-json", config_json(tmp_path, content)]), expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpus", "100000000"], "--gpus 100000000 is above 16"),
        (["--gpu-mem-mib", "99999999"], "--gpu-mem-mib 99999999 is above 1048576"),
        (["--concurrency", "1000000"], "--concurrency 1000000 is above 4096"),
    ],
)
def test_plan_refuses_unreasonable_sizes(args, expected):
    base = ["scripts/plan.py", "--model", "mixtral-8x7b-instruct", "--gpus", "2", "--gpu-mem-mib", "81920"]
    assert_one_line_exit_2(run_script([*base, *args]), expected)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "soon", "1e9"])
def test_smoke_test_refuses_a_timeout_that_is_not_a_deadline(value):
    args = ["scripts/smoke_test.py", "--base-url", "http://127.0.0.1:9", "--api", "openai", "--model", "m"]
    assert_one_line_exit_2(run_script([*args, f"--timeout={value}"]), "argument --timeout")


def one_benchmark_request(url: str, api: str, *args: str) -> list[str]:
    """scripts/benchmark.py sending exactly one request (no warm-up, one run, one draft) to url."""
    return [
        "scripts/benchmark.py", "--base-url", url, "--api", api, "--model", "m", "--no-progress",
        "--runs", "1", "--warmup", "0", "--drafts", "1", *args,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("api", "mode", "body", "expected"),
    [
        ("openai", "chunked", b"data: [1,2]\n\n" + SSE_DONE, "the answer is not an openai chat stream: 'data: [1,2]'"),
        ("openai", "chunked", b"data: 5\n\n" + SSE_DONE, "the answer is not an openai chat stream: 'data: 5'"),
        ("openai", "chunked", b'data: {"choices":["x"]}\n\n' + SSE_DONE, "not an openai chat stream"),
        ("openai", "chunked", b"<html>busy</html>\n", "not an openai chat stream: '<html>busy</html>'"),
        ("openai", "chunked", b"", "its stream ended without data: [DONE]"),
        ("openai", "chunked", b'data: {"choices":[]}\n\n' + SSE_DONE, "with no content (an empty answer, 0 tokens)"),
        ("ollama", "chunked", b"[1]\n", "the answer is not an ollama chat stream: '[1]'"),
        ("ollama", "chunked", b'{"message": {"content": ""}, "done": true}\n', "with no content"),
        ("ollama", "truncated", b'{"message": {"content": "Ciao"}, "done": false}\n', "then its body broke off"),
    ],
)
def test_benchmark_counts_an_answer_that_is_empty_garbage_or_cut_short_as_an_error(tmp_path, api, mode, body, expected):
    out = tmp_path / "report.json"
    with FaultServer().serve(mode, body) as server:
        result = run_script(one_benchmark_request(server.url, api, "--timeout", "10", "--json", str(out)))
    assert_one_line_exit_2(result, expected)
    assert "unreachable" not in result.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["errors"] == 1
    assert report["exit_code"] == 2


def test_benchmark_the_timeout_is_a_deadline_for_an_endless_stream(tmp_path):
    # Content every 0.1 s without end: per-read timeouts never fire and --max-tokens is ignored by
    # this server, so only the request's deadline ends the run (the subprocess limit ends the test).
    event = b'data: {"choices": [{"delta": {"content": " t"}}]}\n\n'
    with FaultServer().serve("endless-stream", event) as server:
        result = run_script(one_benchmark_request(server.url, "openai", "--max-tokens", "5", "--timeout", "1"))
    assert_one_line_exit_2(result, "its body did not end in time")
    assert "within 1 s (the request's deadline)" in result.stderr


BENCH = ["scripts/benchmark.py", "--base-url", "http://127.0.0.1:9", "--api", "openai", "--model", "m"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--json", "/nonexistent-dir/report.json"], "--json /nonexistent-dir/report.json: the directory"),
        (["--markdown", "/nonexistent-dir/r.md"], "--markdown /nonexistent-dir/r.md: the directory"),
        (["--gpu", "NVIDIA H100 80GB HBM3", "--catalog-model", "bogus"], "--catalog-model 'bogus' is not in the"),
        (["--catalog-model", "mixtral-8x7b-instruct", "--format", "gguf"], "--format 'gguf'"),
        (["--timeout", "nan"], "argument --timeout"),
        (["--tensor-parallel", "100000"], "--tensor-parallel 100000 is outside 1..16"),
    ],
)
def test_benchmark_refuses_bad_arguments_before_it_sends_anything(args, expected):
    assert_one_line_exit_2(run_script([*BENCH, "--no-progress", *args]), expected)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "is not a benchmark report: it is a JSON list"),
        ('{"summary": 1, "config": {}}', "it has no summary and config objects"),
        ('{"summary": {}, "config": {"backend": "vllm", "model": "m"}}', "summary.latency_s_p50 is missing"),
        ('{"summary": {"latency_s_p50": "x"}, "config": {"backend": "v", "model": "m"}}', "summary.latency_s_p50"),
        ("not json", "cannot read"),
    ],
)
def test_benchmark_compare_refuses_malformed_reports(tmp_path, content, expected):
    report = tmp_path / "bad.json"
    report.write_text(content)
    assert_one_line_exit_2(run_script(["scripts/benchmark.py", "--compare", str(report)]), expected)


def test_verify_refuses_an_output_in_a_missing_directory_before_it_runs(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {}}}))
    result = run_script(["scripts/verify.py", "--inventory", str(inventory), "--output", "/nonexistent-dir/v.json"])
    assert_one_line_exit_2(result, "--output /nonexistent-dir/v.json: the directory /nonexistent-dir does not exist")


def test_verify_against_a_host_that_does_not_answer_could_not_run(tmp_path):
    # Port 1 on loopback refuses at once: the host is unreachable, so nothing was verified (exit 2),
    # instead of every check counted as failed (exit 1, "0 passed, 18 failed").
    inventory = tmp_path / "hosts.yml"
    ghost = {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_user": "nobody"}
    inventory.write_text(json.dumps({"all": {"children": {"llm_servers": {"hosts": {"ghost": ghost}}}}}))
    summary = tmp_path / "v.json"
    result = run_script(["scripts/verify.py", "--inventory", str(inventory), "--output", str(summary)])
    assert_one_line_exit_2(result, "verify: could not verify ghost: the host did not answer")
    assert "ghost: not verified: the host did not answer: ssh: connect to host 127.0.0.1 port 1" in result.stdout
    report = json.loads(summary.read_text())
    assert report["exit_code"] == 2
    assert report["hosts"]["ghost"]["failed"] == []


@pytest.mark.parametrize(
    ("variable", "value"), [("LAB_MIN_FREE_MB", "abc"), ("LAB_MIN_FREE_MB", "-5"), ("LAB_BOOT_TIMEOUT", "nan")]
)
def test_lab_refuses_a_bad_environment_before_anything_runs(tmp_path, variable, value):
    # Only validation: LAB_HOME is an empty scratch directory and nothing is booted.
    env = {variable: value, "LAB_HOME": str(tmp_path / "lab-home"), "LAB_NAME": "badinput"}
    result = run_script(["scripts/lab", "up", "1"], env=env)
    assert_one_line_exit_2(result, f"lab: error: {variable}={value!r} is not a number from")
    assert not (tmp_path / "lab-home").exists()
