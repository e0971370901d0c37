"""Filters over the backend record every service role writes and every reader reads (llm_toolkit.backends).

{{ {'backend': 'vllm', ...} | llm_backend_record }}        the local fact's text, checked against the contract
{{ ansible_facts['ansible_local'] | llm_recorded_backends }} the recorded backends, vLLM first, each checked
{{ record | llm_smoke_command(venv, timeout, max_latency) }} the smoke test's argv for one backend
{{ record | llm_benchmark_command(venv, options, report_dir, gpu, model, format, gateway) }}  the benchmark's argv
{{ records | llm_benchmark_reports(report_dir) }}          where the reports of the backends land
{{ timeout_s | llm_smoke_time_limit }}                      the smoke task's time limit (timeout:)
{{ options | llm_benchmark_time_limit(queries) }}           the benchmark task's time limit (timeout:)
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from llm_toolkit.backends import (
    RecordError,
    benchmark_command,
    benchmark_reports,
    benchmark_time_limit,
    make_record,
    recorded_backends,
    render,
    smoke_command,
    smoke_time_limit,
)

DOCUMENTATION = """
name: llm_backend_filters
short_description: The backend record (local facts llm_vllm and llm_ollama) and the commands that read it
"""


def backend_record(fields):
    try:
        return render(make_record(**dict(fields)))
    except (RecordError, KeyError, TypeError, ValueError) as error:
        raise AnsibleFilterError(f"llm_backend_record: {error}") from None


def recorded(local_facts):
    try:
        return recorded_backends(dict(local_facts or {}))
    except RecordError as error:
        raise AnsibleFilterError(
            f"{error}; fix: converge the backend's role again (--tags phase1 or phase2) to rewrite its record"
        ) from None


def smoke(record, venv, timeout_s, max_latency_s=None):
    return smoke_command(dict(record), str(venv), timeout_s, max_latency_s)


def benchmark(record, venv, options, report_dir, gpu, model, fmt, gateway=None):
    return benchmark_command(
        dict(record), str(venv), dict(options), str(report_dir), str(gpu or ""), model, fmt, dict(gateway or {})
    )


def reports(records, report_dir):
    return benchmark_reports([dict(record) for record in records], str(report_dir))


class FilterModule:
    def filters(self):
        return {
            "llm_backend_record": backend_record,
            "llm_recorded_backends": recorded,
            "llm_smoke_command": smoke,
            "llm_benchmark_command": benchmark,
            "llm_benchmark_reports": reports,
            "llm_smoke_time_limit": smoke_time_limit,
            "llm_benchmark_time_limit": lambda options, queries: benchmark_time_limit(dict(options), queries),
        }
