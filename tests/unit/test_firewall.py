"""The host firewall's rule set (roles/llm_firewall) as the role renders it: what it lets in for the
inventory's settings, that nft itself accepts it (`nft --check`, when nft is installed and may talk to
the kernel), and the one-line refusals of bad openings (llm_firewall_allow) before anything changes.
docs/security.md, section 8."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_toolkit.firewall import allow_errors, allow_rules
from tests.ansible_plugins import run_test_playbook as run_playbook
from tests.unit.test_secrets import input_checks

REPO = Path(__file__).resolve().parents[2]
NFT = shutil.which("nft") or ("/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else None)

HOSTS = {
    # The defaults: ssh on 22, the gateway on 8080, its metrics on loopback (no opening).
    "default": {},
    # ssh elsewhere, extra openings of both families, and the metrics listener on the network.
    "open": {
        "ansible_port": 2222,
        "llm_gateway_metrics_host": "10.0.0.5",
        "llm_firewall_allow": [
            {"port": 9100, "from": "10.0.0.0/8"},
            {"port": 5353, "proto": "udp"},
            {"port": "8443", "proto": "tcp", "from": "2001:db8::/32"},
            {"port": 9100, "from": "10.0.0.0/8"},
        ],
    },
    # No gateway: only ssh (an explicit port wins over ansible_port).
    "no-gateway": {"llm_gateway_enabled": False, "ansible_port": 2222, "llm_firewall_ssh_port": 22022},
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("firewall")
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "hosts": {name: {**values, "render_dir": str(base / name)} for name, values in HOSTS.items()},
        }
    }
    for name in HOSTS:
        (base / name).mkdir()
    (base / "inventory.yml").write_text(yaml.safe_dump(inventory))
    run_playbook("render_firewall.yml", "-i", str(base / "inventory.yml"))
    return {name: base / name for name in HOSTS}


def rules(rendered, host: str) -> list[str]:
    """The input chain's rules, one per line, comments and blank lines left out."""
    text = (rendered[host] / "llm-firewall.nft").read_text()
    chain = text.split("chain input {", 1)[1]
    return [line.strip() for line in chain.splitlines() if line.strip() and not line.strip().startswith("#")]


def opened(rendered, host: str) -> set[str]:
    """What the chain accepts by destination port, as 'proto/port' or 'proto/port from source'."""
    found = set()
    for rule in rules(rendered, host):
        match = re.fullmatch(r'(?:(ip6?) saddr (\S+) )?(tcp|udp) dport (\d+) accept comment "[^"]*"', rule)
        if match and not (match[2] or "").startswith("fe80::"):
            _family, source, proto, port = match.groups()
            found.add(f"{proto}/{port}" + (f" from {source}" if source else ""))
    return found


def test_the_defaults_let_in_ssh_and_the_gateway_only(rendered):
    assert opened(rendered, "default") == {"tcp/22", "tcp/8080"}
    chain = rules(rendered, "default")
    assert chain[0] == "type filter hook input priority filter; policy drop;"
    assert chain[1] == "ct state established,related accept"
    assert 'iif "lo" accept' in chain


def test_the_inventory_opens_ssh_elsewhere_the_metrics_listener_and_its_own_ports(rendered):
    assert opened(rendered, "open") == {
        "tcp/2222",
        "tcp/8080",
        "tcp/8081",
        "tcp/9100 from 10.0.0.0/8",
        "udp/5353",
        "tcp/8443 from 2001:db8::/32",
    }
    assert "ip saddr 10.0.0.0/8 tcp dport 9100" in "\n".join(rules(rendered, "open"))
    assert "ip6 saddr 2001:db8::/32 tcp dport 8443" in "\n".join(rules(rendered, "open"))


def test_without_the_gateway_only_ssh_gets_in_on_the_port_the_inventory_names(rendered):
    assert opened(rendered, "no-gateway") == {"tcp/22022"}


def test_the_rule_set_replaces_only_its_own_table(rendered):
    text = (rendered["open"] / "llm-firewall.nft").read_text()
    statements = [line for line in text.splitlines() if line.startswith(("table", "delete", "flush"))]
    assert statements == ["table inet llm_firewall", "delete table inet llm_firewall", "table inet llm_firewall {"]


def nft_can_check() -> str | None:
    if NFT is None:
        return "nft is not installed (apt-get install nftables)"
    if os.geteuid() != 0:
        return "nft --check talks to the kernel, which needs root"
    return None


