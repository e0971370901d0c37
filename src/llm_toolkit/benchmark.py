"""Benchmark one LLM backend on the RAG app's Italian queries: latency, time to first token, decode
speed, and the time of the 3 drafts the app writes per answer.

    scripts/benchmark.py --base-url URL --api openai|ollama --model NAME [--api-key-env VAR | --api-key-stdin]
        [--runs N] [--warmup K] [--drafts 3] [--max-tokens T] [--queries FILE]
        [--json OUT] [--markdown OUT] [--plot OUT.png] [--gpu NAME] [--catalog-model KEY --format F]
        [--gateway-url URL --gateway-key-stdin [--gateway-ca-file CA] [--gateway-requests N]
         | --gateway-absent-reason TEXT]
    scripts/benchmark.py --compare A.json B.json ... [--markdown OUT] [--plot OUT.png]

Every time is taken on the client with a monotonic clock. Per query and run: one streamed request
(latency; time to first token = the first chunk with non-empty content, not the empty role chunk;
decode tokens/s = tokens after the first / time from the first to the last token, counting the
tokens the server reports where the API gives them, else the streamed chunks, and saying which),
then `--drafts` concurrent requests (their wall time), and on the OpenAI API one request with
n=drafts. Warm-up runs are not recorded. Where nvidia-smi answers, GPU utilization and memory
are sampled every second during the run. --compare renders one table and chart over several reports.

The gateway's overhead (--gateway-url): after the run, --gateway-requests non-streamed chat requests
(max_tokens 1, one fixed prompt) to the backend directly and as many through the gateway, sent in turn
(direct, gateway, direct, gateway, ...) so that a drift of the host hits both alike; the report gives
the p50 of each, their difference and ratio. Keys come on standard input, one a line: the backend's
first (--api-key-stdin), then the gateway's (--gateway-key-stdin). Without --gateway-url the figures
are null and the report says why (--gateway-absent-reason).

Exit status: 0 every request succeeded; 1 a request failed after some were measured (the run
stops there; the samples gathered so far are kept in the JSON); 2 bad arguments, or the first
request failed (unreachable, a wrong model name, 401, a server error).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

from llm_toolkit.backends import OVERHEAD_WARMUP_PAIRS
from llm_toolkit.catalog import get_model, load_models
from llm_toolkit.cli import OneLineParser, output_problem, positive_seconds
from llm_toolkit.deadline import HttpFailure, Response, post_json
from llm_toolkit.host.llm_gpu import run_bounded
from llm_toolkit.planner import MAX_GPUS, PlanError

QUERIES = ["Come posso lavare la mia auto?", "Come rimuovere graffi dalla vernice?", "Prodotti per pulire gli interni?"]

# Memory bandwidth of GPUs (GB/s, vendor data sheets), for the decode speed bound.
GPU_BANDWIDTH_GBPS = {
    "H100 80GB HBM3": 3350,
    "H100 PCIe": 2000,
    "H200": 4800,
    "A100-SXM4-80GB": 2039,
    "A100 80GB PCIe": 1935,
    "A100-SXM4-40GB": 1555,
    "A100-PCIE-40GB": 1555,
    "L40S": 864,
    "L4": 300,
    "A10G": 600,
    "A10": 600,
    "T4": 320,
    "RTX A2000": 288,
}


class BenchmarkError(Exception):
    """A request failed; the message says how (HTTP status, unreachable, a malformed answer)."""


# -- pure helpers -------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear-interpolated percentile (fraction in [0, 1]); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def decode_rate(tokens: int, first: float | None, last: float | None) -> float | None:
    """Tokens after the first divided by the time from the first to the last token."""
    if first is None or last is None or tokens < 2 or last <= first:
        return None
    return (tokens - 1) / (last - first)


def bandwidth_for(gpu_name: str | None) -> float | None:
    """GB/s of the first table entry whose name occurs in the GPU's name (longest names first)."""
    if not gpu_name:
        return None
    for name in sorted(GPU_BANDWIDTH_GBPS, key=len, reverse=True):
        if name.lower() in gpu_name.lower():
            return GPU_BANDWIDTH_GBPS[name]
    return None


