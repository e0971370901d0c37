"""The backend record: what each service role writes about the backend it deployed, and every reader reads.

The ollama and vllm roles record their backend in a local fact on the host
(`<llm_facts_dir>/llm_ollama.fact`, `llm_vllm.fact`) through the `llm_backend_record` filter, so
both records have exactly the keys of SCHEMA; the .env, smoke test, benchmark and verifiers read
them through `recorded_backends`, which refuses a record of another shape with a message that says
which key is wrong. docs/backend-record.md shows the same table (a unit test keeps them equal).
No secret ever goes into a record: it is world-readable, like every local fact.
"""

from __future__ import annotations

import json
import math

# The benchmark's gateway-overhead pairs it sends first and does not record (the first connections, the
# first pass through the gateway); here so the request count is known without importing the benchmark.
OVERHEAD_WARMUP_PAIRS = 2

# Local facts of the service roles, in the app's order of preference (vLLM first, Ollama the fallback).
BACKEND_FACTS = {"vllm": "llm_vllm", "ollama": "llm_ollama"}

# key: (accepted Python types, description). The types are JSON's, as the local fact holds them.
SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "backend": ((str,), "which backend: vllm or ollama"),
    "api": ((str,), "the API the smoke test and benchmark speak to it: openai (vLLM) or ollama"),
    "base_url": (
        (str,),
        "where the host itself reaches the API, without a path (a wildcard bind: loopback)",
    ),
    "openai_base_url": ((str,), "the OpenAI-compatible base URL (base_url + /v1; Ollama serves one too)"),
    "model": ((str,), "the name the app asks for (vLLM's served name, Ollama's alias or first model)"),
    "models": ((list,), "every model name the backend serves"),
    "host": ((str,), "the address the API binds"),
    "port": ((int,), "the API's TCP port"),
    "unit": ((str,), "the systemd unit that runs it"),
    "user": ((str,), "the system user the unit runs as"),
    "auth": ((bool,), "true when the API wants a Bearer key (vLLM with vllm_api_key); the key itself is never here"),
    "accelerator": ((str,), "gpu or cpu"),
    "version": ((str,), "the installed release of the backend"),
    "tensor_parallel_size": ((int, type(None)), "vLLM's tensor-parallel size; null for Ollama"),
    "config": ((str,), "the file that holds the service's settings (root-only for vLLM, which holds the key)"),
}
BACKENDS = ("vllm", "ollama")
APIS = {"vllm": "openai", "ollama": "ollama"}
ACCELERATORS = ("gpu", "cpu")


class RecordError(ValueError):
    """A backend record that does not have the contract's shape."""


def validate(record: object, where: str = "backend record") -> dict:
    """The record itself when it has exactly SCHEMA's keys with their types, else RecordError naming the key."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = sorted(set(SCHEMA) - set(record))
    extra = sorted(set(record) - set(SCHEMA))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(extra)}"] if extra else []
        )
        raise RecordError(f"{where}: {'; '.join(parts)}; expected the keys of docs/backend-record.md")
    for key, (types, _) in SCHEMA.items():
        value = record[key]
        # bool is an int in Python: a port or a size must not be true/false.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in types)
            raise RecordError(f"{where}: {key}={value!r}; expected {names}")
    if record["backend"] not in BACKENDS:
        raise RecordError(f"{where}: backend={record['backend']!r}; expected one of {', '.join(BACKENDS)}")
    if record["api"] != APIS[record["backend"]]:
        raise RecordError(
            f"{where}: api={record['api']!r}; expected {APIS[record['backend']]!r} for {record['backend']}"
        )
    if record["accelerator"] not in ACCELERATORS:
        raise RecordError(f"{where}: accelerator={record['accelerator']!r}; expected gpu or cpu")
    if record["model"] not in record["models"] and record["backend"] == "vllm":
        raise RecordError(f"{where}: model={record['model']!r} is not among models {record['models']!r}")
    return record


def make_record(**fields) -> dict:
    """A record built by a service role (the llm_backend_record filter): validated before it is written."""
    fields["port"] = int(fields["port"])
    if fields.get("tensor_parallel_size") not in (None, ""):
        fields["tensor_parallel_size"] = int(fields["tensor_parallel_size"])
    else:
        fields["tensor_parallel_size"] = None
    fields["auth"] = bool(fields["auth"])
    fields["models"] = list(fields["models"])
    return validate(fields, f"{fields.get('backend', '?')} record")


def render(record: dict) -> str:
    """The local fact's text: stable key order, so a rerun that changes nothing writes the same bytes."""
    return json.dumps(validate(record), indent=2, sort_keys=True) + "\n"


def recorded_backends(local_facts: dict | None) -> list[dict]:
    """The recorded backends, vLLM first, each checked against the contract."""
    local_facts = local_facts or {}
    return [validate(local_facts[fact], f"{fact}.fact") for fact in BACKEND_FACTS.values() if fact in local_facts]


