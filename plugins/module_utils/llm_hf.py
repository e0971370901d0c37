"""Pure helpers for downloading a model snapshot from the Hugging Face Hub's HTTP API.

The hf_snapshot module does the I/O; what to fetch, how to read an answer, where a redirect
may take the token, how a file is checked and what to tell the operator is decided here, so
it is unit-tested without a network. Endpoints (the ones huggingface_hub itself uses):
GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true for the commit and the file
list with each file's size, git blob id and (LFS files) sha256, and
GET {endpoint}/{repo}/resolve/{commit}/{file} for each file (LFS files answer with a redirect
to a CDN on another host). docs/security.md, section 4, has the sources.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
from urllib.parse import urljoin, urlsplit

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


class WriteError(Exception):
    """Writing a downloaded file failed (the disk filled up, ...): not the network's fault, never retried."""

    def __init__(self, name: str, written: int, error: OSError) -> None:
        super().__init__(f"{name}: {error}")
        self.name = name
        self.written = written
        self.error = error


# A full file system, or the owner's quota spent: the same remedy.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def write_failure(where: str, dest: str, error: WriteError | OSError, free: int, needed: int) -> str:
    """The operator's one line for a download that could not be written under dest (the partial one removed).

    free is what the file system has now, needed what the snapshot and its margin take."""
    if isinstance(error, WriteError):
        name, written, cause = error.name, error.written, error.error
    else:
        name, written, cause = os.path.basename(error.filename or "") or dest, 0, error
    parent = os.path.dirname(dest.rstrip("/")) or "/"
    if cause.errno in NO_SPACE:
        return (
            f"{where}: no space left on the file system of {dest} while writing {name} (after {written} bytes of "
            f"it; {free / 1e6:.1f} MB free now, {needed / 1e6:.1f} MB needed): the disk filled up during the "
            f"download; the partial download was removed and the previous snapshot is kept; fix: free disk under "
            f"{parent} or point vllm_models_dir at a larger volume, then run again"
        )
    return (
        f"{where}: cannot write {name} under {dest}: {cause.strerror or cause}; the partial download was removed and "
        f"the previous snapshot is kept; fix: check the permissions and health of {parent}, then run again"
    )


def check_request(repo: str, revision: str) -> str | None:
    """Why a repo/revision pair cannot be asked for, or None."""
    if not REPO.fullmatch(repo or ""):
        return f"repo {repo!r} is not an owner/name Hugging Face id"
    if not revision:
        return "no revision: pin a commit so that every host gets the same files"
    if not COMMIT.fullmatch(revision):
        return (
            f"revision {revision!r} is not a commit id; expected the 40 lowercase hex digits of a commit (a branch or "
            "tag can move, so hosts would get different files); fix: pin the commit shown on the model page "
            "(Files and versions, History)"
        )
    return None


def redact(text: str, token: str) -> str:
    """text without the token (an error body may echo what the request carried)."""
    return text.replace(token, "<token>") if token else text


def classify(status: int, repo: str, revision: str, body: str = "", token: str = "") -> HubError:
    """The operator's message for an HTTP error of the Hub, and whether a retry can help."""
    with_token = bool(token)
    try:
        parsed = json.loads(body or "")
        body = str(parsed.get("error", body)) if isinstance(parsed, dict) else body
    except ValueError:
        pass
    detail = re.sub(r"\s+", " ", redact(body or "", token)).strip()[:200]
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


def _expected(sibling: dict, name: str) -> dict:
    """size and digest of a listed file: LFS files by the sha256 of their content, the others by their git blob id."""
    lfs = sibling.get("lfs") if isinstance(sibling.get("lfs"), dict) else None
    size = sibling.get("size")
    if lfs is not None:
        size, sha256 = lfs.get("size", size), str(lfs.get("sha256", "")).lower()
        if re.fullmatch(r"[0-9a-f]{64}", sha256) and isinstance(size, int) and size >= 0:
            return {"name": name, "size": size, "sha256": sha256}
    else:
        blob_id = str(sibling.get("blobId", "")).lower()
        if re.fullmatch(r"[0-9a-f]{40}", blob_id) and isinstance(size, int) and size >= 0:
            return {"name": name, "size": size, "blob_id": blob_id}
    raise HubError(
        f"the Hub listed no size and checksum for {name!r} (expected siblings[].blobId, or siblings[].lfs.sha256 for "
        "an LFS file, from ?blobs=true); fix: use the Hub or a mirror that serves the files' metadata"
    )


def files_to_fetch(info: dict, patterns: list[str] | None = None) -> list[dict]:
    """[{name, size, sha256 or blob_id}] of the snapshot's files that a model directory needs."""
    patterns = patterns or DEFAULT_PATTERNS
    chosen = []
    for sibling in info.get("siblings") or []:
        name = str(sibling.get("rfilename", ""))
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise HubError(f"the Hub listed an unsafe file name {name!r}")
        if any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], pattern) for pattern in patterns):
            chosen.append(_expected(sibling, name))
    if not any(item["name"].endswith("config.json") for item in chosen):
        raise HubError("the snapshot has no config.json: not a model vLLM can serve")
    return chosen


def hasher(item: dict):
    """A hash object primed to check item's content: sha256 for an LFS file, else git's blob sha1."""
    if "sha256" in item:
        return hashlib.sha256()
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {item['size']}\0".encode())
    return digest


def check_file(item: dict, written: int, digest: str) -> None:
    """Refuse a downloaded file whose size or checksum is not the one the Hub listed."""
    if written != item["size"]:
        raise HubError(f"{item['name']} has {written} bytes; the Hub listed {item['size']}")
    kind, expected = ("sha256", item["sha256"]) if "sha256" in item else ("git blob id", item["blob_id"])
    if digest != expected:
        raise HubError(
            f"{item['name']}: {kind} {digest} differs from the {expected} the Hub listed (a corrupted or tampered "
            "download); nothing was replaced; fix: run again, and check any proxy or mirror between host and Hub"
        )


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(scheme, 0)


def follow_redirect(current: str, location: str, endpoint: str, authorized: bool) -> tuple[str, bool]:
    """(next URL, whether it may carry the token) for a redirect answered to current.

    The token goes only to the configured endpoint's origin (scheme, host and port), and never again once a
    redirect has left it: the Hub sends LFS files to a CDN with a signed URL that needs no token. A redirect
    from https to http (or to anything but http and https) is refused: the download would travel in clear.
    """
    target = urljoin(current, location.strip())
    scheme = urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        raise HubError(f"the Hub redirected {urlsplit(current).path} to a {scheme or 'relative'} URL; refused")
    if urlsplit(current).scheme.lower() == "https" and scheme == "http":
        host = urlsplit(target).hostname
        raise HubError(
            f"the Hub redirected {urlsplit(current).path} from https to http ({host}); refused: the file would travel "
            "unencrypted and unauthenticated; fix: use an https endpoint whose redirects stay on https"
        )
    return target, authorized and origin(target) == origin(endpoint)


def commit_of(info: dict) -> str:
    commit = str(info.get("sha", ""))
    if not COMMIT.fullmatch(commit):
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