def active_weight_fraction(arch: dict) -> float:
    """Share of the weights read per token: all of a dense model; for MoE, only the active experts' MLPs."""
    experts, active = arch.get("num_experts", 1), arch.get("experts_per_token", 1)
    if experts <= 1:
        return 1.0
    hidden, layers = arch["hidden_size"], arch["num_layers"]
    head_dim = hidden // arch["num_attention_heads"]
    attention = hidden * (hidden + 2 * arch["num_kv_heads"] * head_dim) + hidden * hidden
    mlp = 3 * hidden * arch["intermediate_size"]
    embeddings = 2 * arch["vocab_size"] * hidden
    total = layers * (attention + experts * mlp) + embeddings
    used = layers * (attention + active * mlp) + embeddings
    return used / total


def decode_bound(weights_gb: float, fraction: float, bandwidth_gbps: float, tensor_parallel: int = 1) -> float:
    """Upper bound of single-stream decode tokens/s: bandwidth / bytes of weights read per token."""
    return bandwidth_gbps * tensor_parallel / (weights_gb * fraction)


def summarise(samples: list[dict]) -> dict:
    """The JSON contract's summary over every recorded sample."""
    single = [s for s in samples if s["kind"] == "single" and not s.get("error")]
    drafts = [s for s in samples if s["kind"] == "drafts" and not s.get("error")]
    n_requests = [s for s in samples if s["kind"] == "n" and not s.get("error")]
    rates = [s["decode_tokens_per_s"] for s in single if s.get("decode_tokens_per_s")]
    sources = sorted({s["token_source"] for s in single if s.get("token_source")})
    return {
        "latency_s_p50": percentile([s["latency_s"] for s in single], 0.5),
        "latency_s_p90": percentile([s["latency_s"] for s in single], 0.9),
        "ttft_s_p50": percentile([s["ttft_s"] for s in single if s.get("ttft_s") is not None], 0.5),
        "decode_tokens_per_s_p50": percentile(rates, 0.5),
        "drafts_wall_s_p50": percentile([s["wall_s"] for s in drafts], 0.5),
        "n_drafts_wall_s_p50": percentile([s["wall_s"] for s in n_requests], 0.5),
        "errors": sum(1 for s in samples if s.get("error")),
        "samples": len(samples),
        "token_count_source": "+".join(sources) or None,
    }


def gateway_overhead(direct_ms: list[float], gateway_ms: list[float], reason: str | None = None) -> dict:
    """The gateway's overhead from the latencies (ms) of the same requests sent directly and through it,
    in turn: p50 of each, their difference (gateway - direct), their ratio, and the p50 of the paired
    differences (each gateway request minus the direct one sent just before it). With no pair, or a
    reason, every figure is null and `reason` says why (a figure that was not measured is never a number)."""
    pairs = min(len(direct_ms), len(gateway_ms))
    if reason is None and pairs == 0:
        reason = "no request was measured"
    if reason is not None:
        return {
            "direct_ms_p50": None,
            "gateway_ms_p50": None,
            "overhead_ms_p50": None,
            "ratio_p50": None,
            "paired_overhead_ms_p50": None,
            "samples": 0,
            "reason": reason,
        }
    direct, gateway = percentile(direct_ms[:pairs], 0.5), percentile(gateway_ms[:pairs], 0.5)
    return {
        "direct_ms_p50": direct,
        "gateway_ms_p50": gateway,
        "overhead_ms_p50": gateway - direct,
        "ratio_p50": gateway / direct if direct > 0 else None,
        "paired_overhead_ms_p50": percentile([g - d for d, g in zip(direct_ms, gateway_ms, strict=False)], 0.5),
        "samples": pairs,
        "reason": None,
    }


def overhead_line(overhead: dict | None) -> str:
    """One Markdown line about the gateway's overhead: the figures, or why there are none."""
    if not overhead:
        return "Gateway overhead: not measured (the report predates it)."
    if overhead.get("reason"):
        return f"Gateway overhead: not measured: {overhead['reason']}."
    ratio = f"x{overhead['ratio_p50']:.3f}" if overhead.get("ratio_p50") is not None else "ratio n/a"
    return (
        f"Gateway overhead ({overhead['samples']} non-streamed requests each way, in turn): "
        f"direct p50 {overhead['direct_ms_p50']:.2f} ms, through the gateway p50 {overhead['gateway_ms_p50']:.2f} ms, "
        f"overhead {overhead['overhead_ms_p50']:+.2f} ms at p50 ({ratio}; paired p50 "
        f"{overhead['paired_overhead_ms_p50']:+.2f} ms)."
    )