def smoke_command(record: dict, venv: str, timeout_s: float, max_latency_s: float | None) -> list[str]:
    """The argv that runs the Italian smoke test against one recorded backend from the helper venv."""
    argv = [
        f"{venv}/bin/python",
        "-m",
        "llm_toolkit.smoke_test",
        "--base-url",
        record["base_url"],
        "--api",
        record["api"],
        "--model",
        record["model"],
        "--timeout",
        str(timeout_s),
    ]
    if record["auth"]:
        argv.append("--api-key-stdin")
    if max_latency_s:
        argv += ["--max-latency", str(max_latency_s)]
    return argv


# Seconds a task that runs the smoke test or the benchmark may take beyond its requests' deadlines
# (the helper venv's Python starting, langdetect loading, the reports written).
COMMAND_MARGIN_S = 120
# The queries the benchmark asks when none are configured (llm_toolkit.benchmark.QUERIES).
DEFAULT_BENCHMARK_QUERIES = 3


def smoke_time_limit(timeout_s) -> int:
    """The task's time limit for one smoke test: its one request's deadline plus the margin."""
    return math.ceil(float(timeout_s)) + COMMAND_MARGIN_S


def benchmark_time_limit(options: dict, queries: int) -> int:
    """The task's time limit for one benchmark run: every request at its deadline (per query and run,
    one streamed request, the concurrent drafts and the n= request; the gateway's overhead, both ways,
    its warm-up included), plus the margin."""
    requests = (int(options["warmup"]) + int(options["runs"])) * (int(queries) or DEFAULT_BENCHMARK_QUERIES) * 3
    gateway = int(options.get("gateway_requests") or 0)
    if gateway:
        requests += 2 * (OVERHEAD_WARMUP_PAIRS + gateway)
    return math.ceil(requests * float(options["timeout_s"])) + COMMAND_MARGIN_S


def benchmark_gateway_arguments(record: dict, gateway: dict | None, requests: int) -> list:
    """The benchmark's --gateway-* arguments for one backend. The gateway's overhead is measured in the
    run of the backend it sends its requests to (the first of its servers, while it serves); the other
    runs say why they have no figures. gateway: the host's llm_gateway.fact, or empty without one."""
    if not gateway:
        return ["--gateway-absent-reason", "no gateway on this host (no llm_gateway.fact)"]
    primary = (gateway.get("servers") or ["none"])[0]
    if record["backend"] != primary:
        return [
            "--gateway-absent-reason",
            f"the gateway sends its requests to {primary}: its overhead is in the {primary} report",
        ]
    argv = ["--gateway-url", gateway["url"], "--gateway-key-stdin", "--gateway-requests", str(requests)]
    if gateway.get("ca_file"):
        argv += ["--gateway-ca-file", gateway["ca_file"]]
    return argv


def benchmark_command(
    record: dict,
    venv: str,
    options: dict,
    report_dir: str,
    gpu: str,
    model: str,
    fmt: str,
    gateway: dict | None = None,
) -> list:
    """The argv that benchmarks one recorded backend from the helper venv, its reports in report_dir.

    options: runs, warmup, drafts, max_tokens, timeout_s, queries_file (empty: the plan's queries) and
    gateway_requests. The memory-bandwidth bound needs the GPU's name and the catalog model: asked for
    on vLLM GPU hosts. gateway: the host's llm_gateway.fact (benchmark_gateway_arguments); its key
    comes on standard input after the backend's.
    """
    stem = f"{report_dir}/{record['backend']}"
    argv = [f"{venv}/bin/python", "-m", "llm_toolkit.benchmark", "--base-url", record["base_url"]]
    argv += ["--api", record["api"], "--model", record["model"]]
    for flag, key in (("--runs", "runs"), ("--warmup", "warmup"), ("--drafts", "drafts")):
        argv += [flag, str(options[key])]
    argv += ["--max-tokens", str(options["max_tokens"]), "--timeout", str(options["timeout_s"])]
    argv += ["--json", f"{stem}.json", "--markdown", f"{stem}.md", "--no-progress"]
    if record["auth"]:
        argv.append("--api-key-stdin")
    if options.get("queries_file"):
        argv += ["--queries", options["queries_file"]]
    argv += benchmark_gateway_arguments(record, gateway, int(options.get("gateway_requests") or 0))
    if gpu:
        argv += ["--gpu", gpu]
    if gpu and record["backend"] == "vllm" and record["accelerator"] == "gpu":
        argv += [
            "--catalog-model",
            model,
            "--format",
            fmt,
            "--tensor-parallel",
            str(record["tensor_parallel_size"] or 1),
        ]
    return argv


def benchmark_reports(records: list[dict], report_dir: str) -> dict:
    """Where the reports of each backend land in report_dir, and the comparison of all of them."""
    return {
        "json": [f"{report_dir}/{record['backend']}.json" for record in records],
        "markdown": [f"{report_dir}/{record['backend']}.md" for record in records],
        "compare_markdown": f"{report_dir}/compare.md",
        "compare_plot": f"{report_dir}/compare.png",
    }
