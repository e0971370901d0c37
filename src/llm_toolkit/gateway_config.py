"""What the gateway's HAProxy configuration is built from (roles/llm_gateway, templates/haproxy.cfg.j2).

The gateway fronts the backends the service roles recorded on the host (llm_toolkit.backends), in
the operator's order: the first is the primary, the others are HAProxy `backup` servers. HAProxy
keeps only the sha256 of the client key's header, never the key; and it can retry a request on the
backup only when the whole request fits in one buffer, so the buffer follows the request-size limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from urllib.parse import urlsplit

from llm_toolkit.gateway import is_enabled, is_loopback

# Bind addresses that mean every address: not an address a certificate can name.
WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - compared against, never bound
# HAProxy's tune.maxrewrite: room kept in each buffer for the headers the gateway adds or rewrites.
MAX_REWRITE_BYTES = 8192
# HAProxy's own default buffer (16 KiB): the smallest the gateway ever uses.
MIN_BUFFER_BYTES = 16384


def servers(records: list[dict], order: list[str]) -> list[dict]:
    """HAProxy servers of the backend `llm`, primary first: the backend's name, the address HAProxy
    connects to (host:port, IPv6 in brackets) and whether it wants vLLM's key."""
    by_name = {record["backend"]: record for record in records}
    result = []
    for name in order:
        record = by_name.get(name)
        if record is None:
            continue
        parts = urlsplit(record["base_url"])
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        result.append({"name": name, "upstream": f"{host}:{parts.port}", "auth": bool(record["auth"])})
    return result


def client_digest(key: str) -> str:
    """The sha256 of the Authorization header a client with this key sends, as HAProxy's hex converter
    writes it (upper case): the only form of the key the gateway's configuration holds."""
    if not key:
        raise ValueError("the gateway key is empty")
    return hashlib.sha256(f"Bearer {key}".encode()).hexdigest().upper()