def markdown(config: dict, summary: dict, per_query: dict, overhead: dict | None = None) -> str:
    """A table shaped like the plan's: configuration, single query, 3 drafts, tokens/s."""

    def seconds(value: float | None) -> str:
        return f"{value:.2f} s" if value is not None else "n/a"

    def rate(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "n/a"

    label = f"{config['backend']} {config['model']}"
    lines = [
        f"# Benchmark: {label} ({config['base_url']})",
        "",
        "| Configuration | Single query (p50) | 3 drafts (p50) | Tokens/s (p50) | TTFT (p50) | Errors |",
        "|---|---|---|---|---|---|",
        f"| {label} | {seconds(summary['latency_s_p50'])} | {seconds(summary['drafts_wall_s_p50'])} | "
        f"{rate(summary['decode_tokens_per_s_p50'])} | {seconds(summary['ttft_s_p50'])} | {summary['errors']} |",
        "",
        "| Query | Single query (p50) | 3 drafts (p50) | Tokens/s (p50) |",
        "|---|---|---|---|",
    ]
    for query, stats in per_query.items():
        lines.append(
            f"| {query} | {seconds(stats['latency_s_p50'])} | {seconds(stats['drafts_wall_s_p50'])} | "
            f"{rate(stats['decode_tokens_per_s_p50'])} |"
        )
    if config.get("hardware_bound_tokens_per_s"):
        lines += [
            "",
            f"Single-stream decode reached {config['fraction_of_bound']:.0%} of the memory-bandwidth bound "
            f"({config['hardware_bound_tokens_per_s']:.0f} tokens/s on {config['gpu']}).",
        ]
    lines += ["", f"Tokens counted from: {summary['token_count_source']}."]
    lines += ["", overhead_line(overhead)]
    return "\n".join(lines) + "\n"


# -- requests ------------------------------------------------------------------------------------


def _post(url: str, body: dict, headers: dict, timeout: float, ca_file: str | None = None) -> Response:
    """The response to a POST whose status is 200; --timeout bounds the whole request, body included."""
    try:
        response = post_json(url, body, headers, timeout, ca_file)
    except HttpFailure as error:
        raise BenchmarkError(str(error)) from None
    if response.status != 200:
        text = response.text()
        response.close()
        raise BenchmarkError(f"{url} answered HTTP {response.status}: {text}")
    return response


def _shape_error(api: str, line: str) -> BenchmarkError:
    return BenchmarkError(f"the answer is not an {api} chat stream: {line[:120]!r}")


def _stream_event(api: str, payload: str, line: str) -> dict:
    """The JSON object one stream line carries; BenchmarkError when it is not one, or when the
    stream reports an error in it."""
    try:
        event = json.loads(payload)
    except ValueError:
        raise _shape_error(api, line) from None
    if not isinstance(event, dict):
        raise _shape_error(api, line)
    if event.get("error"):
        raise BenchmarkError(f"the stream reported an error: {str(event['error'])[:200]}")
    return event


def openai_event(line: str) -> tuple[str, int | None] | None:
    """(content, completion tokens reported or None) of one SSE line of an OpenAI chat stream;
    None for lines that carry no event (comments, `event:`/`id:`/`retry:` fields, [DONE]).
    BenchmarkError for anything the API does not send."""
    if not line.startswith("data:"):
        if line.startswith((":", "event:", "id:", "retry:")):
            return None
        raise _shape_error("openai", line)
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    event = _stream_event("openai", data, line)
    choices, usage = event.get("choices", []), event.get("usage")
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        raise _shape_error("openai", line)
    if usage is not None and not isinstance(usage, dict):
        raise _shape_error("openai", line)
    text = ""
    for choice in choices:
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if not isinstance(delta, dict) or not isinstance(content, str | None):
            raise _shape_error("openai", line)
        text += content or ""
    tokens = (usage or {}).get("completion_tokens")
    return text, tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


def ollama_event(line: str) -> tuple[str, int | None, bool]:
    """(content, eval_count or None, done) of one NDJSON line of Ollama's chat stream."""
    event = _stream_event("ollama", line, line)
    message = event.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not isinstance(content, str | None):
        raise _shape_error("ollama", line)
    tokens = event.get("eval_count") if event.get("done") else None
    return (
        content or "",
        tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
        bool(event.get("done")),
    )


def stream_once(args: argparse.Namespace, query: str) -> dict:
    """One streamed request: latency, time to first content token, tokens and decode rate.
    An answer without content, a stream the API would not send, or one that does not end is an error."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    messages = [{"role": "user", "content": query}]
    if args.api == "ollama":
        url = f"{args.base_url}/api/chat"
        body = {"model": args.model, "messages": messages, "stream": True, "options": {"num_predict": args.max_tokens}}
    else:
        url = f"{args.base_url}/v1/chat/completions"
        body = {
            "model": args.model,
            "messages": messages,
            "stream": True,
            "max_tokens": args.max_tokens,
            "stream_options": {"include_usage": True},
        }
    started = time.perf_counter()
    first = last = None
    chunks, reported, ended_by_api = 0, None, False
    with _post(url, body, headers, args.timeout) as response:
        for raw in response.lines():
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            if args.api == "openai":
                ended_by_api = ended_by_api or line.replace(" ", "") == "data:[DONE]"
                event = openai_event(line)
                if event is None:
                    continue
                text, tokens = event
            else:
                text, tokens, done = ollama_event(line)
                ended_by_api = ended_by_api or done
            reported = tokens if tokens is not None else reported
            if text:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                chunks += 1
    ended = time.perf_counter()
    if not ended_by_api:
        end = "data: [DONE]" if args.api == "openai" else 'a line with "done": true'
        raise BenchmarkError(f"{url} answered HTTP 200, but its stream ended without {end} (cut short)")
    if not chunks:
        raise BenchmarkError(f"{url} answered HTTP 200 with no content (an empty answer, 0 tokens)")
    tokens = reported if reported else chunks
    return {
        "latency_s": ended - started,
        "ttft_s": first - started,
        "tokens": tokens,
        "token_source": "usage" if reported else "chunks",
        "decode_tokens_per_s": decode_rate(tokens, first, last),
    }


def drafts_at_once(args: argparse.Namespace, query: str) -> dict:
    """`--drafts` concurrent streamed requests for the same query: their wall time."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.drafts) as pool:
        futures = [pool.submit(stream_once, args, query) for _ in range(args.drafts)]
        results = [future.result() for future in futures]
    return {"wall_s": time.perf_counter() - started, "tokens": sum(r["tokens"] for r in results)}


def n_at_once(args: argparse.Namespace, query: str) -> dict:
    """One OpenAI request with n=drafts (the server batches the drafts itself)."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": query}],
        "max_tokens": args.max_tokens,
        "n": args.drafts,
    }
    url = f"{args.base_url}/v1/chat/completions"
    started = time.perf_counter()
    with _post(url, body, headers, args.timeout) as response:
        try:
            payload = response.json()
        except HttpFailure as error:
            raise BenchmarkError(str(error)) from None
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or len(choices) != args.drafts:
        count = len(choices) if isinstance(choices, list) else "no"
        raise BenchmarkError(f"n={args.drafts} gave {count} choices: {str(payload)[:120]}")
    messages = [choice.get("message") if isinstance(choice, dict) else None for choice in choices]
    contents = [message.get("content") if isinstance(message, dict) else None for message in messages]
    if not all(isinstance(content, str) and content.strip() for content in contents):
        raise BenchmarkError(f"n={args.drafts}: a choice has no content: {str(payload)[:120]}")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    return {"wall_s": time.perf_counter() - started, "tokens": usage.get("completion_tokens")}


# The gateway's overhead is measured on a short request that is the same every time (vLLM's prefix
# cache keeps its prompt), so that the engine's share of each request is small and steady.
OVERHEAD_PROMPT = "Rispondi con una sola parola: ciao?"
OVERHEAD_PATH = "/v1/chat/completions"
OVERHEAD_MAX_TOKENS = 1


def timed_chat(url: str, model: str, key: str, timeout: float, ca_file: str | None = None) -> float:
    """Milliseconds one non-streamed chat request takes, from sending it to its whole answer read;
    BenchmarkError when the answer is not a chat completion."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": OVERHEAD_PROMPT}],
        "max_tokens": OVERHEAD_MAX_TOKENS,
        "temperature": 0,
        "stream": False,
    }
    started = time.perf_counter()
    with _post(url, body, headers, timeout, ca_file) as response:
        try:
            payload = response.json()
        except HttpFailure as error:
            raise BenchmarkError(str(error)) from None
    elapsed = (time.perf_counter() - started) * 1000
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices:
        raise BenchmarkError(f"{url} answered HTTP 200 without choices: {str(payload)[:120]}")
    return elapsed


