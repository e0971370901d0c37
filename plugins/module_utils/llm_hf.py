"""Pure helpers for downloading a model snapshot from the Hugging Face Hub's HTTP API.

The hf_snapshot module does the I/O; what to fetch, how to read an answer, and what to tell
the operator is decided here, so it is unit-tested without a network. Endpoints (the ones
huggingface_hub itself uses): GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true
for the commit and the file list, GET {endpoint}/{repo}/resolve/{commit}/{file} for each file.
"""

from __future__ import annotations

import fnmatch
import json
import re

COMMIT = re.compile(r"^[0-9a-f]{40}$")
REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# What a model directory needs: weights, configs, tokenizer and chat template (not the .bin/.pt
# duplicates some repositories also carry).
DEFAULT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


class HubError(Exception):
    """A download failed; retryable tells whether another attempt can help."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def check_request(repo: str, revision: str) -> str | None:
    """Why a repo/revision pair cannot be asked for, or None."""
    if not REPO.match(repo or ""):
        return f"repo {repo!r} is not an owner/name Hugging Face id"
    if not revision:
        return "no revision: pin a commit so that every host gets the same files"
    if ".." in revision or re.search(r"\s", revision):
        return f"revision {revision!r} is not a commit, tag or branch name"
    return None


def classify(status: int, repo: str, revision: str, body: str = "", with_token: bool = False) -> HubError:
    """The operator's message for an HTTP error of the Hub, and whether a retry can help."""
    try:
        parsed = json.loads(body or "")
        body = str(parsed.get("error", body)) if isinstance(parsed, dict) else body
    except ValueError:
        pass
    detail = re.sub(r"\s+", " ", body or "").strip()[:200]
    where = f"{repo}@{revision}"
    if status == 401:
        cause = "the token was refused or lacks access" if with_token else "no token was sent"
        return HubError(
            f"{where}: 401 Unauthorized ({cause}); the repository is gated or private, or the id is wrong (the Hub "
            "answers 401 for both without a token); fix: check vllm_hf_repo, and set vllm_hf_token (from a vault) "
            "for an account that accepted the model's terms",
            status,
        )
    if status == 403:
        return HubError(
            f"{where}: 403 Forbidden ({detail or 'access not granted'}); fix: accept the model's terms on its page "
            "with the token's account, or use a token with read access",
            status,
        )
    if status == 404:
        return HubError(
            f"{where}: 404 Not Found ({detail or 'no such repository or revision'}); fix: check vllm_hf_repo and "
            "vllm_hf_revision (a commit of that repository)",
            status,
        )
    if status == 429:
        return HubError(f"{where}: 429 Too Many Requests (rate-limited)", status, retryable=True)
    if status >= 500:
        return HubError(f"{where}: {status} from the Hub ({detail or 'server error'})", status, retryable=True)
    return HubError(f"{where}: unexpected HTTP {status} ({detail})", status)


def files_to_fetch(info: dict, patterns: list[str] | None = None) -> list[dict]:
    """[{name, size}] of the snapshot's files that a model directory needs."""
    patterns = patterns or DEFAULT_PATTERNS
    chosen = []
    for sibling in info.get("siblings") or []:
        name = str(sibling.get("rfilename", ""))
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise HubError(f"the Hub listed an unsafe file name {name!r}")
        if any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], pattern) for pattern in patterns):
            size = sibling.get("size")
            if size is None and isinstance(sibling.get("lfs"), dict):
                size = sibling["lfs"].get("size")
            chosen.append({"name": name, "size": int(size) if size is not None else None})
    if not any(item["name"].endswith("config.json") for item in chosen):
        raise HubError("the snapshot has no config.json: not a model vLLM can serve")
    return chosen


def commit_of(info: dict) -> str:
    commit = str(info.get("sha", ""))
    if not COMMIT.match(commit):
        raise HubError(f"the Hub answered no commit for this revision ({commit!r})")
    return commit


def total_bytes(files: list[dict]) -> int:
    return sum(item["size"] or 0 for item in files)


def backoff(attempt: int, base: float = 2.0, cap: float = 60.0, retry_after: str | None = None) -> float:
    """Seconds before retry number attempt (0-based); a Retry-After in seconds wins when larger."""
    delay = min(cap, base * 2**attempt)
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, min(cap, float(retry_after)))
    return delay
