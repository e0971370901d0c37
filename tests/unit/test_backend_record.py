"""The backend record (docs/backend-record.md): one contract between the service roles that write it and
every reader (.env, smoke test, benchmark, verifiers)."""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from llm_toolkit.backends import (
    SCHEMA,
    RecordError,
    benchmark_command,
    make_record,
    recorded_backends,
    render,
    smoke_command,
    validate,
)
from llm_toolkit.envfile import app_env_pairs, ready_backends
from tests.ansible_plugins import ansible_filter

REPO = Path(__file__).resolve().parents[2]
VLLM = {
    "backend": "vllm",
    "api": "openai",
    "base_url": "http://127.0.0.1:8000",
    "openai_base_url": "http://127.0.0.1:8000/v1",
    "model": "mixtral",
    "models": ["mixtral"],
    "host": "127.0.0.1",
    "port": 8000,
    "unit": "vllm.service",
    "user": "vllm",
    "auth": True,
    "accelerator": "gpu",
    "version": "0.33.0",
    "tensor_parallel_size": 2,
    "config": "/etc/vllm/vllm.env",
}
OLLAMA = {
    **VLLM,
    "backend": "ollama",
    "api": "ollama",
    "base_url": "http://127.0.0.1:11434",
    "openai_base_url": "http://127.0.0.1:11434/v1",
    "models": ["mixtral:8x7b-instruct-v0.1-q4_K_M", "gemma2:2b"],
    "port": 11434,
    "unit": "ollama.service",
    "user": "ollama",
    "auth": False,
    "version": "0.32.15",
    "tensor_parallel_size": None,
    "config": "/etc/systemd/system/ollama.service.d/toolkit.conf",
}
WRITERS = {"vllm": REPO / "roles/vllm/tasks/service.yml", "ollama": REPO / "roles/ollama/tasks/switch.yml"}
READERS = [
    REPO / "roles/llm_app_env/tasks/probe.yml",
    REPO / "roles/llm_app_env/tasks/render.yml",
    REPO / "roles/llm_smoke/tasks/smoke.yml",
    REPO / "roles/llm_benchmark/tasks/benchmark.yml",
]


def test_the_docs_table_is_the_schema():
    text = (REPO / "docs" / "backend-record.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| (.+) \|$", text, re.M))
    assert rows == {key: description for key, (_, description) in SCHEMA.items()}
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.S)[1])
    assert validate(example) == example


@pytest.mark.parametrize("record", [VLLM, OLLAMA], ids=["vllm", "ollama"])
def test_both_backends_records_have_exactly_the_schema(record):
    assert validate(copy.deepcopy(record)) == record
    assert json.loads(render(record)) == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("unit"), "missing unit"),
        (lambda r: r.update(env_file="/etc/vllm/vllm.env"), "unknown env_file"),
        (lambda r: r.update(port="8000"), "port='8000'; expected int"),
        (lambda r: r.update(port=True), "port=True; expected int"),
        (lambda r: r.update(auth="yes"), "auth='yes'; expected bool"),
        (lambda r: r.update(api="ollama"), "api='ollama'; expected 'openai' for vllm"),
        (lambda r: r.update(backend="tgi"), "backend='tgi'; expected one of vllm, ollama"),
        (lambda r: r.update(tensor_parallel_size=1.5), "tensor_parallel_size=1.5; expected int or null"),
    ],
)
def test_a_record_of_another_shape_is_refused_naming_the_key(change, message):
    record = copy.deepcopy(VLLM)
    change(record)
    with pytest.raises(RecordError, match=re.escape(message)):
        validate(record)


def test_the_writers_filter_builds_the_record_from_the_roles_values():
    fields = {**VLLM, "port": "8000", "tensor_parallel_size": "2"}
    assert json.loads(ansible_filter("llm_backend_record")(fields)) == VLLM
    with pytest.raises(Exception, match="missing config"):
        ansible_filter("llm_backend_record")({key: value for key, value in VLLM.items() if key != "config"})


@pytest.mark.parametrize("backend", ["vllm", "ollama"])
def test_each_service_role_writes_the_schema_s_keys_through_the_filter(backend):
    text = WRITERS[backend].read_text()
    task = re.search(r"Record the backend in a local fact\n(.*?)\| llm_backend_record", text, re.S)[1]
    assert set(re.findall(r"'(\w+)':", task)) == set(SCHEMA)
    assert f"llm_{backend}.fact" in text


def test_readers_accept_exactly_the_schema_and_use_no_other_key():
    records = recorded_backends({"llm_ollama": OLLAMA, "llm_vllm": VLLM, "llm_toolkit": {}})
    assert [record["backend"] for record in records] == ["vllm", "ollama"]
    answers = [
        {"status": 200, "json": {"data": [{"id": "mixtral"}]}},
        {"status": 200, "json": {"models": [{"name": "mixtral:latest", "digest": "d"}]}},
    ]
    ready = ready_backends(records, answers, ["vllm", "ollama"])
    pairs = app_env_pairs(ready, "sk-key", 60, {})
    assert (pairs["LLM_BACKEND"], pairs["LLM_FALLBACK"], pairs["VLLM_BASE_URL"]) == (
        "vllm",
        "ollama",
        VLLM["openai_base_url"],
    )
    assert "--api-key-stdin" in smoke_command(VLLM, "/venv", 60, None)
    assert "--api-key-stdin" not in smoke_command(OLLAMA, "/venv", 60, None)
    options = {"runs": 1, "warmup": 0, "drafts": 3, "max_tokens": 8, "timeout_s": 30, "queries_file": ""}
    assert "--tensor-parallel" in benchmark_command(VLLM, "/venv", options, "/r", "NVIDIA H100", "m", "awq")
    with pytest.raises(RecordError, match=r"llm_vllm\.fact: missing config"):
        recorded_backends({"llm_vllm": {key: value for key, value in VLLM.items() if key != "config"}})


