"""The ollama role's wait after a (re)start (roles/ollama/tasks/ready.yml): the API must answer as the
version the run wants, and a unit systemd gave up on ends the wait at once with its journal (a new
release on trial that cannot serve is switched back on that failure: tests/integration/test_ollama.py).
Test-only server on loopback; systemctl and journalctl are stand-ins on PATH where a unit's state is needed."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.unit.role_tasks import REPO, command_stand_ins, run_tasks

GAVE_UP = {
    "systemctl": "printf 'ActiveState=failed\\nSubState=failed\\nResult=start-limit-hit\\nNRestarts=4\\n'",
    "journalctl": "echo 'Error: release 0.32.17 cannot start its server'",
}


class _Version(http.server.BaseHTTPRequestHandler):
    version = "0.32.15"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        data = json.dumps({"version": self.version}).encode()
        self.send_response(200 if self.path == "/api/version" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def ollama_api():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def wait_for(port: int, version: str, tmp_path: Path, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    extra = {"__ollama_api": f"http://127.0.0.1:{port}", "ollama_version": version, "ollama_ready_timeout": 4}
    return run_tasks(REPO / "roles" / "ollama" / "tasks" / "ready.yml", extra, tmp_path, path_prefix)


def said(run: subprocess.CompletedProcess) -> str:
    return " ".join(run.stdout.split())


def test_the_wait_passes_when_the_api_answers_as_the_wanted_version(ollama_api, tmp_path):
    run = wait_for(ollama_api, "0.32.15", tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]


def test_an_api_of_another_version_fails_the_wait_naming_both(ollama_api, tmp_path):
    run = wait_for(ollama_api, "0.32.16", tmp_path)
    assert run.returncode != 0
    assert (
        f"localhost: ollama.service did not answer on http://127.0.0.1:{ollama_api} as version 0.32.16 within 4 s"
        " (answer: 0.32.15)"
    ) in said(run), run.stdout[-3000:]


def test_a_unit_that_systemd_gave_up_on_ends_the_wait_at_once_with_its_journal(tmp_path):
    bin_dir = command_stand_ins(tmp_path / "bin", GAVE_UP)
    with socket.socket() as bound:  # bound and never listening: connection refused, as a dead server
        bound.bind(("127.0.0.1", 0))
        run = wait_for(bound.getsockname()[1], "0.32.17", tmp_path, path_prefix=bin_dir)
    assert run.returncode != 0
    assert ("as version 0.32.17 and systemd gave up on it after 4 restarts (Result=start-limit-hit) (answer: ") in said(
        run
    ), run.stdout[-3000:]
    assert "last journal lines: Error: release 0.32.17 cannot start its server" in said(run)
    assert "FAILED - RETRYING" not in run.stdout  # the first probe saw it: no wait for the budget
