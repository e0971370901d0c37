"""The host verifiers (tests/verify) do not spread vLLM's key: curl gets it on its standard input from
the key's file, and a failing "secret on a command line" check names PIDs and executables only.

The commands the verifiers run on a host are run here on this machine, against a loopback server."""

import http.server
import subprocess
import sys
import threading

import pytest

from llm_toolkit.envfile import systemd_line
from tests.unit.test_secrets import TRICKY
from tests.verify.verify_helpers import PROCESS_LISTING, api_get_command, key_to_stdout, processes_holding

CANARY = "sk-canary-4f1c9e7d2b"
# An operator's key that vllm.env must quote and escape: the verifiers must send it as vLLM reads it.
QUOTED = 'sk op "quoted" key \\ $HOME 50%'


@pytest.fixture
def recorder():
    class Recorder(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            """Quiet."""

        def do_GET(self):
            self.server.seen.append(self.headers.get("Authorization"))
            data = b'{"data": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    httpd.seen = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("key", [CANARY, QUOTED], ids=["bare", "quoted"])
def test_curl_gets_the_key_from_its_file_on_stdin_never_on_a_command_line(recorder, tmp_path, key):
    env_file = tmp_path / "vllm.env"
    env_file.write_text(f"VLLM_HOST=127.0.0.1\n{systemd_line('VLLM_API_KEY', key)}\nVLLM_PORT=8000\n")
    env_file.chmod(0o600)
    url = f"http://127.0.0.1:{recorder.server_address[1]}/v1/models"
    command = api_get_command(url, str(env_file))
    assert key not in command
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert recorder.seen == [f"Bearer {key}"]
    assert key not in result.stdout + result.stderr
    assert key not in key_to_stdout(str(env_file))


@pytest.mark.parametrize("key", [value for value in TRICKY if value], ids=lambda value: f"tricky{TRICKY.index(value)}")
def test_the_key_printed_on_the_host_is_the_value_systemd_reads(tmp_path, key):
    """What vllm.env's encoder writes (systemd reads each of these back exactly: tests/integration/
    test_secrets.py) comes out of key_to_stdout byte for byte, quotes, backslashes and spaces included."""
    env_file = tmp_path / "vllm.env"
    env_file.write_text(f"VLLM_MODEL=x\n{systemd_line('VLLM_API_KEY', key)}\n", encoding="utf-8")
    command = key_to_stdout(str(env_file))
    result = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == key.encode() + b"\n"


def test_without_a_key_file_curl_sends_no_authorization(recorder):
    url = f"http://127.0.0.1:{recorder.server_address[1]}/api/tags"
    result = subprocess.run(["/bin/sh", "-c", api_get_command(url)], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0
    assert recorder.seen == [None]


def test_a_process_with_the_secret_on_its_command_line_is_named_by_pid_and_executable_only():
    leaker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--api-key={CANARY}"])
    try:
        listing = subprocess.run(
            ["/bin/sh", "-c", PROCESS_LISTING], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        found = processes_holding(listing, {CANARY})
    finally:
        leaker.kill()
        leaker.wait()
    assert any(entry.startswith(f"PID {leaker.pid} (") and "python" in entry for entry in found), found
    assert CANARY not in " ".join(found)
    assert processes_holding(listing, {"sk-not-anywhere-0000"}) == []
