"""Two loopback HTTP servers that answer like the gateway's backends (the OpenAI-compatible routes of vLLM
and of Ollama, and some of their admin routes), and record what reached them: test-only, for the gateway's
own behaviour (tests/unit/test_gateway_config.py). The real engines answer through the gateway in the lab."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server: Backend = self.server  # type: ignore[assignment]
        headers = {name.lower(): value for name, value in self.headers.items()}  # HAProxy sends them in lower case
        server.seen.append({"path": self.path, "headers": headers, "bytes": len(body)})
        if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
            self._reply(401, {"error": "unauthorized"})
            return
        if self.path == "/v1/models":
            self._reply(200, {"object": "list", "data": [{"id": "mixtral", "object": "model"}]})
            return
        request = json.loads(body or b"{}")
        if request.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for word in ("Lava ", "l'auto ", "con ", "cura."):
                chunk = json.dumps({"choices": [{"delta": {"content": word}}], "backend": server.name})
                self._chunk(f"data: {chunk}\n\n".encode())
                time.sleep(server.stream_delay_s)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
            return
        self._reply(200, {"backend": server.name, "path": self.path, "choices": [{"message": {"content": "Ciao"}}]})

    do_GET = do_POST = do_DELETE = do_PUT = _handle


class Backend(ThreadingHTTPServer):
    """One backend on 127.0.0.1 (an ephemeral port): `seen` holds each request's path, headers and size."""

    daemon_threads = True

    def __init__(self, name: str, key: str = "", stream_delay_s: float = 0.05, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.name, self.key, self.stream_delay_s = name, key, stream_delay_s
        self.seen: list[dict] = []
        self.connections: set[socket.socket] = set()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def process_request(self, request, client_address) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        pass  # health checks close their connection before reading the whole answer

    def stop(self) -> None:
        """Stop as a process does: no new connection, and every open one (kept alive) closed."""
        self.shutdown()
        self.server_close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
