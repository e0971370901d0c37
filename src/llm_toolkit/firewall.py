"""The host firewall's inputs (roles/llm_firewall): the ports the inventory opens beyond ssh and the
gateway (`llm_firewall_allow`), checked and put into the shape the rule set's template writes.

An entry is a mapping {port: 1-65535, proto: tcp or udp (default tcp), from: an address or network
(optional; IPv4 or IPv6, e.g. 10.0.0.0/8 or 2001:db8::/32)}. Every refusal is one line naming the
entry, the value, what was expected and the fix.
"""

from __future__ import annotations

import ipaddress

PROTOCOLS = ("tcp", "udp")
KEYS = ("port", "proto", "from")
EXAMPLE = "e.g. llm_firewall_allow: [{port: 9100, proto: tcp, from: 10.0.0.0/8}]"


class FirewallInputError(ValueError):
    """An llm_firewall_allow entry the rule set cannot hold."""


def _port(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    return number if 1 <= number <= 65535 else None


def allow_rule(entry: object, index: int = 0) -> dict:
    """One entry as {port, proto, family (ip, ip6 or ''), source ('' for anywhere)}; raises FirewallInputError."""
    where = f"llm_firewall_allow[{index}]"
    if not isinstance(entry, dict):
        raise FirewallInputError(f"{where} is {entry!r}; expected a mapping with port, proto and from; fix: {EXAMPLE}")
    unknown = sorted(str(key) for key in entry if key not in KEYS)
    if unknown:
        raise FirewallInputError(
            f"{where} has {', '.join(unknown)}; expected only port, proto and from; fix: {EXAMPLE}"
        )
    port = _port(entry.get("port"))
    if port is None:
        raise FirewallInputError(
            f"{where}.port is {entry.get('port')!r}; expected a whole number from 1 to 65535; fix: {EXAMPLE}"
        )
    proto = entry.get("proto", "tcp")
    if proto not in PROTOCOLS:
        raise FirewallInputError(f"{where}.proto is {proto!r}; expected tcp or udp; fix: {EXAMPLE}")
    source = entry.get("from")
    if source in (None, ""):
        return {"port": port, "proto": proto, "family": "", "source": ""}
    try:
        network = ipaddress.ip_network(str(source).strip(), strict=True)
    except ValueError:
        raise FirewallInputError(
            f"{where}.from is {source!r}; expected an IPv4 or IPv6 address or network without host bits "
            f"(10.0.0.0/8, 192.0.2.7, 2001:db8::/32); fix: {EXAMPLE}"
        ) from None
    return {"port": port, "proto": proto, "family": "ip" if network.version == 4 else "ip6", "source": str(network)}


def allow_errors(entries: object) -> list[str]:
    """One line per entry the rule set cannot hold (empty: all good)."""
    if not isinstance(entries, list):
        return [f"llm_firewall_allow is {entries!r}; expected a list of mappings; fix: {EXAMPLE}"]
    errors = []
    for index, entry in enumerate(entries):
        try:
            allow_rule(entry, index)
        except FirewallInputError as error:
            errors.append(str(error))
    return errors


def allow_rules(entries: list) -> list[dict]:
    """The entries in the template's shape, duplicates dropped, in the inventory's order."""
    rules: list[dict] = []
    for index, entry in enumerate(entries):
        rule = allow_rule(entry, index)
        if rule not in rules:
            rules.append(rule)
    return rules
