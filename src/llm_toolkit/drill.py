"""llm-drill: the failover drill's load generator and its report (playbooks/drill.yml).

A steady stream of Italian chat requests goes to the gateway, each a RAG-sized body (32 KiB by
default, so that a retry on the backup needs the whole body buffered) and every other one
streamed, while the drill stops the primary and starts it again. Each request is recorded: when it
started and ended, its status, which server answered (the gateway's X-LLM-Backend header), whether
the answer was complete and Italian (the smoke test's check). `report` splits them by the moments
the drill recorded (the stop, the start, the primary ready again) into before, during and after.

    llm-drill run --base-url URL --api-key-stdin --duration 600 --stop-file STOP --output drill.jsonl
    llm-drill report --input drill.jsonl --stopped T1 --started T2 --ready T3

The only acceptable failures are requests that were already under way on the primary when it was
stopped; any other failure fails the report (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter

from llm_toolkit.cli import OneLineParser, positive_seconds
from llm_toolkit.deadline import HttpFailure, post_json
from llm_toolkit.smoke_test import PROMPT, detect_language

PHASES = ("before", "during", "after")


def request_body(model: str, body_bytes: int, stream: bool, max_tokens: int) -> dict:
    """The Italian question in a body of at least body_bytes. The bulk rides in OpenAI's `user` field,
    which both backends accept and ignore: a prompt that long would not fit a small context, and what
    the drill tests is the gateway buffering and retrying a large body, not the model reading it."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "user": "",
    }
    missing = body_bytes - len(json.dumps(body))
    body["user"] = "drill-" + "x" * max(0, missing - 6)
    return body


def _answer(response, stream: bool) -> str:
    if not stream:
        payload = response.json()
        return str(payload["choices"][0]["message"]["content"] or "")
    parts = []
    for line in response.lines():
        text = line.decode(errors="replace").strip()
        if not text.startswith("data:") or text == "data: [DONE]":
            continue
        delta = json.loads(text[5:])["choices"][0].get("delta", {})
        parts.append(delta.get("content") or "")
    return "".join(parts)


def one_request(url: str, key: str, body: dict, timeout_s: float) -> dict:
    """One request, recorded: start and end (epoch seconds), status, server, completeness, language."""
    record = {"start": time.time(), "stream": body["stream"], "status": None, "backend": None, "error": None}
    try:
        with post_json(url, body, {"Authorization": f"Bearer {key}"}, timeout_s) as response:
            record["status"] = response.status
            record["backend"] = response.header("X-LLM-Backend")
            if response.status == 200:
                answer = _answer(response, body["stream"])
                record["language"] = detect_language(answer)[0] if answer.strip() else None
                record["characters"] = len(answer)
            else:
                record["error"] = f"HTTP {response.status}: {response.text()}"
    except (HttpFailure, ValueError, KeyError, IndexError, TypeError) as error:
        record["error"] = str(error)[:300]
    record["end"] = time.time()
    record["ok"] = record["status"] == 200 and record["error"] is None and bool(record.get("characters"))
    return record


def run(args: argparse.Namespace, key: str) -> int:
    url = f"{args.base_url.rstrip('/').removesuffix('/v1')}/v1/chat/completions"
    deadline = time.monotonic() + args.duration
    lock = threading.Lock()
    counter = {"sent": 0}

    def worker() -> None:
        while time.monotonic() < deadline and not (args.stop_file and os.path.exists(args.stop_file)):
            with lock:
                number = counter["sent"]
                counter["sent"] += 1
            body = request_body(args.model, args.body_bytes, number % 2 == 1, args.max_tokens)
            record = one_request(url, key, body, args.timeout)
            with lock, open(args.output, "a", encoding="utf-8") as output:
                output.write(json.dumps(record) + "\n")
            time.sleep(args.pause)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"drill: {counter['sent']} requests sent to {url}; records in {args.output}")
    return 0


def summarize(
    records: list[dict], stopped: float, started: float, ready: float, stop_ended: float | None = None
) -> dict:
    """Counts per phase (by when each request started) and the failures that are not acceptable."""
    summary = {}
    for phase in PHASES:
        chosen = [
            record
            for record in records
            if (phase == "before" and record["start"] < stopped)
            or (phase == "during" and stopped <= record["start"] < ready)
            or (phase == "after" and record["start"] >= ready)
        ]
        summary[phase] = {
            "sent": len(chosen),
            "answered": sum(record["ok"] for record in chosen),
            "failed": sum(not record["ok"] for record in chosen),
            "italian": sum(record.get("language") == "it" for record in chosen),
            "by_backend": dict(Counter(record["backend"] or "none" for record in chosen if record["ok"])),
        }
    # A request under way on the primary while it was being stopped (from the stop command until it
    # returned: vLLM's shutdown refuses what it already holds) may break; nothing else may fail.
    stop_ended = stop_ended if stop_ended is not None else stopped
    unacceptable = [
        record
        for record in records
        if not record["ok"]
        and not (record["start"] < stop_ended and record["end"] >= stopped and record["backend"] in (None, "vllm"))
    ]
    return {
        "stopped": stopped,
        "started": started,
        "ready": ready,
        "phases": summary,
        "unacceptable_failures": len(unacceptable),
        "examples": [record.get("error") for record in unacceptable[:3]],
    }


def report(args: argparse.Namespace) -> int:
    with open(args.input, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    summary = summarize(records, args.stopped, args.started, args.ready, args.stop_ended)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 1 if summary["unacceptable_failures"] else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="llm-drill", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("run", help="send requests through the gateway for a while")
    load.add_argument("--base-url", required=True, help="the gateway, e.g. http://127.0.0.1:8080")
    load.add_argument("--api-key-stdin", action="store_true", help="read the gateway's key from standard input")
    load.add_argument("--model", default="mixtral")
    load.add_argument("--duration", type=positive_seconds, required=True, help="seconds to keep sending")
    load.add_argument("--concurrency", type=int, default=2, help="requests under way at once")
    load.add_argument("--body-bytes", type=int, default=32768, help="size of each request's body")
    load.add_argument("--max-tokens", type=int, default=16)
    load.add_argument("--pause", type=float, default=0.2, help="seconds between a worker's requests")
    load.add_argument("--timeout", type=positive_seconds, default=120.0, help="deadline of one request")
    load.add_argument("--output", required=True, help="JSON lines, one per request (appended)")
    load.add_argument("--stop-file", default="", help="stop sending once this file exists")
    summary = commands.add_parser("report", help="count the recorded requests before, during and after")
    summary.add_argument("--input", required=True)
    for moment in ("stopped", "started", "ready"):
        summary.add_argument(f"--{moment}", type=float, required=True, help=f"epoch seconds the primary was {moment}")
    summary.add_argument("--stop-ended", type=float, default=None, help="epoch seconds its stop command returned")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "report":
        return report(args)
    key = sys.stdin.readline().strip() if args.api_key_stdin else ""
    return run(args, key)


if __name__ == "__main__":
    sys.exit(main())