def measure_gateway_overhead(args: argparse.Namespace, progress) -> tuple[dict, str | None]:
    """The gateway's overhead (gateway_overhead) and the message of a failed request, or None.
    The requests go in turn, direct then through the gateway, so that a drift hits both alike."""
    direct_url = f"{args.base_url}{OVERHEAD_PATH}"
    gateway_url = f"{args.gateway_url}{OVERHEAD_PATH}" if args.gateway_url else None
    about = {
        "endpoint": OVERHEAD_PATH,
        "max_tokens": OVERHEAD_MAX_TOKENS,
        "direct_url": direct_url,
        "gateway_url": gateway_url,
        "warmup_pairs": OVERHEAD_WARMUP_PAIRS,
    }
    if not gateway_url:
        reason = args.gateway_absent_reason or "no gateway was named (--gateway-url)"
        return {**gateway_overhead([], [], reason), **about}, None
    if args.gateway_requests == 0:
        return {**gateway_overhead([], [], "--gateway-requests 0: not asked for"), **about}, None
    direct: list[float] = []
    through: list[float] = []
    for index in range(OVERHEAD_WARMUP_PAIRS + args.gateway_requests):
        try:
            direct_ms = timed_chat(direct_url, args.model, args.api_key, args.timeout)
            progress.update(1)
            gateway_ms = timed_chat(gateway_url, args.model, args.gateway_key, args.timeout, args.gateway_ca_file)
            progress.update(1)
        except (BenchmarkError, HttpFailure) as error:
            failed = {**gateway_overhead([], [], f"a request failed: {error}"), **about}
            return {**failed, "direct_ms": direct, "gateway_ms": through}, str(error)
        if index >= OVERHEAD_WARMUP_PAIRS:
            direct.append(direct_ms)
            through.append(gateway_ms)
    return {**gateway_overhead(direct, through), **about, "direct_ms": direct, "gateway_ms": through}, None


