"""scripts/smoke_test.py: its checks, exit codes and messages, against a scripted local server.

The server here only replays answers (a test double for the HTTP contract of the two APIs); the
smoke test against real engines runs in the lab (tests/integration).
"""

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

from llm_toolkit import smoke_test
from tests.unit.http_faults import FaultServer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "smoke_test.py"

ITALIAN = "Ciao! Sono un piccolo modello di prova. Posso rispondere in italiano."
ENGLISH = "Hello! I am a tiny test model. I can answer in English and Italian."


class Scripted(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        """Quiet."""

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append((self.path, body, self.headers.get("Authorization")))
        time.sleep(server.delay)
        status, answer = server.status, server.answer
        with server.lock:
            if server.script:  # (status, answer) per request, in the order requests arrive
                status, answer = server.script.pop(0)
        if server.gate is not None:  # answer only once every expected request is in flight
            try:
                server.gate.wait()
            except threading.BrokenBarrierError:
                status, answer = 503, "the requests did not arrive together"
        if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
            status, payload = 401, {"error": "Unauthorized"}
        elif self.path == "/api/chat":
            payload = {"message": {"role": "assistant", "content": answer}, "done": True}
        elif self.path == "/v1/chat/completions":
            payload = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        else:
            status, payload = 404, {"error": "not found"}
        data = (server.raw if server.raw is not None else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.answer, httpd.status, httpd.delay, httpd.key, httpd.raw, httpd.seen = ITALIAN, 200, 0.0, "", None, []
    httpd.script, httpd.gate, httpd.lock = [], None, threading.Lock()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def smoke(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_an_italian_answer_passes_every_check(server, api):
    result = smoke("--base-url", server.url, "--api", api, "--model", "mixtral", "--max-latency", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"smoke test passed: {api} mixtral at {server.url} answered in Italian")
    path, body, _ = server.seen[0]
    assert path == ("/api/chat" if api == "ollama" else "/v1/chat/completions")
    assert body["messages"] == [{"role": "user", "content": "Ciao, come posso aiutarti?"}]
    assert body["model"] == "mixtral"


def test_an_english_answer_fails_with_the_check_and_the_start_of_the_answer(server):
    server.answer = ENGLISH
    result = smoke("--base-url", server.url, "--api", "openai", "--model", "m")
    assert result.returncode == 1
    assert "smoke test FAILED" in result.stdout
    assert "italian (detected en (langdetect)" in result.stdout
    assert f"answer starts: {ENGLISH!r}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_an_empty_answer_fails_as_empty(server):
    server.answer = "   "
    result = smoke("--base-url", server.url, "--api", "ollama", "--model", "m", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    failed = {check["name"] for check in report["checks"] if not check["passed"]}
    assert failed == {"non_empty", "italian"}
    assert report["exit_code"] == 1


def test_a_slow_answer_fails_the_latency_bound(server):
    server.delay = 0.5
    result = smoke("--base-url", server.url, "--api", "openai", "--model", "m", "--max-latency", "0.2", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    latency = next(check for check in report["checks"] if check["name"] == "latency")
    assert latency["passed"] is False
    assert latency["detail"].endswith("(bound 0.2 s)")
    assert set(report) >= {"base_url", "api", "model", "prompt", "passed", "checks", "answer", "error"}


@pytest.mark.parametrize(("status", "raw"), [(500, None), (404, None), (200, "not json")])
def test_http_errors_and_unreadable_answers_exit_2(server, status, raw):
    server.status, server.raw = status, raw
    result = smoke("--base-url", server.url, "--api", "openai", "--model", "m")
    assert result.returncode == 2
    assert result.stderr.startswith("smoke test: openai m at ")
    assert "Traceback" not in result.stderr


def test_an_unreachable_service_exits_2():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = smoke("--base-url", f"http://127.0.0.1:{port}", "--api", "ollama", "--model", "m", "--timeout", "5")
    assert result.returncode == 2
    assert "is unreachable: ConnectionRefusedError" in result.stderr


def test_the_api_key_comes_from_the_environment_or_stdin_never_argv(server):
    server.key = "sk-smoke-canary"
    without = smoke("--base-url", server.url, "--api", "openai", "--model", "m")
    assert without.returncode == 2
    assert "answered HTTP 401" in without.stderr
    with_key = smoke(
        "--base-url",
        server.url,
        "--api",
        "openai",
        "--model",
        "m",
        "--api-key-env",
        "APP_KEY",
        env={"APP_KEY": server.key},
    )
    assert with_key.returncode == 0
    assert server.seen[-1][2] == "Bearer sk-smoke-canary"
    assert server.key not in with_key.stdout + with_key.stderr
    piped = smoke(
        "--base-url", server.url, "--api", "openai", "--model", "m", "--api-key-stdin", stdin=server.key + "\n"
    )
    assert piped.returncode == 0, piped.stderr
    assert server.seen[-1][2] == "Bearer sk-smoke-canary"
    assert server.key not in piped.stdout + piped.stderr
    both = smoke("--base-url", server.url, "--api", "openai", "--model", "m", "--api-key-stdin", "--api-key-env", "X")
    assert both.returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--base-url", "localhost:8000", "--api", "openai", "--model", "m"],
        ["--base-url", "http://x", "--api", "grpc", "--model", "m"],
        ["--base-url", "http://x", "--api", "openai", "--model", "m", "--api-key-env", "NO_SUCH_VARIABLE_HERE"],
        ["--base-url", "http://x", "--api", "openai", "--model", "m", "--timeout", "0"],
        ["--api", "openai"],
        ["--base-url", "http://x", "--api", "openai", "--model", "m", "--concurrency", "0"],
        ["--base-url", "http://x", "--api", "openai", "--model", "m", "--concurrency", "65"],
        ["--base-url", "http://x", "--api", "openai", "--model", "m", "--concurrency", "four"],
    ],
)
def test_bad_arguments_exit_2_with_one_message(args):
    result = smoke(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_stopword_method_tells_italian_from_its_neighbours():
    assert smoke_test.stopword_language(ITALIAN) == "it"
    assert smoke_test.stopword_language(ENGLISH) == "en"
    assert smoke_test.stopword_language("Hola, soy un modelo pequeño de prueba y puedo ayudar.") == "es"
    assert smoke_test.stopword_language("ok") is None
    assert smoke_test.stopword_shares("")["it"] == 0.0


def test_answers_are_read_from_either_api_shape():
    assert smoke_test.answer_of("ollama", {"message": {"content": " Ciao "}}) == "Ciao"
    assert smoke_test.answer_of("openai", {"choices": [{"message": {"content": None}}]}) == ""
    with pytest.raises(smoke_test.SmokeError):
        smoke_test.answer_of("openai", {"error": "x"})
    url, _ = smoke_test.request_for("openai", "http://h:8000/v1/", "m")
    assert url == "http://h:8000/v1/chat/completions"


@pytest.mark.parametrize("mode", ["drip-headers", "drip-body"])
def test_the_timeout_is_a_deadline_for_the_whole_request_not_per_read(mode):
    # The server sends a byte every 0.1 s: a per-read timeout never fires, so without a deadline
    # for the whole request the smoke test would wait forever (the subprocess limit ends the test).
    with FaultServer().serve(mode) as slow:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--base-url", slow.url, "--api", "openai", "--model", "m", "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2
    assert "within 1 s (the request's deadline)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_body_cut_short_is_an_answer_that_broke_off_not_an_unreachable_service():
    with FaultServer().serve("truncated", b'{"choices": [') as cut:
        result = smoke("--base-url", cut.url, "--api", "openai", "--model", "m", "--timeout", "10")
    assert result.returncode == 2
    assert "answered HTTP 200, then its body broke off after 13 bytes" in result.stderr
    assert "unreachable" not in result.stderr


# --- concurrent mode: the app's drafts at once (issue 14; fault matrix row 29) ---------------------


def concurrent(server, count: int, *extra: str) -> subprocess.CompletedProcess:
    return smoke("--base-url", server.url, "--api", "openai", "--model", "mixtral", "--concurrency", str(count), *extra)


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_concurrent_requests_are_in_flight_together_and_every_answer_is_checked(server, api):
    # The server answers only when all four requests have arrived: sent one after another, they
    # would break its barrier and get 503.
    server.gate = threading.Barrier(4, timeout=30)
    result = smoke("--base-url", server.url, "--api", api, "--model", "mixtral", "--concurrency", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines[:4]] == [f"request {n}" for n in range(1, 5)]
    assert all(": passed in " in line and "Ciao!" in line for line in lines[:4])
    assert lines[4].startswith(f"smoke test passed: {api} mixtral at {server.url}: 4 of 4 concurrent answers")
    assert len(server.seen) == 4


def test_one_answer_not_in_italian_fails_the_concurrent_run_and_is_named(server):
    server.script = [(200, ITALIAN), (200, ENGLISH), (200, ITALIAN), (200, ITALIAN)]
    result = concurrent(server, 4)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if ": FAILED italian (detected en" in line]
    assert len(failed) == 1 and "Hello!" in failed[0]
    assert result.stdout.count(": passed in ") == 3
    assert "smoke test FAILED: openai mixtral at" in result.stdout
    assert "1 of 4 concurrent answers failed a check" in result.stdout


def test_an_empty_answer_among_concurrent_ones_fails_as_empty(server):
    server.script = [(200, ITALIAN), (200, ""), (200, ITALIAN)]
    result = concurrent(server, 3)
    assert result.returncode == 1
    assert "FAILED non_empty (0 characters)" in result.stdout


def test_a_concurrent_request_answered_with_an_http_error_exits_2_in_one_line(server):
    server.script = [(200, ITALIAN), (503, "busy"), (200, ITALIAN), (200, ITALIAN)]
    result = concurrent(server, 4)
    assert result.returncode == 2, result.stdout + result.stderr
    stderr = result.stderr.strip().splitlines()
    assert len(stderr) == 1 and "Traceback" not in result.stderr
    assert "1 of 4 concurrent requests could not be asked; first: request" in stderr[0]
    assert "answered HTTP 503" in stderr[0]
    assert result.stdout.count(": passed in ") == 3


def test_concurrent_answers_cut_short_are_not_complete():
    with FaultServer().serve("truncated", b'{"choices": [') as cut:
        result = smoke(
            "--base-url", cut.url, "--api", "openai", "--model", "m", "--concurrency", "2", "--timeout", "10"
        )
    assert result.returncode == 2
    assert "2 of 2 concurrent requests could not be asked" in result.stderr
    assert "then its body broke off after 13 bytes" in result.stderr
    assert result.stdout.count("could not be asked: ") == 2


def test_the_concurrent_json_report_has_every_request(server):
    server.script = [(200, ITALIAN), (200, ENGLISH), (200, ITALIAN)]
    result = concurrent(server, 3, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["concurrency"] == 3 and report["exit_code"] == 1 and not report["passed"]
    assert [entry["request"] for entry in report["requests"]] == [1, 2, 3]
    assert sorted(entry["exit_code"] for entry in report["requests"]) == [0, 0, 1]
    assert all(entry["latency_s"] is not None and entry["checks"] for entry in report["requests"])
