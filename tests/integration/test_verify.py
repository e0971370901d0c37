"""The whole site.yml on the CPU lab host (both phases, the .env, the smoke test, the verifiers),
then the verifiers shown failing: the host is broken one way at a time, and the verifiers must
report exactly that failure, then pass again once it is repaired.

Stand-in coverage: Ollama is the test-only stand-in (tests/standins/ollama); vLLM and both
backends' answers are real (vLLM's CPU build and the tiny model).
"""

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.integration.conftest import CANARY, REPO
from tests.verify.test_gateway import RUNTIME

HOST = "itest3"
ENV_PATH = "/etc/llm-toolkit/app.env"
ENGLISH_TEMPLATE = "{{ bos_token }}[INST] Hello, how can I help you? [/INST]"


def verify(session_lab) -> dict:
    """scripts/verify.py exactly as the README shows it: the venv's Python, without the venv on PATH."""
    command = [".venv/bin/python", "scripts/verify.py", "--inventory", str(session_lab.inventory)]
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(part for part in os.environ["PATH"].split(os.pathsep) if part != venv_bin)
    result = subprocess.run(
        [*command, "--hosts", HOST, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PATH": path},
        check=False,
    )
    assert result.stdout.startswith("{"), result.stderr[-2000:]
    summary = json.loads(result.stdout)
    summary["rc"] = result.returncode
    return summary


def failing(summary: dict) -> set[str]:
    return {failure["check"] for failure in summary["hosts"][HOST]["failed"]}


@pytest.fixture(scope="module")
def site(converged, session_lab):
    """The whole site.yml once more on the converged CPU host (both backends, the key set)."""
    return session_lab.playbook("--limit", HOST)


def test_site_ends_with_the_smoke_test_and_a_green_verifier_summary(site, session_lab):
    assert site.returncode == 0, site.output[-4000:]
    assert "smoke | Ask every backend in Italian" in site.output
    assert "vllm: smoke test passed: openai mixtral at http://127.0.0.1:8000 answered in" in site.output
    assert "ollama: smoke test passed: ollama mixtral at http://127.0.0.1:11434 answered" in site.output
    assert "    - ok (" in site.output
    assert CANARY not in site.output


def test_the_env_lists_vllm_first_then_ollama_and_reads_back(site, session_lab):
    host = session_lab.host(HOST)
    env = host.file(ENV_PATH)
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    values = dotenv_values(stream=io.StringIO(env.content_string))
    assert values["LLM_BACKEND"] == "vllm"
    assert values["LLM_FALLBACK"] == "ollama"
    assert values["VLLM_BASE_URL"] == "http://127.0.0.1:8000/v1"
    # The app sends its requests to the gateway with the gateway's key; vLLM's key is not the app's.
    assert values["LLM_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert "VLLM_API_KEY" not in values
    assert values["OLLAMA_BASE_URL"] == "http://127.0.0.1:11434"
    assert values["OLLAMA_MODEL"] == "mixtral"


def test_a_healthy_host_passes_every_verifier(site, session_lab):
    summary = verify(session_lab)
    assert summary["rc"] == 0, summary
    assert not summary["hosts"][HOST]["failed"]
    passed = set(summary["hosts"][HOST]["passed"])
    for backend in ("vllm", "ollama"):
        assert f"test_backends::test_the_italian_smoke_test_passes[{backend}]" in passed
    assert "test_secrets_and_env::test_no_secret_is_on_any_process_command_line" in passed


BREAKAGES = {
    # The gateway's health checks need two failed intervals to take the backup out of rotation.
    "a stopped service": (
        "systemctl stop ollama.service && sleep 6",
        "systemctl start ollama.service && sleep 6",
        {
            "test_backends::test_service_is_enabled_and_active[ollama]",
            "test_backends::test_it_listens_only_on_the_configured_address[ollama]",
            "test_backends::test_the_backend_lists_its_model[ollama]",
            "test_backends::test_the_italian_smoke_test_passes[ollama]",
            # Its drop-in drained it for a recorded reason as it stopped: the rotation check passes.
            "test_gateway::test_each_backup_answers_through_the_gateways_route",
        },
    ),
    "a stopped gateway": (
        "systemctl stop haproxy.service",
        "systemctl start haproxy.service && sleep 6",
        {
            "test_gateway::test_haproxy_is_enabled_and_active",
            "test_gateway::test_the_configuration_and_runtime_socket_are_root_only",
            "test_gateway::test_a_client_without_the_key_is_refused",
            "test_gateway::test_every_server_is_in_rotation_or_drained_for_a_reason",
            "test_gateway::test_each_backup_answers_through_the_gateways_route",
        },
    ),
    "a server drained with no reason recorded": (
        # The verifiers' own runtime client: one command to the current worker, as an operator sends it.
        f"python3 -c {shlex.quote(RUNTIME)} /run/haproxy/master.sock 'set server llm/vllm state drain'",
        f"python3 -c {shlex.quote(RUNTIME)} /run/haproxy/master.sock 'set server llm/vllm state ready'",
        {"test_gateway::test_every_server_is_in_rotation_or_drained_for_a_reason"},
    ),
    # A runtime drop-in: systemd shows the new KillMode after a reload, without a restart.
    "a vLLM unit whose stop kills its engine at once": (
        "mkdir -p /run/systemd/system/vllm.service.d"
        " && printf '[Service]\\nKillMode=control-group\\n' > /run/systemd/system/vllm.service.d/zz.conf"
        " && systemctl daemon-reload",
        "rm /run/systemd/system/vllm.service.d/zz.conf && systemctl daemon-reload",
        {"test_backends::test_the_unit_keeps_its_hardening[vllm]"},
    ),
    "a loosened .env": (
        f"chmod 0644 {ENV_PATH}",
        f"chmod 0600 {ENV_PATH}",
        {"test_secrets_and_env::test_the_env_file_is_private_and_owned_as_configured"},
    ),
    "a rebind to 0.0.0.0": (
        "printf '[Service]\\nEnvironment=OLLAMA_HOST=0.0.0.0:11434\\n' > /etc/systemd/system/ollama.service.d/zz.conf"
        " && systemctl daemon-reload && systemctl restart ollama.service && sleep 3",
        "rm /etc/systemd/system/ollama.service.d/zz.conf && systemctl daemon-reload && systemctl restart ollama.service"
        " && sleep 3",
        {"test_backends::test_it_listens_only_on_the_configured_address[ollama]"},
    ),
    "a removed model": (
        'curl -sf -X DELETE http://127.0.0.1:11434/api/delete -d \'{"model": "mixtral"}\'',
        "curl -sf http://127.0.0.1:11434/api/copy"
        ' -d \'{"source": "mixtral:8x7b-instruct-v0.1-q4_K_M", "destination": "mixtral"}\'',
        {
            "test_backends::test_the_backend_lists_its_model[ollama]",
            "test_backends::test_the_italian_smoke_test_passes[ollama]",
        },
    ),
    "an API key on a command line": (
        f"systemd-run --unit=leaky-client sh -c 'sleep 600' client --api-key={CANARY}",
        "systemctl stop leaky-client.service",
        {"test_secrets_and_env::test_no_secret_is_on_any_process_command_line"},
    ),
    "a backend that answers in English": (
        f"printf '%s' '{ENGLISH_TEMPLATE}' > /etc/vllm/english.jinja && chmod 0644 /etc/vllm/english.jinja"
        " && mkdir -p /etc/systemd/system/vllm.service.d"
        " && { echo '[Service]'; echo 'ExecStart='; grep '^ExecStart=' /etc/systemd/system/vllm.service"
        " | sed 's|$| --chat-template /etc/vllm/english.jinja|'; } > /etc/systemd/system/vllm.service.d/zz.conf"
        " && systemctl daemon-reload && systemctl restart vllm.service"
        " && for i in $(seq 120); do curl -sf -o /dev/null http://127.0.0.1:8000/health && break; sleep 2; done",
        "rm /etc/systemd/system/vllm.service.d/zz.conf && systemctl daemon-reload && systemctl restart vllm.service"
        " && for i in $(seq 120); do curl -sf -o /dev/null http://127.0.0.1:8000/health && break; sleep 2; done",
        {"test_backends::test_the_italian_smoke_test_passes[vllm]"},
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_verifier_reports_exactly_the_breakage_and_passes_once_repaired(site, session_lab, breakage):
    host = session_lab.host(HOST)
    breaking, repairing, expected = BREAKAGES[breakage]
    broken = host.run(breaking)
    assert broken.rc == 0, broken.stderr
    try:
        summary = verify(session_lab)
        assert summary["rc"] == 1, summary
        assert failing(summary) == expected, summary["hosts"][HOST]["failed"]
    finally:
        repaired = host.run(repairing)
    assert repaired.rc == 0, repaired.stderr
    healthy = verify(session_lab)
    assert healthy["rc"] == 0, healthy["hosts"][HOST]["failed"]


def test_the_benchmark_tag_writes_json_markdown_and_a_chart_per_host(site, session_lab, tmp_path):
    run = session_lab.playbook(
        "--tags",
        "benchmark",
        "--limit",
        HOST,
        "-e",
        f"llm_benchmark_report_dir={tmp_path}",
        "-e",
        "llm_benchmark_runs=1",
        "-e",
        "llm_benchmark_warmup=0",
        "-e",
        "llm_benchmark_max_tokens=32",
        "-e",
        "llm_benchmark_gateway_requests=5",
    )
    assert run.returncode == 0, run.output[-3000:]
    assert CANARY not in run.output
    reports = tmp_path / HOST
    # The gateway's overhead (presence and shape, never a speed): measured in the run of vLLM, the
    # backend the gateway sends its requests to; the Ollama report says why it has none.
    overhead = json.loads((reports / "vllm.json").read_text())["gateway_overhead"]
    assert overhead["reason"] is None, overhead
    assert overhead["samples"] == 5
    for key in ("direct_ms_p50", "gateway_ms_p50", "overhead_ms_p50", "ratio_p50"):
        assert isinstance(overhead[key], float), (key, overhead)
    assert overhead["gateway_url"].endswith(":8080/v1/chat/completions")
    fallback = json.loads((reports / "ollama.json").read_text())["gateway_overhead"]
    assert (fallback["overhead_ms_p50"], fallback["reason"]) == (
        None,
        "the gateway sends its requests to vllm: its overhead is in the vllm report",
    )
    assert "Gateway overhead (5 non-streamed requests each way, in turn)" in (reports / "compare.md").read_text()
    for backend in ("vllm", "ollama"):
        report = json.loads((reports / f"{backend}.json").read_text())
        summary = report["summary"]
        assert summary["errors"] == 0
        assert summary["latency_s_p50"] > 0
        assert summary["decode_tokens_per_s_p50"] > 0
        assert summary["drafts_wall_s_p50"] > 0
        assert report["config"]["backend"] == ("openai" if backend == "vllm" else "ollama")
        assert "| Configuration | Single query (p50) | 3 drafts (p50) |" in (reports / f"{backend}.md").read_text()
    # The table's rows (after its header), then the gateway's overhead per configuration.
    rows = [line for line in (reports / "compare.md").read_text().splitlines()[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| openai mixtral", "| ollama mixtral"]
    assert (reports / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_the_benchmark_on_a_simulated_gpu_host_computes_the_memory_bandwidth_bound(converged, session_lab):
    """The GPU path of the benchmark on a host: the GPU's name from (the stand-in) nvidia-smi, the
    catalog from the installed llm_toolkit wheel, the bound of the plan's model on that GPU."""
    host = session_lab.host("itest1")  # simulated 4x A100 40GB, Ollama serving the tiny model
    result = host.run(
        "gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
        " && /opt/llm-toolkit/venv/bin/python -m llm_toolkit.benchmark --base-url http://127.0.0.1:11434"
        ' --api ollama --model mixtral --runs 1 --warmup 0 --max-tokens 8 --no-progress --gpu "$gpu"'
        " --catalog-model mixtral-8x7b-instruct --format awq --tensor-parallel 2 --json /root/gpu-bench.json"
    )
    assert result.rc == 0, result.stderr
    config = json.loads(host.file("/root/gpu-bench.json").content_string)["config"]
    assert config["gpu_bandwidth_gbps"] > 1000, config
    assert config["hardware_bound_tokens_per_s"] > 0, config