# -- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, queries: list[str], progress) -> tuple[list[dict], str | None]:
    """Every measurement in order; stops at the first failed request and returns its message."""
    samples: list[dict] = []
    kinds = [("single", lambda q: stream_once(args, q)), ("drafts", lambda q: drafts_at_once(args, q))]
    if args.api == "openai" and args.drafts > 1:
        kinds.append(("n", lambda q: n_at_once(args, q)))
    for index in range(args.warmup + args.runs):
        for query in queries:
            for kind, measure in kinds:
                sample = {"query": query, "kind": kind, "run": index - args.warmup, "warmup": index < args.warmup}
                try:
                    sample.update(measure(query))
                except (BenchmarkError, HttpFailure) as error:
                    sample["error"] = str(error)
                    samples.append(sample)
                    return samples, sample["error"]
                if index >= args.warmup:
                    samples.append(sample)
                progress.update(1)
    return samples, None


class GpuSampler:
    """Samples GPU utilization and memory with nvidia-smi once a second while the run lasts (NVIDIA hosts)."""

    QUERY = (
        "nvidia-smi",
        "--query-gpu=index,utilization.gpu,memory.used,memory.total",
        "--format=csv,noheader,nounits",
    )

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> list[dict]:
        # Bounded, and never waiting on a process a wedged driver keeps from dying (subprocess.run would).
        returncode, stdout, _ = run_bounded(list(self.QUERY), 10)
        rows = []
        for line in stdout.splitlines() if returncode == 0 else []:
            fields = [field.strip() for field in line.split(",")]
            if len(fields) == 4 and all(field.replace(".", "").isdigit() for field in fields):
                index, util, used, total = fields
                rows.append(
                    {
                        "gpu": int(index),
                        "utilization_pct": float(util),
                        "memory_used_mib": float(used),
                        "memory_total_mib": float(total),
                    }
                )
        return rows

    def _loop(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            for row in self._read():
                self.samples.append({"t_s": round(time.perf_counter() - started, 2), **row})
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        if self._read():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {
            "samples": len(self.samples),
            "utilization_pct_mean": sum(s["utilization_pct"] for s in self.samples) / len(self.samples),
            "utilization_pct_max": max(s["utilization_pct"] for s in self.samples),
            "memory_used_mib_max": max(s["memory_used_mib"] for s in self.samples),
        }


def per_query(samples: list[dict], queries: list[str]) -> dict:
    return {query: summarise([s for s in samples if s["query"] == query]) for query in queries}


def plot(path: Path, config: dict, summary: dict, per_query_stats: dict) -> None:
    """A chart of latency, 3-draft time and decode speed per query (matplotlib, no display)."""
    import matplotlib  # noqa: PLC0415 - heavy, only when a chart is asked for

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    labels = list(per_query_stats)
    figure, (times, speed) = pyplot.subplots(1, 2, figsize=(11, 4))
    positions = range(len(labels))
    single = [per_query_stats[q]["latency_s_p50"] or 0 for q in labels]
    drafts = [per_query_stats[q]["drafts_wall_s_p50"] or 0 for q in labels]
    times.bar([p - 0.2 for p in positions], single, width=0.4, label="single query (p50)")
    times.bar([p + 0.2 for p in positions], drafts, width=0.4, label=f"{config['drafts']} drafts (p50)")
    times.set_xticks(list(positions), [q[:24] for q in labels], rotation=15, fontsize=8)
    times.set_ylabel("seconds")
    times.legend()
    speed.bar(list(positions), [per_query_stats[q]["decode_tokens_per_s_p50"] or 0 for q in labels])
    speed.set_xticks(list(positions), [q[:24] for q in labels], rotation=15, fontsize=8)
    speed.set_ylabel("decode tokens/s (p50)")
    figure.suptitle(f"{config['backend']} {config['model']}: p50 {summary['latency_s_p50'] or 0:.2f} s per query")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _gateway_arguments(parser: argparse.ArgumentParser) -> None:
    gateway = parser.add_mutually_exclusive_group()
    gateway.add_argument("--gateway-url", default="", help="the gateway in front of this backend, for its overhead")
    gateway.add_argument("--gateway-absent-reason", default="", help="why the gateway's overhead is not measured")
    parser.add_argument(
        "--gateway-key-stdin", action="store_true", help="read the gateway's key from standard input (after --api-key)"
    )
    parser.add_argument("--gateway-ca-file", default="", help="a CA certificate to trust for an https gateway")
    parser.add_argument("--gateway-requests", type=int, default=200, help="requests each way for the overhead")


def _gateway_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the gateway's arguments, or None."""
    if args.gateway_url and not re.match(r"^https?://[^\s/]+", args.gateway_url):
        return f"--gateway-url {args.gateway_url!r} is not an http(s) URL"
    if (args.gateway_key_stdin or args.gateway_ca_file) and not args.gateway_url:
        return "--gateway-key-stdin and --gateway-ca-file need --gateway-url"
    if args.gateway_ca_file and not Path(args.gateway_ca_file).is_file():
        return f"--gateway-ca-file {args.gateway_ca_file}: no such file"
    if args.gateway_requests < 0:
        return f"--gateway-requests {args.gateway_requests} is negative"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="scripts/benchmark.py", name="benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api", required=True, choices=["openai", "ollama"])
    parser.add_argument("--model", required=True)
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key-env", default="", help="environment variable holding the API key")
    key.add_argument("--api-key-stdin", action="store_true", help="read the API key from standard input")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--drafts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--timeout", type=positive_seconds, default=300.0, help="seconds one request may take in all")
    parser.add_argument("--queries", type=Path, help="one query per line (default: the plan's three)")
    parser.add_argument("--json", type=Path, dest="json_out")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--gpu", default="", help="GPU name, for the memory-bandwidth bound")
    parser.add_argument("--catalog-model", default="", help="catalog key, for the bound (weights read per token)")
    parser.add_argument("--format", default="awq", help="weights format of --catalog-model")
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    _gateway_arguments(parser)
    args = parser.parse_args(argv)
    if not re.match(r"^https?://[^\s/]+", args.base_url):
        parser.error(f"--base-url {args.base_url!r} is not an http(s) URL")
    problem = _gateway_problem(args)
    if problem:
        parser.error(problem)
    if args.runs < 1 or args.warmup < 0 or args.drafts < 1 or args.max_tokens < 1:
        parser.error("--runs, --drafts and --max-tokens must be positive and --warmup not negative")
    if args.api_key_env and args.api_key_env not in os.environ:
        parser.error(f"--api-key-env {args.api_key_env}: no such environment variable")
    if args.queries and not args.queries.is_file():
        parser.error(f"--queries {args.queries}: no such file")
    if not 1 <= args.tensor_parallel <= MAX_GPUS:
        parser.error(f"--tensor-parallel {args.tensor_parallel} is outside 1..{MAX_GPUS}")
    # Checked before the run, so that a run's samples are never lost to a path that cannot be written.
    for path, option in ((args.json_out, "--json"), (args.markdown, "--markdown"), (args.plot, "--plot")):
        problem = output_problem(path, option)
        if problem:
            parser.error(problem)
    if args.catalog_model:
        try:
            formats = get_model(load_models(), args.catalog_model)["formats"]
        except PlanError as error:
            parser.error(str(error).replace("--model", "--catalog-model", 1))
        if args.format not in formats:
            parser.error(f"--format {args.format!r}: {args.catalog_model} has {', '.join(formats)} in the catalog")
    args.base_url = args.base_url.rstrip("/").removesuffix("/v1")
    args.gateway_url = args.gateway_url.rstrip("/").removesuffix("/v1")
    args.api_key, args.gateway_key = _read_keys(args)
    return args


