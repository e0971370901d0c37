"""The host firewall (roles/llm_firewall) on a converged lab host: a port nobody opened is dropped while
ssh gets in, a port the inventory opens (llm_firewall_allow) gets in, a rule set that would cut ssh
(llm_firewall_ssh_port set to a port sshd does not listen on) is rolled back by itself and the run
stops naming the port, and a rerun changes nothing. The first `make lab` applied the firewall to every
host (site.yml runs it after the baseline); the second one and `--check` changed nothing
(tests/integration/test_site.py)."""

import json
import socket
import time

import pytest
import yaml

HOST = "itest1"
PORT = 9137  # a listener of the test's own, in no opening
LISTENER = "fwtest-http"


def address(session_lab, name: str) -> str:
    inventory = yaml.safe_load((session_lab.inventory / "hosts.yml").read_text())
    return inventory["all"]["children"]["llm_servers"]["hosts"][name]["ansible_host"]


def connects(host_address: str, port: int) -> bool:
    """True when a TCP connection from the controller gets in; False when the firewall drops it (a
    listener that is absent would answer with a reset, which fails the test instead)."""
    try:
        with socket.create_connection((host_address, port), timeout=3):
            return True
    except TimeoutError:
        return False


def firewall(session_lab, *args: str):
    return session_lab.playbook("--tags", "firewall", "--limit", HOST, *args)


def sudo(host, command: str) -> str:
    with host.sudo():
        result = host.run(command)
    assert result.rc == 0, f"{command}: exit {result.rc}: {result.stderr[-500:]}"
    return result.stdout


@pytest.fixture
def listener(converged, session_lab):
    """A web server of the test's own on PORT, on every address of the host, stopped afterwards."""
    host = session_lab.host(HOST)
    sudo(host, f"systemd-run --unit={LISTENER} --collect python3 -m http.server {PORT} --bind 0.0.0.0")
    try:
        for _ in range(50):
            if host.run(f"curl -s -o /dev/null http://127.0.0.1:{PORT}/").rc == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the test's listener did not start on the host")
        yield host
    finally:
        with host.sudo():
            host.run(f"systemctl stop {LISTENER}")


def test_every_host_got_the_firewall_and_a_port_nobody_opened_is_dropped_while_ssh_gets_in(
    converged, session_lab, listener
):
    assert "PLAY [Apply the host firewall]" in converged.first.output
    for name in session_lab.hosts:
        host = session_lab.host(name)
        assert "policy drop" in sudo(host, "nft list table inet llm_firewall")
        assert host.service("llm-firewall.service").is_enabled
        # No rollback stays armed once a change was confirmed.
        assert sudo(host, "systemctl show -p LoadState --value llm-firewall-rollback.timer").strip() == "not-found"
    target = address(session_lab, HOST)
    assert not connects(target, PORT)
    assert connects(target, 22)


def test_an_opening_in_the_inventory_gets_in_and_a_rerun_changes_nothing(converged, session_lab, listener):
    target = address(session_lab, HOST)
    opening = ["-e", json.dumps({"llm_firewall_allow": [{"port": PORT, "proto": "tcp"}]})]
    try:
        opened = firewall(session_lab, *opening)
        assert opened.returncode == 0, opened.output[-3000:]
        assert opened.recap[HOST]["changed"] > 0
        assert connects(target, PORT)
        again = firewall(session_lab, *opening)
        assert again.returncode == 0, again.output[-3000:]
        assert again.recap[HOST]["changed"] == 0  # nothing armed: arming reports a change
    finally:
        closed = firewall(session_lab)
    assert closed.returncode == 0, closed.output[-3000:]
    assert closed.recap[HOST]["changed"] > 0
    assert not connects(target, PORT)


def test_a_rule_set_that_cuts_ssh_is_rolled_back_by_itself_and_the_run_stops_naming_the_port(converged, session_lab):
    host = session_lab.host(HOST)
    before = sudo(host, "nft list table inet llm_firewall")
    persisted = sudo(host, "cat /etc/llm-toolkit/llm-firewall.nft")
    cut = firewall(
        session_lab,
        "-e",
        json.dumps(
            {"llm_firewall_ssh_port": 2222, "llm_firewall_confirm_timeout": 5, "llm_firewall_rollback_timeout": 20}
        ),
    )
    assert cut.returncode != 0
    assert cut.recap[HOST]["failed"] == 1 and cut.recap[HOST]["unreachable"] == 0
    assert (
        f"{HOST}: no new ssh connection to port 2222 got in within 5 s under the new firewall rule set, so the "
        "previous rule set was restored; expected llm_firewall_ssh_port (2222) to be the port sshd listens on; "
        "fix: set ansible_port or llm_firewall_ssh_port to that port"
    ) in cut.output
    # ssh gets in again, through the previous table, which the kernel holds exactly as before; the file
    # loaded at boot never saw the refused rule set; no timer is left armed.
    assert sudo(host, "nft list table inet llm_firewall") == before
    assert sudo(host, "cat /etc/llm-toolkit/llm-firewall.nft") == persisted
    assert "2222" not in persisted
    assert sudo(host, "systemctl show -p ActiveState --value llm-firewall-rollback.timer").strip() != "active"
    rerun = firewall(session_lab)
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert rerun.recap[HOST]["changed"] == 0


def test_switched_off_the_table_and_its_unit_are_gone_and_switched_on_again_they_are_back(
    converged, session_lab, listener
):
    target = address(session_lab, HOST)
    try:
        off = firewall(session_lab, "-e", '{"llm_firewall_enabled": false}')
        assert off.returncode == 0, off.output[-3000:]
        assert off.recap[HOST]["changed"] > 0
        with listener.sudo():
            assert listener.run("nft list table inet llm_firewall").rc != 0
        assert not listener.file("/etc/systemd/system/llm-firewall.service").exists
        assert not listener.file("/etc/llm-toolkit/llm-firewall.nft").exists
        assert connects(target, PORT)
    finally:
        on = firewall(session_lab)
    assert on.returncode == 0, on.output[-3000:]
    assert not connects(target, PORT)
    assert listener.service("llm-firewall.service").is_enabled
