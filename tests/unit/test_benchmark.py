"""The benchmark (llm_toolkit.benchmark): timing accuracy against a server with injected delays, outputs, faults.

The timed server here is a test double with known delays (time to first token, gap between tokens),
so that what the benchmark measures can be compared with what was injected; the benchmark against
the real engines runs in the lab.
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

from llm_toolkit import benchmark
from llm_toolkit.catalog import load_models

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark.py"

TTFT, GAP, TOKENS = 0.25, 0.04, 11


class Timed(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        """Quiet."""

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.count += 1
            count = server.count
        if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
            self._send(401, {"error": "Unauthorized"})
            return
        if body.get("model") != "tiny":
            self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            return
        if server.fail_after and count > server.fail_after:
            self._send(500, {"error": "engine died"})
            return
        if not body.get("stream"):
            time.sleep(TTFT + (TOKENS - 1) * GAP)
            choices = [{"index": i, "message": {"content": "Ciao"}} for i in range(body.get("n", 1))]
            self._send(200, {"choices": choices, "usage": {"completion_tokens": TOKENS * body.get("n", 1)}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        ollama = self.path == "/api/chat"
        started = time.perf_counter()
        if not ollama:
            self._chunk(b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n')
        for token in range(TOKENS):
            time.sleep(max(0.0, started + TTFT + token * GAP - time.perf_counter()))
            if ollama:
                self._chunk(json.dumps({"message": {"content": f" t{token}"}, "done": False}).encode() + b"\n")
            else:
                self._chunk(f'data: {{"choices": [{{"delta": {{"content": " t{token}"}}}}]}}\n\n'.encode())
        if ollama:
            self._chunk(json.dumps({"message": {"content": ""}, "done": True, "eval_count": TOKENS}).encode() + b"\n")
        else:
            usage = {"choices": [], "usage": {"completion_tokens": TOKENS if server.usage else None}}
            if not server.usage:
                usage = {"choices": []}
            self._chunk(f"data: {json.dumps(usage)}\n\n".encode() + b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Timed)
    httpd.daemon_threads = True
    httpd.lock, httpd.count, httpd.key, httpd.fail_after, httpd.usage = threading.Lock(), 0, "", 0, True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def bench(server, *args, env=None):
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--base-url", server.url, "--model", "tiny", "--no-progress", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_injected_timings_are_measured_within_5_percent(server, api, tmp_path):
    out = tmp_path / "report.json"
    result = bench(server, "--api", api, "--runs", "2", "--warmup", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["ttft_s_p50"] == pytest.approx(TTFT, rel=0.05)
    assert summary["decode_tokens_per_s_p50"] == pytest.approx(1 / GAP, rel=0.05)
    assert summary["latency_s_p50"] == pytest.approx(TTFT + (TOKENS - 1) * GAP, rel=0.05)
    # The server runs the 3 drafts side by side: their wall time is one request's, not three.
    assert summary["drafts_wall_s_p50"] == pytest.approx(TTFT + (TOKENS - 1) * GAP, rel=0.10)
    assert summary["errors"] == 0
    assert summary["token_count_source"] == "usage"
    single = [s for s in report["samples"] if s["kind"] == "single"]
    assert len(single) == 2 * 3  # runs x queries, warm-up not recorded
    assert {s["query"] for s in single} == set(benchmark.QUERIES)
    assert ("n" in {s["kind"] for s in report["samples"]}) is (api == "openai")


def test_without_server_usage_tokens_are_counted_from_chunks_and_it_says_so(server, tmp_path):
    server.usage = False
    out = tmp_path / "report.json"
    result = bench(server, "--api", "openai", "--runs", "1", "--warmup", "0", "--drafts", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["token_count_source"] == "chunks"
    assert summary["decode_tokens_per_s_p50"] == pytest.approx(1 / GAP, rel=0.05)


def test_markdown_and_chart_are_written(server, tmp_path):
    md, png = tmp_path / "report.md", tmp_path / "chart.png"
    result = bench(server, "--api", "openai", "--runs", "1", "--warmup", "0", "--markdown", str(md), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    text = md.read_text()
    assert "| Configuration | Single query (p50) | 3 drafts (p50) | Tokens/s (p50) |" in text
    assert "| Come posso lavare la mia auto? |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_server_error_mid_run_keeps_the_samples_and_exits_1(server, tmp_path):
    server.fail_after = 4
    out = tmp_path / "report.json"
    result = bench(server, "--api", "ollama", "--runs", "2", "--warmup", "0", "--drafts", "1", "--json", str(out))
    assert result.returncode == 1
    assert "answered HTTP 500" in result.stderr
    assert "kept in the JSON" in result.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["errors"] == 1
    assert len([s for s in report["samples"] if not s.get("error")]) == 4
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("key", ["--api", "openai"], "answered HTTP 401"),
        ("", ["--api", "openai", "--model", "nope"], "answered HTTP 404"),
    ],
)
def test_a_refused_first_request_exits_2_with_the_reason(server, setup, args, message, tmp_path):
    if setup == "key":
        server.key = "sk-bench"
    out = tmp_path / "r.json"
    result = bench(server, *args, "--json", str(out))
    assert result.returncode == 2
    assert message in result.stderr
    assert json.loads(out.read_text())["samples"][0]["error"]


def test_the_api_key_comes_from_the_environment(server):
    server.key = "sk-bench"
    result = bench(
        server, "--api", "openai", "--runs", "1", "--warmup", "0", "--api-key-env", "K", env={"K": "sk-bench"}
    )
    assert result.returncode == 0, result.stderr
    assert "sk-bench" not in result.stdout + result.stderr


def test_an_unreachable_url_exits_2_and_bad_arguments_too():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, str(SCRIPT), "--api", "ollama", "--model", "m", "--no-progress"]
    result = subprocess.run(
        [*args, "--base-url", f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "is unreachable" in result.stderr
    bad = subprocess.run([*args, "--base-url", "nowhere"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "is not an http(s) URL" in bad.stderr


def test_the_memory_bandwidth_bound_counts_only_active_experts():
    models = load_models()
    mixtral = benchmark.active_weight_fraction(models["mixtral-8x7b-instruct"]["architecture"])
    assert mixtral == pytest.approx(12.9 / 46.7, rel=0.05)  # 12.9B of 46.7B parameters per token
    assert benchmark.active_weight_fraction(models["mistral-7b-instruct"]["architecture"]) == 1.0
    assert benchmark.bandwidth_for("NVIDIA H100 80GB HBM3") == 3350
    assert benchmark.bandwidth_for("NVIDIA A100-SXM4-40GB") == 1555
    assert benchmark.bandwidth_for("Unknown GPU") is None
    assert benchmark.decode_bound(10.0, 0.5, 1000) == pytest.approx(200.0)


def test_percentiles_and_decode_rate():
    assert benchmark.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert benchmark.percentile([1.0, 2.0, 3.0, 4.0], 0.9) == pytest.approx(3.7)
    assert benchmark.percentile([], 0.5) is None
    assert benchmark.decode_rate(11, 1.0, 1.4) == pytest.approx(25.0)
    assert benchmark.decode_rate(1, 1.0, 1.0) is None


def test_gpu_utilization_is_sampled_where_nvidia_smi_answers(server, tmp_path):
    standin = REPO / "tests" / "standins" / "nvidia_smi"
    out = tmp_path / "report.json"
    env = {"PATH": f"{standin}:{os.environ['PATH']}", "LAB_GPU_PROFILE": "2x-A2000-6GB"}
    result = bench(
        server, "--api", "ollama", "--runs", "1", "--warmup", "0", "--drafts", "1", "--json", str(out), env=env
    )
    assert result.returncode == 0, result.stderr
    gpu = json.loads(out.read_text())["gpu"]
    assert gpu["summary"]["samples"] >= 2
    assert {sample["gpu"] for sample in gpu["samples"]} == {0, 1}
    assert gpu["samples"][0]["memory_total_mib"] == 6138


def test_reports_are_compared_in_one_table_and_chart(server, tmp_path):
    reports = []
    for api in ("openai", "ollama"):
        reports.append(tmp_path / f"{api}.json")
        result = bench(
            server, "--api", api, "--runs", "1", "--warmup", "0", "--drafts", "1", "--json", str(reports[-1])
        )
        assert result.returncode == 0, result.stderr
    md, png = tmp_path / "compare.md", tmp_path / "compare.png"
    compared = subprocess.run(
        [sys.executable, str(SCRIPT), "--compare", *map(str, reports), "--markdown", str(md), "--plot", str(png)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compared.returncode == 0, compared.stderr
    rows = [line for line in md.read_text().splitlines() if line.startswith("| openai") or line.startswith("| ollama")]
    assert len(rows) == 2
    assert png.read_bytes()[:4] == b"\x89PNG"


# -- the gateway's overhead ----------------------------------------------------------------------


class Instant(Timed):
    """A backend or a gateway that answers at once; every request is logged as (server name, path,
    streamed, Authorization header), in one log shared by both servers, in arrival order."""

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        with server.lock:
            server.log.append((server.name, self.path, bool(body.get("stream")), auth))
        if auth != f"Bearer {server.key}":
            self._send(401, {"error": "Unauthorized"})
            return
        if not body.get("stream"):
            self._send(200, {"choices": [{"index": 0, "message": {"content": "Ciao"}}], "usage": {}})
            return
        events = b'data: {"choices": [{"delta": {"content": "Ciao"}}]}\n\n' + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(events)))
        self.end_headers()
        self.wfile.write(events)


@pytest.fixture
def direct_and_gateway():
    """A backend (key sk-direct) and a gateway in front of it (key sk-gw), sharing one request log."""
    log, lock, servers = [], threading.Lock(), []
    for name, key in (("direct", "sk-direct"), ("gateway", "sk-gw")):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Instant)
        httpd.daemon_threads = True
        httpd.name, httpd.key, httpd.log, httpd.lock = name, key, log, lock
        httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    yield servers
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def bench_with_gateway(direct, *args, stdin="", tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("Ciao?\n")
    command = [sys.executable, str(SCRIPT), "--base-url", direct.url, "--api", "openai", "--model", "tiny"]
    command += ["--runs", "1", "--warmup", "0", "--drafts", "1", "--queries", str(queries), "--no-progress"]
    command += ["--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"), *args]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_gateway_overhead_is_the_difference_and_ratio_of_the_p50s():
    overhead = benchmark.gateway_overhead([10.0, 12.0, 11.0, 30.0], [11.0, 13.5, 12.0, 29.0])
    assert overhead["direct_ms_p50"] == pytest.approx(11.5)
    assert overhead["gateway_ms_p50"] == pytest.approx(12.75)
    assert overhead["overhead_ms_p50"] == pytest.approx(1.25)
    assert overhead["ratio_p50"] == pytest.approx(12.75 / 11.5)
    # Each gateway request minus the direct one sent just before it: 1, 1.5, 1, -1.
    assert overhead["paired_overhead_ms_p50"] == pytest.approx(1.0)
    assert (overhead["samples"], overhead["reason"]) == (4, None)


@pytest.mark.parametrize(
    ("direct", "gateway", "reason", "expected"),
    [
        ([], [], "no gateway on this host", "no gateway on this host"),
        ([], [], None, "no request was measured"),
        ([10.0], [11.0], "a request failed: HTTP 401", "a request failed: HTTP 401"),
    ],
)
def test_an_overhead_that_was_not_measured_is_null_with_its_reason(direct, gateway, reason, expected):
    overhead = benchmark.gateway_overhead(direct, gateway, reason)
    figures = ("direct_ms_p50", "gateway_ms_p50", "overhead_ms_p50", "ratio_p50", "paired_overhead_ms_p50")
    assert all(overhead[key] is None for key in figures)
    assert (overhead["samples"], overhead["reason"]) == (0, expected)
    assert f"not measured: {expected}" in benchmark.overhead_line(overhead)


def test_the_overhead_requests_go_in_turn_with_each_side_its_own_key_from_stdin(direct_and_gateway, tmp_path):
    direct, gateway = direct_and_gateway
    result = bench_with_gateway(
        direct,
        "--api-key-stdin",
        "--gateway-url",
        f"{gateway.url}/v1",
        "--gateway-key-stdin",
        "--gateway-requests",
        "5",
        stdin="sk-direct\nsk-gw\n",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "sk-" not in result.stdout + result.stderr
    overhead = json.loads((tmp_path / "r.json").read_text())["gateway_overhead"]
    assert overhead["reason"] is None
    assert overhead["samples"] == 5
    assert len(overhead["direct_ms"]) == len(overhead["gateway_ms"]) == 5
    for key in ("direct_ms_p50", "gateway_ms_p50", "overhead_ms_p50", "ratio_p50", "paired_overhead_ms_p50"):
        assert isinstance(overhead[key], float), key
    assert overhead["overhead_ms_p50"] == pytest.approx(overhead["gateway_ms_p50"] - overhead["direct_ms_p50"])
    assert overhead["ratio_p50"] == pytest.approx(overhead["gateway_ms_p50"] / overhead["direct_ms_p50"])
    assert overhead["gateway_url"] == f"{gateway.url}/v1/chat/completions"
    # The non-streamed requests, the 2 warm-up pairs included, alternate: direct, gateway, direct, ...
    turns = [(name, auth) for name, path, streamed, auth in direct.log if not streamed]
    assert turns == [("direct", "Bearer sk-direct"), ("gateway", "Bearer sk-gw")] * 7
    assert {path for _, path, _, _ in direct.log} == {"/v1/chat/completions"}
    report = (tmp_path / "r.md").read_text()
    assert "Gateway overhead (5 non-streamed requests each way, in turn): direct p50" in report


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--gateway-absent-reason", "no gateway on this host"], "no gateway on this host"),
        ([], "no gateway was named (--gateway-url)"),
        (["--gateway-url", "http://127.0.0.1:9", "--gateway-requests", "0"], "--gateway-requests 0: not asked for"),
    ],
)
def test_without_a_gateway_the_overhead_is_null_with_the_reason(direct_and_gateway, args, reason, tmp_path):
    direct, _ = direct_and_gateway
    result = bench_with_gateway(direct, "--api-key-stdin", *args, stdin="sk-direct\n", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    overhead = json.loads((tmp_path / "r.json").read_text())["gateway_overhead"]
    assert (overhead["reason"], overhead["overhead_ms_p50"], overhead["ratio_p50"]) == (reason, None, None)
    assert not [entry for entry in direct.log if not entry[2]]  # no overhead request was sent
    assert f"Gateway overhead: not measured: {reason}." in (tmp_path / "r.md").read_text()


def test_a_failed_gateway_request_exits_1_keeping_the_run_and_nulls_the_overhead(direct_and_gateway, tmp_path):
    direct, gateway = direct_and_gateway
    result = bench_with_gateway(
        direct,
        "--api-key-stdin",
        "--gateway-url",
        gateway.url,
        "--gateway-key-stdin",
        stdin="sk-direct\nsk-wrong\n",
        tmp_path=tmp_path,
    )
    assert result.returncode == 1
    assert "the gateway's overhead" in result.stderr
    assert "answered HTTP 401" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "sk-wrong" not in result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["latency_s_p50"] is not None
    overhead = report["gateway_overhead"]
    assert overhead["reason"].startswith("a request failed: ")
    assert overhead["overhead_ms_p50"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gateway-key-stdin"], "--gateway-key-stdin and --gateway-ca-file need --gateway-url"),
        (["--gateway-url", "gateway:8080"], "is not an http(s) URL"),
        (["--gateway-url", "http://127.0.0.1:8080", "--gateway-requests", "-1"], "is negative"),
        (["--gateway-url", "http://127.0.0.1:8080", "--gateway-ca-file", "/nonexistent/ca.pem"], "no such file"),
    ],
)
def test_bad_gateway_arguments_exit_2_with_one_line(direct_and_gateway, args, message, tmp_path):
    direct, _ = direct_and_gateway
    result = bench_with_gateway(direct, *args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not direct.log


def test_the_comparison_shows_the_gateway_overhead_of_each_report(direct_and_gateway, tmp_path):
    direct, gateway = direct_and_gateway
    args = ["--gateway-url", gateway.url, "--gateway-key-stdin", "--gateway-requests", "3"]
    result = bench_with_gateway(direct, "--api-key-stdin", *args, stdin="sk-direct\nsk-gw\n", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    md = tmp_path / "compare.md"
    compared = subprocess.run(
        [sys.executable, str(SCRIPT), "--compare", str(tmp_path / "r.json"), "--markdown", str(md)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compared.returncode == 0, compared.stderr
    assert "- openai tiny: Gateway overhead (3 non-streamed requests each way, in turn): direct p50" in md.read_text()