def _read_keys(args: argparse.Namespace) -> tuple[str, str]:
    """The backend's key and the gateway's; on standard input one a line, the backend's first."""
    if args.api_key_stdin:
        api_key = sys.stdin.readline().strip()
    else:
        api_key = os.environ.get(args.api_key_env, "") if args.api_key_env else ""
    return api_key, sys.stdin.readline().strip() if args.gateway_key_stdin else ""


def hardware_config(args: argparse.Namespace) -> dict:
    bandwidth = bandwidth_for(args.gpu)
    if not (bandwidth and args.catalog_model):
        return {}
    entry = get_model(load_models(), args.catalog_model)
    weights_gb = entry["formats"][args.format]["weights_gb"]
    bound = decode_bound(weights_gb, active_weight_fraction(entry["architecture"]), bandwidth, args.tensor_parallel)
    return {"gpu_bandwidth_gbps": bandwidth, "weights_gb": weights_gb, "hardware_bound_tokens_per_s": bound}


def _number_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def report_problem(report: object) -> str | None:
    """What makes a JSON document unusable as a benchmark report for --compare, or None."""
    if not isinstance(report, dict):
        return f"it is a JSON {type(report).__name__}, not a report object"
    summary, config = report.get("summary"), report.get("config")
    if not isinstance(summary, dict) or not isinstance(config, dict):
        return "it has no summary and config objects"
    for key in ("backend", "model"):
        if not isinstance(config.get(key), str):
            return f"config.{key} is not a string"
    for key in ("latency_s_p50", "drafts_wall_s_p50", "decode_tokens_per_s_p50", "ttft_s_p50", "errors"):
        if key not in summary or not _number_or_none(summary[key]):
            return f"summary.{key} is missing or not a number"
    return None


