"""Italian smoke test of one LLM backend: ask "Ciao, come posso aiutarti?" and check the answer.

    scripts/smoke_test.py --base-url URL --api openai|ollama --model NAME [--api-key-env VAR | --api-key-stdin]
                          [--timeout S] [--max-latency S] [--concurrency N] [--json]

Checks: HTTP 200, a non-empty answer, an answer in Italian, and the latency within --max-latency.
--concurrency N sends N such requests at once (the app writes 3 drafts at a time: 4 is its drafts
plus one) and checks every answer the same way, each read whole; the report shows each request.
Exit status: 0 every check passed; 1 the service answered but a check failed (the message says
which and shows the start of the answer); 2 the service is unreachable or answered an HTTP error,
or the arguments are wrong; with --concurrency, the worst of the requests' statuses. The API key
is read from the environment variable --api-key-env names, or from the first line of standard
input with --api-key-stdin (how the smoke role passes it: a task's environment shows in the
host's process list), never from the command line.

Language detection works offline: langdetect (its language profiles ship in the package; seeded
for repeatable results) decides when it is installed; otherwise, and as the reported second
opinion, a stopword count: the share of the answer's words that are Italian function words,
compared with the same share for English, Spanish, French and Portuguese.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from llm_toolkit.cli import OneLineParser, positive_seconds
from llm_toolkit.deadline import HttpFailure, post_json

PROMPT = "Ciao, come posso aiutarti?"
MAX_TOKENS = 64
# Requests at once: far above the app's drafts; more is a load test (scripts/benchmark.py), not a smoke test.
MAX_CONCURRENCY = 64
# Function words per language, for the stopword method (Italian first; the others catch neighbours).
_STOPWORD_TEXT = {
    "it": (
        "a ai al alla alle anche ancora bene buongiorno che ci ciao come con cosa da degli dei del della "
        "delle dello di dove e fra già gli grazie ha hai ho i il in io la le lei lo loro lui ma mi mia mio "
        "molto nei nel nella nelle noi non oggi per perché più posso puoi può quando questa questo se sei "
        "sempre si siamo sono su sua suo ti tra tu tua tuo un una uno voi è"
    ),
    "en": (
        "a am an and are as at be been by can could did do does for from he hello hi i in is it my no not of "
        "on or our she thanks that the their they this to was we were will with would yes you your"
    ),
    "es": (
        "como con de del el en es estoy está gracias hola la las lo los muy más no o para pero por puede "
        "puedo que se son su sus tú un una y yo"
    ),
    "fr": (
        "avec bonjour de des du elle en est et il je la le les mais merci ne nous ou pas peut peux pour que "
        "sa se son sont très tu un une vous"
    ),
    "pt": (
        "a as com da das de do dos e em eu mas muito não o obrigado olá os ou para pode por posso que se seu "
        "sua são um uma você é"
    ),
}
STOPWORDS = {lang: frozenset(text.split()) for lang, text in _STOPWORD_TEXT.items()}


class SmokeError(Exception):
    """The service could not be asked (exit 2)."""


def words(text: str) -> list[str]:
    return re.findall(r"[a-zàèéìíòóùúç']+", text.lower())


def stopword_shares(text: str) -> dict[str, float]:
    """Per language, the share of the text's words that are that language's function words."""
    tokens = words(text)
    if not tokens:
        return dict.fromkeys(STOPWORDS, 0.0)
    return {lang: round(sum(token in stop for token in tokens) / len(tokens), 3) for lang, stop in STOPWORDS.items()}


def stopword_language(text: str, threshold: float = 0.15) -> str | None:
    """Italian when its share is at least threshold and above every other language's; else the best other."""
    shares = stopword_shares(text)
    best = max(shares, key=lambda lang: (shares[lang], lang == "it"))
    if shares[best] < threshold:
        return None
    return best


# langdetect is not thread-safe: its first use loads the language profiles into shared state, and
# concurrent first calls then fail (they detected no language for Italian text). One at a time.
_DETECT_LOCK = threading.Lock()


def detect_language(text: str) -> tuple[str | None, str]:
    """(language code or None, the method that decided); safe to call from several threads."""
    with _DETECT_LOCK:
        return _detect_language(text)


