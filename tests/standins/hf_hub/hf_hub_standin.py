"""A test-only stand-in for the Hugging Face Hub's download API (HF_ENDPOINT), serving local model dirs.

It is not the Hub: it serves the two endpoints a snapshot download uses, with the Hub's answers
for the cases the toolkit must tell apart (docs/security.md, section 4):

- GET /api/models/<owner>/<name>/revision/<revision>: {"id", "sha", "siblings": [{"rfilename", "size"}],
  "gated", "private"}; an unknown repository answers 401 without a valid token (as the Hub does,
  so that private repositories do not leak) and 404 with one; an unknown revision answers 404;
  a gated repository answers 401 without the token it was given.
- GET /<owner>/<name>/resolve/<revision>/<file>: the file, with X-Repo-Commit and ETag headers.

Faults for tests: `server.faults` is a list of HTTP statuses the next requests answer with
(429 carries Retry-After: 1); `server.file_faults` maps a file name to the status every download
of it answers with. Standard library only.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit


class Repo:
    def __init__(self, repo_id: str, directory: Path, token: str | None = None) -> None:
        self.id = repo_id
        self.files = {
            path.relative_to(directory).as_posix(): path for path in sorted(directory.rglob("*")) if path.is_file()
        }
        digest = hashlib.sha1(usedforsecurity=False)
        for name, path in self.files.items():
            digest.update(name.encode() + hashlib.sha256(path.read_bytes()).digest())
        self.commit = digest.hexdigest()
        self.token = token

    def info(self) -> dict:
        siblings = [{"rfilename": name, "size": path.stat().st_size} for name, path in self.files.items()]
        return {
            "_id": self.commit[:24],
            "id": self.id,
            "sha": self.commit,
            "siblings": siblings,
            "gated": "manual" if self.token else False,
            "private": False,
        }


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read the answers, not a log."""

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._send(status, json.dumps({"error": message}).encode(), headers=headers)

    def _token(self) -> str:
        value = self.headers.get("Authorization", "")
        return value.removeprefix("Bearer ").strip()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.path)
        if server.faults:
            status = server.faults.pop(0)
            headers = {"Retry-After": "1"} if status == 429 else None
            self._error(status, "Too Many Requests" if status == 429 else "Internal Error", headers)
            return
        parts = [unquote(part) for part in urlsplit(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
            self._info("/".join(parts[2:4]), "/".join(parts[5:]))
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        else:
            self._error(404, "Not Found")

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server.repos.get(repo_id)
        known_tokens = set(self.server.tokens) | {r.token for r in self.server.repos.values() if r.token}
        if repo is None:
            if self._token() in known_tokens:
                self._error(404, "Repository not found")
            else:
                self._error(401, "Invalid username or password.")
            return None
        if repo.token and self._token() != repo.token:
            self._error(
                401,
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to "
                "access it. Please log in.",
            )
            return None
        return repo

    def _info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in (repo.commit, "main"):
            self._error(404, f"Invalid rev id: {revision}")
            return
        self._send(200, json.dumps(repo.info()).encode())

    def _file(self, repo_id: str, revision: str, name: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in (repo.commit, "main") or name not in repo.files:
            self._error(404, "Entry not found")
            return
        if name in self.server.file_faults:
            self._error(self.server.file_faults[name], "Internal Error")
            return
        data = repo.files[name].read_bytes()
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        self._send(200, data, "application/octet-stream", headers)


def start(
    address: tuple[str, int], repos: list[Repo], tokens: list[str] | None = None
) -> http.server.ThreadingHTTPServer:
    """Serve the repos from a background thread; `.faults` and `.requests` are the test's handles."""
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(address, _Handler)
    server.repos = {repo.id: repo for repo in repos}
    server.tokens = tokens or []
    server.faults = []
    server.file_faults = {}
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
