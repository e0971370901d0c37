"""A test-only stand-in for the Hugging Face Hub's download API (HF_ENDPOINT), serving local model dirs.

It is not the Hub: it serves the endpoints a snapshot download uses, with the Hub's answers
for the cases the toolkit must tell apart (docs/security.md, section 4):

- GET /api/models/<owner>/<name>/revision/<revision>[?blobs=true]: {"id", "sha", "siblings", "gated",
  "private"}; each sibling is {"rfilename"}, and with ?blobs=true also "size", "blobId" (the git blob id)
  and, for an LFS file, "lfs": {"size", "sha256", "pointerSize"}, as huggingface_hub's model_info(...,
  files_metadata=True) reads them. LFS files are the weights (LFS_PATTERNS) and anything of 10 MB or more;
  their blobId is the id of their git LFS pointer file. An unknown repository answers 401 without a valid
  token (as the Hub does, so that private repositories do not leak) and 404 with one; an unknown revision
  answers 404; a gated repository answers 401 without the token it was given.
- GET /<owner>/<name>/resolve/<revision>/<file>: the file, with X-Repo-Commit and ETag (the blob id) headers;
  with `server.cdn` set (another stand-in's URL: another origin), an LFS file answers 302 to
  <cdn>/cdn-lfs/<sha256> with X-Linked-Etag and X-Linked-Size, like the Hub's redirect to its CDN.
- GET /cdn-lfs/<sha256>: an LFS file's content, no token needed (the Hub's CDN URLs are signed).

Faults and handles for tests: `server.faults` is a list of HTTP statuses the next requests answer with
(429 carries Retry-After: 1); `server.file_faults` maps a file name to the status every download of it
answers with; `server.corrupt` is a set of file names served with their last byte flipped (the metadata
unchanged); `server.cuts` maps a file name to a list of "length" / "chunked": each download of it takes one
and sends half the body (with the full Content-Length, or chunked without the last chunk), then closes the
connection; `server.redirects` maps a file name to a Location its resolve URL answers 302 with;
`server.renamed` maps an old repository id to its new one (a relative 307, as the Hub does after a rename);
`server.midway` maps a file name to a function called (with no arguments) once half of its body is sent,
before the rest: what happens on the host during a download (its disk filling up, ...).
`server.requests` lists the paths asked for, `server.authorizations` (path, Authorization header or None).
`start(..., tls=(certfile, keyfile))` serves https. Standard library only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.server
import json
import ssl
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.h5", "*.onnx", "*.msgpack"]
LFS_MIN_SIZE = 10 * 1024 * 1024


def git_blob_id(data: bytes) -> str:
    """What `git hash-object` prints for data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


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

    def is_lfs(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or self.files[name].stat().st_size >= LFS_MIN_SIZE

    def sibling(self, name: str) -> dict:
        data = self.files[name].read_bytes()
        if not self.is_lfs(name):
            return {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        lfs = {"size": len(data), "sha256": sha256, "pointerSize": len(pointer)}
        return {"rfilename": name, "size": len(data), "blobId": git_blob_id(pointer), "lfs": lfs}

    def info(self, blobs: bool = False) -> dict:
        siblings = [self.sibling(name) if blobs else {"rfilename": name} for name in self.files]
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
        server.authorizations.append((self.path, self.headers.get("Authorization")))
        if server.faults:
            status = server.faults.pop(0)
            headers = {"Retry-After": "1"} if status == 429 else None
            self._error(status, "Too Many Requests" if status == 429 else "Internal Error", headers)
            return
        url = urlsplit(self.path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
            blobs = parse_qs(url.query).get("blobs") == ["true"]
            self._info("/".join(parts[2:4]), "/".join(parts[5:]), blobs)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        elif len(parts) == 2 and parts[0] == "cdn-lfs":
            self._cdn(parts[1])
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

    def _renamed(self, repo_id: str) -> bool:
        new = self.server.renamed.get(repo_id)
        if new:
            self._send(307, b"", headers={"Location": self.path.replace(f"/{repo_id}/", f"/{new}/", 1)})
        return bool(new)

    def _info(self, repo_id: str, revision: str, blobs: bool) -> None:
        if self._renamed(repo_id):
            return
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in (repo.commit, "main"):
            self._error(404, f"Invalid rev id: {revision}")
            return
        self._send(200, json.dumps(repo.info(blobs)).encode())

    def _file(self, repo_id: str, revision: str, name: str) -> None:
        if self._renamed(repo_id):
            return
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in (repo.commit, "main") or name not in repo.files:
            self._error(404, "Entry not found")
            return
        if name in self.server.file_faults:
            status = self.server.file_faults[name]
            self._error(status, "Internal Error", {"Retry-After": "1"} if status == 429 else None)
            return
        if name in self.server.redirects:
            self._send(302, b"", headers={"Location": self.server.redirects[name]})
            return
        sibling = repo.sibling(name)
        headers = {"X-Repo-Commit": repo.commit}
        if "lfs" in sibling and self.server.cdn:
            sha256 = sibling["lfs"]["sha256"]
            headers.update(
                {
                    "Location": f"{self.server.cdn}/cdn-lfs/{sha256}",
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(sibling["size"]),
                    "ETag": f'"{sibling["blobId"]}"',
                }
            )
            self._send(302, b"", headers=headers)
            return
        headers["ETag"] = f'"{sibling["lfs"]["sha256"] if "lfs" in sibling else sibling["blobId"]}"'
        self._content(name, repo.files[name].read_bytes(), headers)

    def _cdn(self, sha256: str) -> None:
        for repo in self.server.repos.values():
            for name, path in repo.files.items():
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() == sha256:
                    self._content(name, data, {"ETag": f'"{sha256}"'})
                    return
        self._error(404, "Not Found")

    def _content(self, name: str, data: bytes, headers: dict) -> None:
        """A file's bytes, with the faults the test set for it."""
        if name in self.server.corrupt and data:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        cuts = self.server.cuts.get(name)
        midway = self.server.midway.get(name)
        if midway and not cuts:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            midway()
            try:
                self.wfile.write(data[len(data) // 2 :])
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (its disk is full)
                self.close_connection = True
            return
        if not cuts:
            self._send(200, data, "application/octet-stream", headers)
            return
        mode = cuts.pop(0)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, value)
        half = data[: len(data) // 2]
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
            self.wfile.write(b"%x\r\n" % (len(data) - len(half)))  # a chunk announced, never sent
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(half)
        self.wfile.flush()
        self.close_connection = True


def start(
    address: tuple[str, int],
    repos: list[Repo],
    tokens: list[str] | None = None,
    tls: tuple[str, str] | None = None,
) -> http.server.ThreadingHTTPServer:
    """Serve the repos from a background thread; `.faults` and `.requests` are the test's handles."""
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(address, _Handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.repos = {repo.id: repo for repo in repos}
    server.tokens = tokens or []
    server.faults = []
    server.file_faults = {}
    server.corrupt = set()
    server.cuts = {}
    server.redirects = {}
    server.renamed = {}
    server.midway = {}
    server.cdn = None
    server.requests = []
    server.authorizations = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
