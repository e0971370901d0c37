"""HTTP requests with a deadline for the whole exchange, for the smoke test and the benchmark.

A socket timeout bounds each read, not the request: a server that sends one byte a second, or
streams without end, keeps a per-read timeout from ever firing. Here every send and read on the
connection gets only the time left until the request's deadline (connect, sending the body, the
status line, the headers and the whole body, chunked or not), so `timeout` seconds after the
request starts it has either finished or failed.

Failures are told apart: NoAnswer (nothing usable came back: refused, unresolvable, no status
line before the deadline) and BrokenAnswer (the server answered, then the body broke off, did not
finish before the deadline, or was not what the API sends). Standard library only.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator

MAX_LINE = 1 << 20  # one streamed event (SSE line or NDJSON object) larger than this is not an answer


class HttpFailure(Exception):
    """A request that did not give a complete answer; the message says why."""


class NoAnswer(HttpFailure):
    """Nothing came back: connection refused, name unknown, or no status line before the deadline."""


class BrokenAnswer(HttpFailure):
    """The server answered, but the body broke off, missed the deadline or was malformed."""


class _DeadlineSocket:
    """A socket whose every send and receive may take only the time left until the deadline."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self._sock, self._deadline, self._timeout = sock, deadline, timeout

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {self._timeout:g} s (the request's deadline)")
        self._sock.settimeout(left)

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        try:
            return self._sock.recv_into(buffer, nbytes, flags)
        except TimeoutError:
            raise TimeoutError(f"no complete answer within {self._timeout:g} s (the request's deadline)") from None

    def sendall(self, data, flags: int = 0) -> None:
        self._arm()
        self._sock.sendall(data, flags)

    def makefile(self, mode: str = "rb", buffering: int = -1) -> io.BufferedReader:
        # Like socket.makefile: the file holds a reference, so the socket stays open while a
        # response is read after its connection object let go of it (HTTP/1.0, Connection: close).
        self._sock._io_refs += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))

    def _decref_socketios(self) -> None:
        self._sock._decref_socketios()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _connection_class(base: type[http.client.HTTPConnection]):
    class DeadlineConnection(base):
        deadline = 0.0
        total = 0.0

        def connect(self) -> None:
            super().connect()
            self.sock = _DeadlineSocket(self.sock, self.deadline, self.total)

    return DeadlineConnection


_HTTP = _connection_class(http.client.HTTPConnection)
_HTTPS = _connection_class(http.client.HTTPSConnection)


def _reason(error: BaseException) -> str:
    text = str(error)
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


class Response:
    """A response whose body is read within the request's deadline."""

    def __init__(self, url: str, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self.url, self._connection, self._response = url, connection, response
        self.status = response.status
        self.received = 0

    def header(self, name: str) -> str | None:
        """A response header's value (None when absent)."""
        return self._response.getheader(name)

    def _broken(self, error: BaseException) -> BrokenAnswer:
        if isinstance(error, http.client.IncompleteRead):
            self.received += len(error.partial)
        if isinstance(error, TimeoutError):
            what = f"answered HTTP {self.status}, but its body did not end in time ({self.received} bytes read)"
        else:
            what = f"answered HTTP {self.status}, then its body broke off after {self.received} bytes"
        return BrokenAnswer(f"{self.url} {what}: {_reason(error)}")

    def read(self) -> bytes:
        """The whole body."""
        try:
            data = self._response.read()
        except (OSError, http.client.HTTPException) as error:
            raise self._broken(error) from None
        self.received += len(data)
        return data

    def text(self, limit: int = 200) -> str:
        """The start of the body, for an error message (never raises)."""
        try:
            return self.read().decode("utf-8", "replace").strip()[:limit]
        except HttpFailure as error:
            return str(error)

    def json(self) -> object:
        data = self.read()
        try:
            return json.loads(data)
        except ValueError:
            shown = data[:200].decode("utf-8", "replace")
            raise BrokenAnswer(f"{self.url} answered HTTP {self.status} without JSON: {shown!r}") from None

    def lines(self) -> Iterator[bytes]:
        """The body's lines as they arrive (streamed answers), without their line ends."""
        while True:
            try:
                line = self._response.readline(MAX_LINE + 1)
            except (OSError, http.client.HTTPException) as error:
                raise self._broken(error) from None
            if not line:
                missing = self._response.length  # bytes the Content-Length promised and never came
                if missing:
                    raise self._broken(http.client.IncompleteRead(b"", missing))
                return
            self.received += len(line)
            if len(line) > MAX_LINE:
                raise BrokenAnswer(f"{self.url} streamed a line longer than {MAX_LINE} bytes")
            yield line.rstrip(b"\r\n")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post_json(
    url: str, body: object, headers: dict[str, str] | None, timeout: float, ca_file: str | None = None
) -> Response:
    """POST body as JSON; the response's status line and headers have arrived. Its body must be read
    (read, json, lines) before `timeout` seconds from now have passed, counted from this call."""
    started = time.monotonic()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NoAnswer(f"{url} is not an http(s) URL")
    if parts.scheme == "https":
        # ca_file: a private CA to trust (the gateway's); otherwise the system's store.
        context = ssl.create_default_context(cafile=ca_file or None)
        connection = _HTTPS(parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        connection = _HTTP(parts.hostname, parts.port, timeout=timeout)
    connection.deadline, connection.total = started + timeout, timeout
    data = json.dumps(body).encode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
    except (OSError, http.client.HTTPException, ValueError) as error:
        connection.close()
        if isinstance(error, TimeoutError):
            raise NoAnswer(f"{url} did not answer: {_reason(error)}") from None
        raise NoAnswer(f"{url} is unreachable: {_reason(error)}") from None
    return Response(url, connection, response)