def nft_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NFT, "--check", "--file", str(path)], check=False, capture_output=True, text=True)


@pytest.mark.skipif(nft_can_check() is not None, reason=str(nft_can_check()))
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_nft_accepts_the_rendered_rule_set(rendered, host):
    result = nft_check(rendered[host] / "llm-firewall.nft")
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(nft_can_check() is not None, reason=str(nft_can_check()))
def test_nft_refuses_a_broken_rule_set_so_the_check_can_fail(rendered, tmp_path):
    broken = tmp_path / "broken.nft"
    broken.write_text((rendered["default"] / "llm-firewall.nft").read_text().replace("tcp dport 22", "tcp dport ssh-x"))
    result = nft_check(broken)
    assert result.returncode != 0


def test_the_boot_unit_loads_the_confirmed_file_after_debians_nftables(rendered):
    unit = (rendered["default"] / "llm-firewall.service").read_text()
    assert "ExecStart=/usr/sbin/nft -f /etc/llm-toolkit/llm-firewall.nft" in unit
    assert "After=nftables.service" in unit and "Before=network-pre.target" in unit
    assert "ExecStop=-/usr/sbin/nft delete table inet llm_firewall" in unit


# --- llm_firewall_allow: checked before anything changes -------------------------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ("9100", "llm_firewall_allow is '9100'; expected a list of mappings"),
        ([9100], "llm_firewall_allow[0] is 9100; expected a mapping with port, proto and from"),
        ([{"port": 0}], "llm_firewall_allow[0].port is 0; expected a whole number from 1 to 65535"),
        ([{"port": 70000}], "llm_firewall_allow[0].port is 70000"),
        ([{"port": True}], "llm_firewall_allow[0].port is True"),
        ([{"port": "22; accept"}], "llm_firewall_allow[0].port is '22; accept'"),
        ([{"port": 1, "proto": "sctp"}], "llm_firewall_allow[0].proto is 'sctp'; expected tcp or udp"),
        ([{"port": 1, "source": "10.0.0.0/8"}], "llm_firewall_allow[0] has source; expected only port, proto and from"),
        ([{"port": 1}, {"port": 1, "from": "10.0.0.1/8"}], "llm_firewall_allow[1].from is '10.0.0.1/8'"),
        ([{"port": 1, "from": "10.0.0.0/8 accept"}], "expected an IPv4 or IPv6 address or network"),
    ],
)
def test_a_bad_opening_is_one_line_naming_entry_value_expectation_and_fix(entries, expected):
    errors = allow_errors(entries)
    assert len(errors) == 1, errors
    assert expected in errors[0]
    assert "fix: e.g. llm_firewall_allow: [{port: 9100" in errors[0]
    assert "\n" not in errors[0]


def test_good_openings_are_normalised_and_deduplicated():
    entries = [
        {"port": "9100", "from": "192.0.2.7"},
        {"port": 9100, "from": "192.0.2.7/32"},
        {"port": 53, "proto": "udp"},
    ]
    assert allow_errors(entries) == []
    assert allow_rules(entries) == [
        {"port": 9100, "proto": "tcp", "family": "ip", "source": "192.0.2.7/32"},
        {"port": 53, "proto": "udp", "family": "", "source": ""},
    ]


HOST_FACTS = {"input_checks_facts": {"os_family": "Debian", "service_mgr": "systemd"}}


def test_the_role_stops_on_a_bad_opening_in_one_line_naming_the_host():
    result = input_checks("llm_firewall", {**HOST_FACTS, "llm_firewall_allow": [{"port": 9100, "from": "10.0.0.1/8"}]})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "localhost: llm_firewall_allow[0].from is '10.0.0.1/8'; expected an IPv4 or IPv6" in output
    assert "Traceback" not in output


def test_the_role_stops_when_the_rollback_could_come_before_the_confirmation():
    result = input_checks(
        "llm_firewall", {**HOST_FACTS, "llm_firewall_confirm_timeout": 30, "llm_firewall_rollback_timeout": 40}
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "localhost: llm_firewall_confirm_timeout=30, llm_firewall_rollback_timeout=40; expected whole" in output


def test_the_role_passes_its_checks_with_the_defaults():
    result = input_checks("llm_firewall", HOST_FACTS)
    assert result.returncode == 0, result.stdout[-3000:]
