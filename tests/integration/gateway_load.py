"""A steady stream of Italian requests through a lab host's own gateway while a playbook changes the host:
the failover drill's load generator (llm_toolkit.drill), run on the host as a transient unit with the
gateway's key on its standard input, and its records read back once it stopped."""

from __future__ import annotations

import json
import time

LOAD_UNIT = "llm-test-upgrade-load"
RECORDS = "/root/upgrade-load.jsonl"
STOP_FILE = "/root/upgrade-load.stop"


def start_load(host) -> None:
    gateway = json.loads(host.file("/etc/ansible/facts.d/llm_gateway.fact").content_string)
    started = host.run(
        f"rm -f {RECORDS} {STOP_FILE}; systemd-run --unit {LOAD_UNIT} --property StandardInput=file:"
        f"{gateway['key_file']} /opt/llm-toolkit/venv/bin/python -m llm_toolkit.drill run --base-url "
        f"{gateway['url']} --api-key-stdin --duration 1800 --concurrency 2 --pause 0.5 --max-tokens 8 "
        f"--body-bytes 2048 --output {RECORDS} --stop-file {STOP_FILE}"
    )
    assert started.rc == 0, started.stderr


def stop_load(host) -> list[dict]:
    """Stop the load (it finishes the requests in flight) and return one record per request sent."""
    host.run(f"touch {STOP_FILE}")
    for _ in range(120):
        if host.run(f"systemctl is-active {LOAD_UNIT}").stdout.strip() != "active":
            break
        time.sleep(1)
    host.run(f"systemctl stop {LOAD_UNIT}; systemctl reset-failed {LOAD_UNIT}")
    return [json.loads(line) for line in host.file(RECORDS).content_string.splitlines() if line.strip()]


def outcome(records: list[dict], what: str) -> tuple[list[dict], set[str]]:
    """Print the requests sent, answered and failed during `what`; return the failed ones and the
    backends that answered the others."""
    failed = [record for record in records if not record["ok"]]
    backends = {record["backend"] for record in records if record["ok"]}
    print(f"{what}: {len(records)} sent, {len(records) - len(failed)} answered, {len(failed)} failed;"
          f" answered by {sorted(backends)}")  # fmt: skip
    return failed, backends