def _detect_language(text: str) -> tuple[str | None, str]:
    try:
        from langdetect import DetectorFactory, detect_langs  # noqa: PLC0415 - optional dependency
        from langdetect.lang_detect_exception import LangDetectException  # noqa: PLC0415
    except ImportError:
        return stopword_language(text), "stopwords"
    DetectorFactory.seed = 0
    try:
        best = detect_langs(text)[0]
    except LangDetectException:
        return None, "langdetect"
    return (best.lang if best.prob >= 0.5 else None), "langdetect"


def request_for(api: str, base_url: str, model: str) -> tuple[str, dict]:
    """URL and JSON body of the Italian question, for Ollama's native API or the OpenAI-compatible one."""
    base = base_url.rstrip("/")
    if api == "ollama":
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": False,
            "options": {"temperature": 0, "num_predict": MAX_TOKENS},
        }
        return f"{base}/api/chat", body
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    return f"{base.removesuffix('/v1')}/v1/chat/completions", body


def answer_of(api: str, payload: object) -> str:
    """The answer's text from a response body; SmokeError when the body is not the API's shape."""
    try:
        if api == "ollama":
            return str(payload["message"]["content"]).strip()
        return str(payload["choices"][0]["message"]["content"] or "").strip()
    except (KeyError, IndexError, TypeError) as error:
        raise SmokeError(f"the answer is not an {api} chat response: {str(payload)[:200]}") from error


def evaluate(answer: str, latency: float, max_latency: float | None) -> list[dict]:
    """The checks after an HTTP 200: non-empty, Italian, fast enough."""
    language, method = detect_language(answer) if answer else (None, "none")
    checks = [
        {"name": "http_200", "passed": True, "detail": "HTTP 200"},
        {"name": "non_empty", "passed": bool(answer), "detail": f"{len(answer)} characters"},
        {
            "name": "italian",
            "passed": language == "it",
            "detail": f"detected {language or 'no language'} ({method}); stopword shares {stopword_shares(answer)}",
        },
    ]
    if max_latency is not None:
        checks.append(
            {
                "name": "latency",
                "passed": latency <= max_latency,
                "detail": f"{latency:.2f} s (bound {max_latency:g} s)",
            }
        )
    return checks


def ask(args: argparse.Namespace, api_key: str) -> tuple[str, float]:
    """The answer and its latency; --timeout bounds the whole request (connect, headers and body)."""
    url, body = request_for(args.api, args.base_url, args.model)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    try:
        with post_json(url, body, headers, args.timeout, args.ca_file) as response:
            if response.status != 200:
                raise SmokeError(f"{url} answered HTTP {response.status}: {response.text()}")
            payload = response.json()
    except HttpFailure as error:
        raise SmokeError(str(error)) from None
    latency = time.monotonic() - started
    return answer_of(args.api, payload), latency


