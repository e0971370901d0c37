"""The gateway's private CA on the controller (llm_toolkit.tls, the llm_gateway_certificate action): made
once with a private key only its owner reads, host certificates that name what they are asked to and
verify against it, kept on a rerun, issued anew when the names change or the expiry nears, nothing
written in check mode; and the action itself run by Ansible."""

from __future__ import annotations

import datetime
import ipaddress
import multiprocessing
import stat
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from llm_toolkit import tls
from llm_toolkit.gateway_config import certificate_subjects
from tests.ansible_plugins import run_test_playbook


def sans(pem: str) -> set:
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return set(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_the_ca_is_made_once_and_its_key_is_readable_by_its_owner_alone(tmp_path):
    ca_dir = tmp_path / "ca"
    issued = tls.ensure_host_certificate(ca_dir, "gpu1", ["gpu1"], ["127.0.0.1", "10.0.0.5"])
    assert issued["changed"]
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ca_dir / "hosts" / "gpu1.key").stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(issued["ca_certificate"].encode())
    leaf = x509.load_pem_x509_certificate(issued["certificate"].encode())
    leaf.verify_directly_issued_by(ca)
    assert sans(issued["certificate"]) == {
        x509.DNSName("gpu1"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
    }
    assert "PRIVATE KEY" in issued["private_key"] and "PRIVATE KEY" not in issued["certificate"]


def test_a_rerun_keeps_the_certificate_and_new_names_or_a_near_expiry_issue_a_new_one(tmp_path, monkeypatch):
    ca_dir = tmp_path / "ca"
    first = tls.ensure_host_certificate(ca_dir, "gpu1", ["gpu1"], ["10.0.0.5"])
    again = tls.ensure_host_certificate(ca_dir, "gpu1", ["gpu1"], ["10.0.0.5"])
    assert not again["changed"] and again["certificate"] == first["certificate"]
    moved = tls.ensure_host_certificate(ca_dir, "gpu1", ["gpu1"], ["10.0.0.6"])
    assert moved["changed"] and moved["certificate"] != first["certificate"]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=tls.DAYS - tls.RENEW_WITHIN_DAYS + 1)
    monkeypatch.setattr(tls, "_now", lambda: later)
    renewed = tls.ensure_host_certificate(ca_dir, "gpu1", ["gpu1"], ["10.0.0.6"])
    assert renewed["changed"] and renewed["certificate"] != moved["certificate"]


def test_check_mode_writes_nothing_and_a_bad_address_is_refused_by_name(tmp_path):
    ca_dir = tmp_path / "ca"
    assert tls.ensure_host_certificate(ca_dir, "gpu1", ["gpu1"], ["10.0.0.5"], check_mode=True)["changed"]
    assert not ca_dir.exists()
    with pytest.raises(tls.TlsError, match=r"gpu1: 'gpu1.example' is not an IP address"):
        tls.ensure_host_certificate(ca_dir, "gpu1", [], ["gpu1.example"])


def test_a_host_is_named_by_its_inventory_name_and_every_address_it_is_reached_by():
    assert certificate_subjects("gpu1", "10.0.0.5", "0.0.0.0") == {  # noqa: S104 - a bind being described
        "names": ["gpu1"],
        "addresses": ["10.0.0.5", "127.0.0.1"],
    }
    assert certificate_subjects("gpu1", "gpu1.example", "192.168.1.9") == {
        "names": ["gpu1", "gpu1.example"],
        "addresses": ["127.0.0.1", "192.168.1.9"],
    }


def test_the_action_issues_on_the_controller_and_a_rerun_reports_no_change(tmp_path):
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "hosts": {"gpu1": {"ca_dir": str(tmp_path / "ca"), "out": str(tmp_path / "result.json")}},
        }
    }
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    first = run_test_playbook("gateway_certificate.yml", "-i", str(tmp_path / "inventory.yml"))
    assert "changed=1" in first.stdout and "PRIVATE KEY" not in first.stdout
    again = run_test_playbook("gateway_certificate.yml", "-i", str(tmp_path / "inventory.yml"))
    assert "changed=0" in again.stdout
    assert (tmp_path / "ca" / "hosts" / "gpu1.pem").exists()


def _issue_after(barrier, ca_dir: str, host: str) -> None:
    barrier.wait()  # every process starts at once, as Ansible's forks do on a fresh inventory
    tls.ensure_host_certificate(Path(ca_dir), host, [host], ["127.0.0.1"])


def test_hosts_issued_at_the_same_time_are_all_signed_by_the_one_ca_that_stays(tmp_path):
    """Found on the lab: two hosts made two CAs at once, the second overwrote the first, and the fleet
    gateway (trusting the CA on disk) refused the first host's certificate."""
    hosts = [f"gpu-{number}" for number in range(6)]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(hosts))
    processes = [context.Process(target=_issue_after, args=(barrier, str(tmp_path), host)) for host in hosts]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * len(hosts)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for host in hosts:
        certificate = x509.load_pem_x509_certificate((tmp_path / "hosts" / f"{host}.pem").read_bytes())
        certificate.verify_directly_issued_by(ca)  # raises when another CA signed it