def buffer_size(max_request_bytes: int, max_header_bytes: int) -> int:
    """tune.bufsize: a request of the largest allowed body and headers, plus the rewrite room, rounded
    up to a KiB (a request that fits is the only kind HAProxy can retry on the backup)."""
    needed = int(max_request_bytes) + int(max_header_bytes) + MAX_REWRITE_BYTES
    return max(MIN_BUFFER_BYTES, -(-needed // 1024) * 1024)


def log_format_word(value: str) -> str:
    """value as one word of haproxy.cfg where HAProxy reads a log-format string (set-header, http-check's
    hdr): `%` doubled, then single-quoted, a single quote written as "'" between quoted parts. Inside
    single quotes HAProxy expands no variable ($HOME) and no escape (\\)."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("the value holds a control character; expected printable text")
    return "'" + value.replace("%", "%%").replace("'", "'\"'\"'") + "'"


def certificate_subjects(hostname: str, ansible_host: str, gateway_host: str) -> dict:
    """What a host's gateway certificate names: its inventory name and any host name it is reached by
    (DNS), loopback and every IP address clients or the host itself use (the bind address when it is
    one, and the address Ansible reaches)."""
    names, addresses = [hostname], ["127.0.0.1"]
    for value in (ansible_host, gateway_host):
        if not value or value in WILDCARDS:
            continue
        try:
            addresses.append(str(ipaddress.ip_address(value.strip("[]"))))
        except ValueError:
            names.append(value)
    return {"names": sorted(set(names)), "addresses": sorted(set(addresses))}


# What a fleet gateway (inventory group llm_gateways) needs to know of each host's gateway.
FLEET_SETTINGS = (
    "llm_gateway_enabled",
    "llm_gateway_host",
    "llm_gateway_port",
    "llm_gateway_tls_certificate",
    "llm_gateway_tls_ca",
)


def _bracketed(address: str) -> str:
    """An address as it stands before `:port` (an IPv6 address in brackets)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _reached_at(bind: str, ansible_host, inventory_name: str) -> str:
    """The address other hosts reach a gateway bound on `bind` at: its Ansible address when it binds every
    address (a wildcard), else the bind address itself (without brackets)."""
    return str(ansible_host or inventory_name) if bind in WILDCARDS else bind.strip("[]")


def _network_fix(host: str) -> str:
    return f"set llm_gateway_host for {host} to its network address, with llm_gateway_tls_ca: private"


def haproxy_name(name: str) -> str:
    """An inventory name as a HAProxy server and socket name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name))


def fleet_members(fleet_host: str, members: dict, defaults: dict) -> dict:
    """The servers of a fleet gateway: each llm_servers host's gateway, from that host's settings
    (`members`: {inventory name: its variables}, where a setting it does not set comes from `defaults`,
    the role defaults every host shares). Each entry: the server's name, the address and port the fleet
    gateway connects to, the name its certificate is checked against, and whether a private CA issued
    it. {"members": [...], "errors": [one line per host the fleet cannot reach safely: a loopback bind,
    plain HTTP; or none at all]}."""
    result, problems = [], []
    for name in sorted(members):
        settings = {key: members[name].get(key, defaults.get(key)) for key in FLEET_SETTINGS}
        if not is_enabled(settings["llm_gateway_enabled"]):
            continue
        bind = str(settings["llm_gateway_host"])
        address = _reached_at(bind, members[name].get("ansible_host"), name)
        private = settings["llm_gateway_tls_ca"] == "private"
        fix = _network_fix(name)
        if is_loopback(address):
            problems.append(
                f"{fleet_host}: the gateway of {name} listens on {bind} (loopback), out of the fleet gateway's "
                f"reach; expected a network address with TLS; fix: {fix}"
            )
            continue
        if not private and not settings["llm_gateway_tls_certificate"]:
            problems.append(
                f"{fleet_host}: the gateway of {name} serves plain HTTP on {bind}; expected TLS between the "
                f"fleet gateway and each host; fix: {fix} (or llm_gateway_tls_certificate)"
            )
            continue
        result.append(
            {
                "name": haproxy_name(name),
                "host": name,
                "address": _bracketed(address),
                "port": int(settings["llm_gateway_port"]),
                # A private CA's certificate names the inventory name; an operator's, the address used.
                "server_name": name if private else address,
                "private_ca": private,
            }
        )
    if not result and not problems:
        problems.append(
            f"{fleet_host}: no host of llm_servers has a gateway for the fleet gateway to balance over; "
            "expected at least one; fix: add the serving hosts to llm_servers with llm_gateway_enabled: true"
        )
    return {"members": result, "errors": problems}


def app_gateway_url(app_host: str, fleet_host: str, fleet_record: dict, fleet_settings: dict) -> dict:
    """Where an app on app_host reaches the fleet gateway of fleet_host: {"url": ..., "errors": [...]}.

    On the fleet gateway's own host, the URL it recorded (llm_gateway.fact). From another host, its bind
    address (its Ansible address when it binds every address) over TLS; loopback or plain HTTP is out
    of reach (a key must never cross the network in clear)."""
    if not fleet_record:
        return {
            "url": "",
            "errors": [
                f"{app_host}: the fleet gateway {fleet_host} has no gateway recorded; expected the gateway play to "
                f"have run on it first; fix: run site.yml (or --tags gateway) with {fleet_host} in llm_gateways"
            ],
        }
    if app_host == fleet_host:
        return {"url": fleet_record["url"], "errors": []}
    bind = str(fleet_record.get("host", ""))
    address = _reached_at(bind, fleet_settings.get("ansible_host"), fleet_host)
    if is_loopback(address):
        problem = f"listens on {bind} (loopback), out of {app_host}'s reach"
    elif not fleet_record.get("tls"):
        problem = f"serves plain HTTP on {bind}, and the app's key would cross the network in clear"
    else:
        return {"url": f"https://{_bracketed(address)}:{fleet_record['port']}", "errors": []}
    return {
        "url": "",
        "errors": [
            f"{app_host}: the fleet gateway {fleet_host} {problem}; expected a network address with TLS; "
            f"fix: {_network_fix(fleet_host)}"
        ],
    }
