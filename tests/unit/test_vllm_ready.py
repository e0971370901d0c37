"""The vllm role's readiness wait (roles/vllm/tasks/ready.yml) against a server that starts like vLLM:
its port is bound at once but refuses connections until the model is loaded (docs/fault-matrix.md,
row 19). Test-only server on loopback; the lab test drives the real vLLM."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: Wait as the role does after a (re)start
      ansible.builtin.include_tasks: {ready}
"""


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


def wait_for(port: int, retries: int, tmp_path: Path) -> subprocess.CompletedProcess:
    playbook = tmp_path / "ready.yml"
    playbook.write_text(PLAYBOOK.format(ready=REPO / "roles" / "vllm" / "tasks" / "ready.yml"))
    extra = {
        "ansible_python_interpreter": sys.executable,
        "__vllm_api_base": f"http://127.0.0.1:{port}",
        "__vllm_ready_key": "",
        "vllm_served_model_name": "mixtral",
        "vllm_secure_logging": True,
        "vllm_ready_timeout": retries,
        "__vllm_ready_retries": retries,
        "__vllm_ready_delay": 1,
    }
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(playbook),
            "-e",
            json.dumps(extra),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
        check=False,
    )


def test_connection_refused_after_a_start_is_loading_and_waited_for_until_the_server_listens(slow_server, tmp_path):
    port = slow_server.server_address[1]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # bound, not listening: refused, as vLLM loading
    slow_server.start(4)
    run = wait_for(port, 60, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]
    retries = [line for line in run.stdout.splitlines() if line.startswith("FAILED - RETRYING: [localhost]: ")]
    assert any("ready | Wait until the API lists the served model" in line for line in retries), run.stdout
    assert "did not serve" not in run.stdout