def concurrency(text: str) -> int:
    """A whole number of requests from 1 to MAX_CONCURRENCY (argparse type)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_CONCURRENCY}")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="scripts/smoke_test.py", name="smoke test", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000 or http://127.0.0.1:11434")
    parser.add_argument("--api", required=True, choices=["openai", "ollama"])
    parser.add_argument("--model", required=True, help="served model name (vLLM) or tag / alias (Ollama)")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key-env", default="", help="environment variable holding the API key")
    key.add_argument("--api-key-stdin", action="store_true", help="read the API key from standard input")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=120.0, help="seconds the whole request may take (a deadline)"
    )
    parser.add_argument("--max-latency", type=positive_seconds, default=None, help="fail when the answer takes longer")
    parser.add_argument(
        "--concurrency",
        type=concurrency,
        default=1,
        help=f"requests sent at once, each checked (1 to {MAX_CONCURRENCY}; default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--ca-file", default="", help="a CA certificate to trust for https (the gateway's private CA)")
    args = parser.parse_args(argv)
    if not re.match(r"^https?://[^\s/]+", args.base_url):
        parser.error(f"--base-url {args.base_url!r} is not an http(s) URL")
    if args.api_key_env and args.api_key_env not in os.environ:
        parser.error(f"--api-key-env {args.api_key_env}: no such environment variable")
    return args


def read_api_key(args: argparse.Namespace) -> str:
    if args.api_key_stdin:
        return sys.stdin.readline().strip()
    return os.environ.get(args.api_key_env, "") if args.api_key_env else ""


def json_head(args: argparse.Namespace, status: int) -> dict:
    """What every JSON report starts with: the target, the prompt and the verdict."""
    return {
        "base_url": args.base_url,
        "api": args.api,
        "model": args.model,
        "prompt": PROMPT,
        "passed": status == 0,
        "exit_code": status,
    }


def report(args: argparse.Namespace, status: int, checks: list[dict], answer: str, error: str | None) -> None:
    failed = [check for check in checks if not check["passed"]]
    if args.json:
        result = {
            **json_head(args, status),
            "checks": checks,
            "answer": answer,
            "error": error,
        }
        print(json.dumps(result, ensure_ascii=False))
        return
    where = f"{args.api} {args.model} at {args.base_url}"
    if error:
        print(f"smoke test: {where}: {error}", file=sys.stderr)
    elif failed:
        names = ", ".join(f"{check['name']} ({check['detail']})" for check in failed)
        print(f"smoke test FAILED: {where}: {names}; answer starts: {answer[:120]!r}")
    else:
        latency = next((check["detail"] for check in checks if check["name"] == "latency"), "")
        print(f"smoke test passed: {where} answered in Italian {latency}: {answer[:120]!r}".rstrip())


def run_one(args: argparse.Namespace, api_key: str, start: threading.Barrier | None = None) -> dict:
    """One request and its checks: exit_code (0, 1 or 2), checks, answer, error, latency_s.

    start: a barrier every request of a concurrent run waits at, so that they are sent together."""
    if start is not None:
        start.wait()
    try:
        answer, latency = ask(args, api_key)
    except SmokeError as error:
        return {"exit_code": 2, "checks": [], "answer": "", "error": str(error), "latency_s": None}
    checks = evaluate(answer, latency, args.max_latency)
    status = 0 if all(check["passed"] for check in checks) else 1
    return {"exit_code": status, "checks": checks, "answer": answer, "error": None, "latency_s": round(latency, 3)}


def run_concurrently(args: argparse.Namespace, api_key: str) -> tuple[list[dict], float]:
    """args.concurrency requests released at once; their results in order, and the wall time."""
    count = args.concurrency
    start = threading.Barrier(count)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(lambda _: run_one(args, api_key, start), range(count)))
    return [{"request": index + 1, **result} for index, result in enumerate(results)], time.monotonic() - started


def _request_line(result: dict) -> str:
    label = f"request {result['request']}"
    if result["error"]:
        return f"{label}: could not be asked: {result['error']}"
    failed = [f"{check['name']} ({check['detail']})" for check in result["checks"] if not check["passed"]]
    verdict = f"FAILED {', '.join(failed)}" if failed else "passed"
    return f"{label}: {verdict} in {result['latency_s']:.2f} s: {result['answer'][:80]!r}"


def report_concurrent(args: argparse.Namespace, status: int, results: list[dict], wall: float) -> None:
    where = f"{args.api} {args.model} at {args.base_url}"
    if args.json:
        summary = {
            **json_head(args, status),
            "concurrency": args.concurrency,
            "wall_s": round(wall, 3),
            "requests": results,
        }
        print(json.dumps(summary, ensure_ascii=False))
        return
    for result in results:
        print(f"  {_request_line(result)}")
    count, passed = len(results), sum(result["exit_code"] == 0 for result in results)
    unasked = [result for result in results if result["exit_code"] == 2]
    if unasked:
        print(
            f"smoke test: {where}: {len(unasked)} of {count} concurrent requests could not be asked; "
            f"first: {_request_line(unasked[0])}",
            file=sys.stderr,
        )
    elif passed < count:
        print(f"smoke test FAILED: {where}: {count - passed} of {count} concurrent answers failed a check")
    else:
        print(f"smoke test passed: {where}: {count} of {count} concurrent answers in Italian, all within {wall:.2f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api_key = read_api_key(args)
    if args.concurrency > 1:
        results, wall = run_concurrently(args, api_key)
        status = max(result["exit_code"] for result in results)
        report_concurrent(args, status, results, wall)
        return status
    result = run_one(args, api_key)
    report(args, result["exit_code"], result["checks"], result["answer"], result["error"])
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
