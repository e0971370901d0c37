"""The gateway's HAProxy runtime API, and the reasons a server is out of rotation.

Several components take a server of the gateway out of rotation for their own reasons (an upgrade
of vLLM, a failed GPU health probe, an operator): each reason is a file
<state_dir>/<backend>/<server>/<reason>, and the server comes back only when the last reason is
cleared, so that no component re-enables what another disabled. HAProxy forgets runtime state on a
restart; reconcile() applies the recorded reasons again.

HAProxy's commands (`set server B/S state drain|ready`, `show stat`) go over a root-only Unix socket:
https://docs.haproxy.org/2.6/management.html#9.3. Use the master CLI (`haproxy -S .../master.sock`):
after a reload, the workers that still finish old connections keep accepting on the stats socket
(its listening socket is handed to the new worker and shared), so a command sent there may reach an
old worker; through the master, `@1` names the current one.
"""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import time

REASON = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class GatewayError(Exception):
    """The runtime API refused a command or could not be reached; the message says which and how to fix it."""


def is_master(socket_path: str) -> bool:
    """Whether the socket is the master CLI's (named master.sock by the gateway's unit)."""
    return os.path.basename(socket_path).startswith("master")


def command(socket_path: str, line: str, timeout_s: float = 10.0) -> str:
    """Send one command line to HAProxy's runtime API and return its answer; through the master CLI it
    goes to the current worker (@1), and `quit` ends the exchange."""
    if is_master(socket_path):
        line = f"@1 {line}; quit"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout_s)
            client.connect(socket_path)
            client.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as error:
        raise GatewayError(
            f"cannot reach HAProxy's runtime API at {socket_path} ({error.strerror or error}); "
            "fix: converge the gateway (--tags gateway) and check haproxy.service"
        ) from None
    return b"".join(chunks).decode(errors="replace")


def servers(socket_path: str) -> dict[str, dict[str, str]]:
    """`show stat` as {"backend/server": row} for every server (not the frontends and backends)."""
    text = command(socket_path, "show stat").lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {f"{row['pxname']}/{row['svname']}": row for row in rows if row.get("svname") not in ("FRONTEND", "BACKEND")}


def reasons(state_dir: str, backend: str, server: str) -> list[str]:
    directory = os.path.join(state_dir, backend, server)
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _check_names(backend: str, server: str, reason: str | None) -> None:
    if not NAME.match(backend) or not NAME.match(server):
        raise GatewayError(f"server {backend}/{server}: expected names of letters, digits, - and _")
    if reason is not None and not REASON.match(reason):
        raise GatewayError(f"reason {reason!r}: expected up to 64 letters, digits, '.', '-' or '_'")


def apply(socket_path: str, backend: str, server: str, drained: bool) -> None:
    """Tell HAProxy the server's state: drain (no new requests; those under way finish) or ready."""
    answer = command(socket_path, f"set server {backend}/{server} state {'drain' if drained else 'ready'}").strip()
    if answer:
        raise GatewayError(f"HAProxy refused to change {backend}/{server}: {answer}")


def set_reason(
    socket_path: str, state_dir: str, backend: str, server: str, reason: str, present: bool, check_mode: bool
) -> dict:
    """Add (drain) or clear (enable) one reason; tell HAProxy when the server's state changes."""
    _check_names(backend, server, reason)
    known = servers(socket_path)
    if f"{backend}/{server}" not in known:
        raise GatewayError(
            f"the gateway has no server {backend}/{server} (it has {', '.join(sorted(known)) or 'none'}); "
            "expected a backend deployed on this host"
        )
    before = reasons(state_dir, backend, server)
    after = sorted(set(before) | {reason}) if present else [item for item in before if item != reason]
    changed = before != after
    if changed and not check_mode:
        directory = os.path.join(state_dir, backend, server)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, reason)
        if present:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(f"{int(time.time())}\n")
        else:
            os.unlink(path)
    # A server that is down shows DOWN whatever its admin state, so the state is always sent (HAProxy
    # takes a state it already has as a no-op); only a visible difference counts as a change.
    status = known[f"{backend}/{server}"]["status"].upper()
    if not check_mode:
        apply(socket_path, backend, server, bool(after))
    changed = changed or (bool(after) != status.startswith("DRAIN") and not status.startswith("DOWN"))
    return {"changed": changed, "reasons": after, "drained": bool(after)}


def describe(socket_path: str, state_dir: str) -> dict[str, dict]:
    """Every server: its status, the requests under way on it and its reasons to be out of rotation."""
    return {
        name: {
            "status": row["status"],
            "current": int(row.get("scur") or 0),
            "reasons": reasons(state_dir, *name.split("/", 1)),
        }
        for name, row in servers(socket_path).items()
    }


def reconcile(socket_path: str, state_dir: str, check_mode: bool) -> dict:
    """Drain every server that still has a reason recorded (after HAProxy restarted)."""
    known = servers(socket_path)
    drained = []
    changed = False
    for name, row in sorted(known.items()):
        backend, server = name.split("/", 1)
        if reasons(state_dir, backend, server):
            drained.append(name)
            status = row["status"].upper()
            changed = changed or not (status.startswith("DRAIN") or status.startswith("DOWN"))
            if not check_mode:
                apply(socket_path, backend, server, True)
    return {"changed": changed, "drained": drained}


def wait_idle(socket_path: str, backend: str, server: str, timeout_s: float, poll_s: float = 1.0) -> int:
    """Wait until the server has no request under way (its current sessions); returns how many remain."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = int(servers(socket_path)[f"{backend}/{server}"].get("scur") or 0)
        if current == 0 or time.monotonic() >= deadline:
            return current
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m llm_toolkit.host.llm_haproxy drain|enable SERVER REASON`: what a unit runs when its
    backend stops or starts (roles/llm_gateway's drop-in), so that the gateway sends it no new request
    while it shuts down. Prints one line; exit 1 when HAProxy could not be told."""
    import argparse  # noqa: PLC0415 - only the command line needs it

    parser = argparse.ArgumentParser(prog="llm_haproxy")
    parser.add_argument("action", choices=["drain", "enable"])
    parser.add_argument("server")
    parser.add_argument("reason")
    parser.add_argument("--backend", default="llm")
    parser.add_argument("--socket", default="/run/haproxy/master.sock")
    parser.add_argument("--state-dir", default="/var/lib/llm-toolkit/gateway")
    args = parser.parse_args(argv)
    try:
        result = set_reason(
            args.socket, args.state_dir, args.backend, args.server, args.reason, args.action == "drain", False
        )
    except (GatewayError, OSError) as error:
        print(f"llm_haproxy: {args.action} {args.backend}/{args.server}: {error}")
        return 1
    state = f"out of rotation ({', '.join(result['reasons'])})" if result["drained"] else "in rotation"
    print(f"llm_haproxy: {args.backend}/{args.server} is {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