def compare(paths: list[Path], plot_path: Path | None, markdown_path: Path | None) -> int:
    """One table and one chart over several JSON reports (the configurations run on a host)."""
    for path, option in ((markdown_path, "--markdown"), (plot_path, "--plot")):
        problem = output_problem(path, option)
        if problem:
            print(f"benchmark --compare: {problem}", file=sys.stderr)
            return 2
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            print(f"benchmark --compare: cannot read {path}: {error}", file=sys.stderr)
            return 2
        problem = report_problem(report)
        if problem:
            print(f"benchmark --compare: {path} is not a benchmark report: {problem}", file=sys.stderr)
            return 2
        reports.append(report)
    lines = [
        "| Configuration | Single query (p50) | 3 drafts (p50) | Tokens/s (p50) | TTFT (p50) | Errors |",
        "|---|---|---|---|---|---|",
    ]
    for report in reports:
        summary, config = report["summary"], report["config"]
        cells = [summary["latency_s_p50"], summary["drafts_wall_s_p50"]]
        lines.append(
            f"| {config['backend']} {config['model']} | "
            + " | ".join(f"{value:.2f} s" if value is not None else "n/a" for value in cells)
            + f" | {summary['decode_tokens_per_s_p50'] or 0:.1f} | {summary['ttft_s_p50'] or 0:.2f} s | "
            f"{summary['errors']} |"
        )
    if any(report.get("gateway_overhead") for report in reports):
        lines.append("")
        for report in reports:
            config = report["config"]
            lines.append(f"- {config['backend']} {config['model']}: {overhead_line(report.get('gateway_overhead'))}")
    table = "\n".join(lines) + "\n"
    if markdown_path:
        markdown_path.write_text(table, encoding="utf-8")
    else:
        print(table, end="")
    if plot_path:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        from matplotlib import pyplot  # noqa: PLC0415

        names = [f"{r['config']['backend']}\n{r['config']['model']}" for r in reports]
        figure, (times, speed) = pyplot.subplots(1, 2, figsize=(10, 4))
        positions = list(range(len(reports)))
        times.bar(
            [p - 0.2 for p in positions],
            [r["summary"]["latency_s_p50"] or 0 for r in reports],
            0.4,
            label="single query (p50)",
        )
        times.bar(
            [p + 0.2 for p in positions],
            [r["summary"]["drafts_wall_s_p50"] or 0 for r in reports],
            0.4,
            label="3 drafts (p50)",
        )
        times.set_xticks(positions, names)
        times.set_ylabel("seconds")
        times.legend()
        speed.bar(positions, [r["summary"]["decode_tokens_per_s_p50"] or 0 for r in reports])
        speed.set_xticks(positions, names)
        speed.set_ylabel("decode tokens/s (p50)")
        figure.tight_layout()
        figure.savefig(plot_path, dpi=100)
        pyplot.close(figure)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--compare"]:
        parser = OneLineParser(
            prog="scripts/benchmark.py --compare", name="benchmark", description="compare JSON reports"
        )
        parser.add_argument("--compare", nargs="+", type=Path, required=True)
        parser.add_argument("--plot", type=Path)
        parser.add_argument("--markdown", type=Path)
        options = parser.parse_args(argv)
        return compare(options.compare, options.plot, options.markdown)
    args = parse_args(argv)
    queries = (
        [line.strip() for line in args.queries.read_text(encoding="utf-8").splitlines() if line.strip()]
        if args.queries
        else QUERIES
    )
    config = {
        "backend": args.api,
        "base_url": args.base_url,
        "model": args.model,
        "format": args.format,
        "tensor_parallel_size": args.tensor_parallel,
        "gpu": args.gpu or None,
        "runs": args.runs,
        "warmup": args.warmup,
        "drafts": args.drafts,
        "max_tokens": args.max_tokens,
        "queries": queries,
        "client": {"python": platform.python_version()},
        **hardware_config(args),
    }
    total = (args.warmup + args.runs) * len(queries) * (3 if args.api == "openai" and args.drafts > 1 else 2)
    if args.gateway_url:
        total += 2 * (OVERHEAD_WARMUP_PAIRS + args.gateway_requests)
    from tqdm import tqdm  # noqa: PLC0415 - the progress bar

    with (
        GpuSampler() as gpu,
        tqdm(total=total, desc="benchmark", unit="req", disable=args.no_progress, file=sys.stderr) as progress,
    ):
        samples, failure = run(args, queries, progress)
        if failure:
            overhead = gateway_overhead([], [], "the benchmark stopped at a failed request before it")
        else:
            overhead, failure = measure_gateway_overhead(args, progress)
            failure = f"the gateway's overhead: {failure}" if failure else None
    status = 0
    if failure:
        measured = sum(1 for s in samples if not s.get("error") and not s.get("warmup"))
        status = 1 if measured else 2
        print(
            f"benchmark: {args.api} {args.model} at {args.base_url}: {failure}; stopped after {measured} "
            f"measurement(s){', kept in the JSON' if args.json_out else ''}",
            file=sys.stderr,
        )
    samples = [s for s in samples if not s.pop("warmup", False) or s.get("error")]
    summary = summarise(samples)
    if config.get("hardware_bound_tokens_per_s") and summary["decode_tokens_per_s_p50"]:
        config["fraction_of_bound"] = summary["decode_tokens_per_s_p50"] / config["hardware_bound_tokens_per_s"]
    stats = per_query(samples, queries)
    report = {
        "summary": summary,
        "per_query": stats,
        "samples": samples,
        "config": config,
        "gateway_overhead": overhead,
        "gpu": {"summary": gpu.summary(), "samples": gpu.samples},
        "exit_code": status,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(markdown(config, summary, stats, overhead), encoding="utf-8")
    if args.plot and samples:
        plot(args.plot, config, summary, stats)
    if not args.json_out:
        print(json.dumps({**summary, "gateway_overhead": overhead}, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
