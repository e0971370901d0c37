"""A loopback HTTP server that misbehaves on purpose, for the deadline and bad-answer tests of the
smoke test and the benchmark: it drips bytes, streams without end, cuts bodies short, or answers
with a body the test sets. Test-only fault injector (the real engines run in the lab)."""

from __future__ import annotations

import socketserver
import threading
import time

DRIP_S = 0.1  # well under any per-read timeout: only a deadline for the whole request stops a drip


class _Handler(socketserver.BaseRequestHandler):
    def _read_request(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            body += chunk
        self.server.requests += 1

    def _drip(self, data: bytes) -> None:
        for byte in data:
            self.request.sendall(bytes([byte]))
            time.sleep(DRIP_S)

    def handle(self) -> None:
        self._read_request()
        mode, body = self.server.mode, self.server.body
        try:
            if mode == "drip-headers":
                self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Slow: 1\r\n" * 10000)
            elif mode == "drip-body":
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                self._drip(b" " * 100000)
            elif mode == "endless-stream":
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                while not self.server.stopping.is_set():
                    self.request.sendall(_chunk(body))
                    time.sleep(DRIP_S)
            elif mode == "truncated":
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body) + 1000}\r\n\r\n"
                )
                self.request.sendall(head.encode() + body)
            elif mode == "chunked":
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                self.request.sendall(head + (_chunk(body) if body else b"") + b"0\r\n\r\n")
            else:  # "body": a complete answer with the body set
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                self.request.sendall(head.encode() + body)
        except OSError:
            pass  # the client gave up, as it should


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class FaultServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode, self.body, self.requests = "body", b"", 0
        self.stopping = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, mode: str, body: bytes = b"") -> FaultServer:
        self.mode, self.body = mode, body
        return self

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
