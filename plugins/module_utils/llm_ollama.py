"""Pure helpers for Ollama's API: pull progress, error classes, retries, names and paths.

No I/O here: the ollama_pull module feeds it the NDJSON lines of POST /api/pull and acts on
what it returns, so every decision is unit-tested without a server.
"""

from __future__ import annotations

import json
import re

# Errors a later attempt can get past: the network, the registry's rate limit and 5xx answers,
# a download that came out corrupt (Ollama asks for it to be downloaded again).
TRANSIENT_PATTERNS = (
    r"max retries exceeded",
    r"connection (refused|reset|timed out)",
    r"timed? ?out",
    r"temporary failure",
    r"unexpected eof",
    r"\beof\b",
    r"too many requests",
    r"\b429\b",
    r"\b5\d\d\b",
    r"service unavailable",
    r"digest mismatch",
    r"no route to host",
    r"network is unreachable",
    r"broken pipe",
)

# What Ollama answers for a tag its registry does not have.
UNKNOWN_TAG_PATTERNS = (r"file does not exist", r"manifest unknown", r"not found")


class PullProgress:
    """Bytes done and expected over every layer of one pull, from Ollama's NDJSON statuses."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int]] = {}
        self.status = ""
        self.error: str | None = None
        self.success = False

    def feed(self, line: str | bytes) -> dict | None:
        """Take one NDJSON line; return its object (None for a blank line)."""
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text:
            return None
        try:
            event = json.loads(text)
        except ValueError:
            self.error = f"unreadable answer from Ollama: {text[:200]}"
            return None
        if not isinstance(event, dict):
            self.error = f"unexpected answer from Ollama: {text[:200]}"
            return None
        if "error" in event:
            self.error = str(event["error"])
            return event
        self.status = str(event.get("status", self.status))
        if event.get("digest") and "total" in event:
            total = int(event.get("total") or 0)
            completed = int(event.get("completed") or 0)
            self.layers[str(event["digest"])] = (min(completed, total) if total else completed, total)
        if self.status == "success":
            self.success = True
        return event

    @property
    def completed(self) -> int:
        return sum(done for done, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(total for _, total in self.layers.values())

    def percent(self) -> float:
        return 100.0 * self.completed / self.total if self.total else (100.0 if self.success else 0.0)

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "completed": self.completed,
            "total": self.total,
            "percent": round(self.percent(), 1),
            "layers": len(self.layers),
            "error": self.error,
            "success": self.success,
        }


def human_bytes(count: float) -> str:
    """Sizes the way Ollama's CLI prints them (decimal units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def describe_progress(model: str, progress: dict) -> str:
    """One line for the operator: "mixtral:…: 45.2% (11.9 GB of 26.4 GB), pulling 1a2b3c…"."""
    if progress.get("error"):
        return f"{model}: failed: {progress['error']}"
    if progress.get("success"):
        return f"{model}: done ({human_bytes(progress.get('total', 0))})"
    if not progress.get("total"):
        return f"{model}: {progress.get('status') or 'starting'}"
    return (
        f"{model}: {progress['percent']}% ({human_bytes(progress['completed'])} of "
        f"{human_bytes(progress['total'])}), {progress.get('status', '')}"
    )


def is_unknown_tag(error: str) -> bool:
    return any(re.search(pattern, error, re.I) for pattern in UNKNOWN_TAG_PATTERNS)


def is_no_space(error: str) -> bool:
    """Whether the pull failed because the disk filled up (Ollama: "write <blob>-partial: no space left on device")."""
    return bool(re.search(r"no space left on device|disk quota exceeded", error, re.I))


def is_transient(error: str, http_status: int | None = None) -> bool:
    """Whether retrying can help: 429 and 5xx answers and network trouble, never a wrong tag or a full disk
    (whose message holds a path, which may look like a status: /srv/models-503/...)."""
    if is_unknown_tag(error) or is_no_space(error):
        return False
    if http_status is not None and (http_status == 429 or http_status >= 500):
        return True
    return any(re.search(pattern, error, re.I) for pattern in TRANSIENT_PATTERNS)


def no_space_advice(error: str, models_dir: str) -> str | None:
    """What to tell the operator when a pull failed because the disk filled up (Ollama: "write
    <blob>-partial: no space left on device"), or None for any other failure."""
    if not is_no_space(error):
        return None
    return (
        f"the file system of {models_dir} filled up during the pull; the models already there are kept; fix: free "
        f"disk under {models_dir} or point ollama_models_dir at a larger volume, then run again"
    )


def backoff_delays(retries: int, base: float = 5.0, cap: float = 120.0) -> list[float]:
    """Seconds to wait before each retry: exponential from base, capped."""
    return [min(cap, base * 2**attempt) for attempt in range(max(0, retries))]


def partial_files(names: list[str]) -> list[str]:
    """Blob names an interrupted pull leaves behind (sha256-<hex>-partial and -partial-N)."""
    return sorted(name for name in names if re.match(r"^sha256[-:][0-9a-f]{64}-partial(-\d+)?$", name))


def model_digests(tags_answer: dict) -> dict[str, str]:
    """{name: digest} from GET /api/tags; names as Ollama lists them (":latest" added when bare)."""
    found = {}
    for model in tags_answer.get("models") or []:
        found[normalize_name(str(model.get("name") or model.get("model")))] = str(model.get("digest", ""))
    return found


def normalize_name(name: str) -> str:
    """Ollama's short name: a bare model name means its :latest tag."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def manifest_path(name: str) -> str:
    """Where Ollama keeps a model's manifest under OLLAMA_MODELS/manifests (its on-disk layout)."""
    host, namespace = "registry.ollama.ai", "library"
    rest, _, tag = normalize_name(name).rpartition(":")
    parts = rest.split("/")
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    return f"{host}/{namespace}/{model}/{tag}"