def test_the_roles_and_verifiers_read_only_keys_of_the_schema():
    used = set()
    for reader in READERS:
        used |= set(re.findall(r"\bitem\.(\w+)", reader.read_text())) - {"item", "stdout", "stderr", "msg"}
    for verifier in (REPO / "tests" / "verify").glob("*.py"):
        used |= set(re.findall(r"\bbackend\[\"(\w+)\"\]", verifier.read_text()))
    assert used
    assert used <= set(SCHEMA), used - set(SCHEMA)


def test_make_record_casts_what_ansible_hands_over_as_text():
    record = make_record(**{**OLLAMA, "port": "11434", "tensor_parallel_size": "", "auth": 0})
    assert (record["port"], record["tensor_parallel_size"], record["auth"]) == (11434, None, False)


def test_the_env_points_the_app_at_the_gateway_and_holds_no_backend_key():
    ready = [VLLM, OLLAMA]
    gateway = {"url": "http://127.0.0.1:8080", "key": "gw-key"}
    pairs = app_env_pairs(ready, "sk-vllm", 60, {}, gateway)
    assert (pairs["LLM_BASE_URL"], pairs["LLM_API_KEY"], pairs["LLM_MODEL"]) == (
        "http://127.0.0.1:8080/v1",
        "gw-key",
        VLLM["model"],
    )
    assert (pairs["LLM_BACKEND"], pairs["LLM_FALLBACK"]) == ("vllm", "ollama")
    assert "sk-vllm" not in pairs.values() and "VLLM_API_KEY" not in pairs
    # Without a gateway the app talks to the first backend itself, with its key.
    direct = app_env_pairs(ready, "sk-vllm", 60, {})
    assert (direct["LLM_BASE_URL"], direct["LLM_API_KEY"]) == (VLLM["openai_base_url"], "sk-vllm")
    assert app_env_pairs([OLLAMA], "sk-vllm", 60, {})["LLM_API_KEY"] == ""


def test_the_gateway_overhead_is_asked_of_the_backend_the_gateway_sends_to_and_its_key_is_not_in_argv():
    options = {"runs": 1, "warmup": 0, "drafts": 3, "max_tokens": 8, "timeout_s": 30, "gateway_requests": 50}
    gateway = {
        "url": "https://10.0.0.5:8080",
        "servers": ["vllm", "ollama"],
        "ca_file": "/etc/ca.pem",
        "key_file": "/k",
    }

    def argv(record, gateway):
        return benchmark_command(record, "/venv", options, "/r", "", "m", "awq", gateway)

    vllm = argv(VLLM, gateway)
    at = vllm.index("--gateway-url")
    assert vllm[at : at + 5] == [
        "--gateway-url",
        "https://10.0.0.5:8080",
        "--gateway-key-stdin",
        "--gateway-requests",
        "50",
    ]
    assert vllm[vllm.index("--gateway-ca-file") + 1] == "/etc/ca.pem"
    assert "/k" not in vllm
    ollama = argv(OLLAMA, gateway)
    assert "--gateway-url" not in ollama
    assert "its overhead is in the vllm report" in ollama[ollama.index("--gateway-absent-reason") + 1]
    # Phase 1: Ollama alone behind the gateway is measured; no gateway at all: the reason says so.
    assert "--gateway-key-stdin" in argv(OLLAMA, {**gateway, "servers": ["ollama"], "ca_file": ""})
    for record in (VLLM, OLLAMA):
        alone = argv(record, {})
        assert alone[alone.index("--gateway-absent-reason") + 1] == "no gateway on this host (no llm_gateway.fact)"


@pytest.mark.parametrize(
    ("record", "argv", "stdin"),
    [
        (VLLM, ["--api-key-stdin", "--gateway-key-stdin"], "sk-vllm\nsk-gateway"),
        (VLLM, ["--api-key-stdin", "--gateway-absent-reason", "r"], "sk-vllm"),
        (OLLAMA, ["--gateway-key-stdin"], "sk-gateway"),
        (OLLAMA, ["--gateway-absent-reason", "r"], ""),
    ],
)
def test_the_benchmark_task_sends_the_keys_on_stdin_one_a_line(record, argv, stdin):
    """The keys the role writes on the benchmark's standard input: vLLM's, then the gateway's, each on
    its own line (a real newline, not a backslash and an n)."""
    tasks = yaml.safe_load((REPO / "roles/llm_benchmark/tasks/benchmark.yml").read_text())
    task = next(item for item in tasks if item.get("name") == "benchmark | Measure every backend")
    variables = {
        "item": record,
        "__llm_benchmark_argv": argv,
        "__llm_benchmark_vllm_api_key": "sk-vllm",
        "__llm_benchmark_gateway_key": "sk-gateway",
    }
    templar = Templar(loader=DataLoader(), variables=variables)
    assert templar.template(trust_as_template(task["vars"]["__llm_benchmark_stdin"])) == stdin
    assert "__llm_benchmark_stdin" in task["ansible.builtin.command"]["stdin"]
    assert "sk-" not in json.dumps(task["ansible.builtin.command"]["argv"])
