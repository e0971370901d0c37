"""The vllm role's readiness wait (roles/vllm/tasks/ready.yml) against a server that starts like vLLM:
its port is bound at once but refuses connections until the model is loaded (docs/fault-matrix.md,
row 19). Test-only server on loopback; the lab test drives the real vLLM."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from llm_toolkit.host import llm_probe

from tests.unit.role_tasks import REPO, command_stand_ins, run_tasks


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json({"object": "list", "data": [{"id": "mixtral", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json({"choices": [{"text": "!", "index": 0}]})


@pytest.fixture
def slow_server():
    """A server bound now that listen()s only after `start(delay)`: connection refused until then."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler, bind_and_activate=False)
    server.allow_reuse_address = True
    server.server_bind()

    def start(delay: float) -> None:
        def run() -> None:
            time.sleep(delay)
            server.server_activate()
            server.serve_forever(poll_interval=0.1)

        threading.Thread(target=run, daemon=True).start()

    server.start = start
    yield server
    server.shutdown()
    server.server_close()


def wait_for(port: int, retries: int, tmp_path: Path, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    extra = {
        "__vllm_api_base": f"http://127.0.0.1:{port}",
        "__vllm_ready_key": "",
        "vllm_served_model_name": "mixtral",
        "vllm_secure_logging": True,
        "vllm_ready_timeout": retries,
        "__vllm_ready_retries": retries,
        "__vllm_ready_delay": 1,
    }
    return run_tasks(REPO / "roles" / "vllm" / "tasks" / "ready.yml", extra, tmp_path, path_prefix)


def test_connection_refused_after_a_start_is_loading_and_waited_for_until_the_server_listens(slow_server, tmp_path):
    port = slow_server.server_address[1]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # bound, not listening: refused, as vLLM loading
    slow_server.start(4)
    run = wait_for(port, 60, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]
    retries = [line for line in run.stdout.splitlines() if line.startswith("FAILED - RETRYING: [localhost]: ")]
    assert any("probe | Wait until the API lists the served model" in line for line in retries), run.stdout
    assert "did not serve" not in run.stdout


# systemd and its journal as a unit that hit its start limit shows them (stand-ins on PATH for this run).
GAVE_UP = {
    "systemctl": "printf 'ActiveState=failed\\nSubState=failed\\nResult=start-limit-hit\\nNRestarts=4\\n'",
    "journalctl": "echo 'vllm: error: unrecognized arguments: --no-such-flag'",
}


def test_a_unit_that_systemd_gave_up_on_ends_the_wait_at_once_with_its_journal(tmp_path):
    bin_dir = command_stand_ins(tmp_path / "bin", GAVE_UP)
    with socket.socket() as bound:  # bound and never listening: connection refused, as a dead server
        bound.bind(("127.0.0.1", 0))
        run = wait_for(bound.getsockname()[1], 60, tmp_path, path_prefix=bin_dir)
    assert run.returncode != 0
    assert (
        "localhost: vllm.service did not serve mixtral and systemd gave up on it after 4 restarts"
        " (Result=start-limit-hit); last journal lines: vllm: error: unrecognized arguments: --no-such-flag"
    ) in run.stdout, run.stdout[-3000:]
    assert "FAILED - RETRYING" not in run.stdout  # the first probe saw it: no wait for the 60 s budget


def test_the_probe_reads_the_list_the_refusal_and_the_units_state():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/models"
        assert llm_probe.listed_models(url, "k", 5) == {
            "status": 200,
            "models": ["mixtral"],
            "version": "",
            "error": "",
        }
        listed = llm_probe.probe(url, "", "mixtral", "", 5)
        assert (listed["listed"], listed["unit"], listed["unit_gave_up"]) == (True, {}, False)
        assert llm_probe.probe(url, "", "gemma2", "", 5)["listed"] is False
        assert llm_probe.probe(url, "", "", "", 5)["listed"] is True  # no model named: the API answered
    finally:
        server.shutdown()
        server.server_close()
    refused = llm_probe.listed_models(url, "", 5)
    assert (refused["status"], refused["models"]) == (0, []) and refused["error"]
    shown = subprocess.CompletedProcess([], 0, "ActiveState=activating\nSubState=auto-restart\nNRestarts=2\n", "")
    state = llm_probe.unit_state("vllm.service", run=lambda *args, **kwargs: shown)
    assert state == {"ActiveState": "activating", "SubState": "auto-restart", "NRestarts": "2"}
    assert not llm_probe.gave_up(state)  # between two tries: systemd starts it again
    assert llm_probe.gave_up({"ActiveState": "failed", "Result": "start-limit-hit"})
    missing = subprocess.CompletedProcess([], 1, "", "System has not been booted with systemd")
    assert llm_probe.unit_state("vllm.service", run=lambda *args, **kwargs: missing) == {}
