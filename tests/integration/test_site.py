"""The README's main command on fresh lab hosts, exactly as users run it: `make lab` converges the three
host kinds with both backends (the Ollama stand-in and vLLM's CPU build on the tiny model), the .env,
the smoke test and the verifiers; a second `make lab` changes nothing (env and smoke included); a
`--check` run changes nothing; then the baseline's verifiers are shown failing and repaired."""

import json
import re

import pytest

from tests.integration.conftest import CANARY, REPO

VERIFY_BASE = REPO / "tests" / "verify" / "test_base.py"


def test_first_run_converges_every_host(converged, session_lab):
    first = converged.first
    assert first.returncode == 0, first.output[-3000:]
    for stage in (
        "Check the hosts before anything changes",
        "Apply the LLM host baseline",
        "Apply the host firewall",
        "Serve the quantized model with Ollama",
        "Serve the model with vLLM",
        "Put the gateway in front of the backends",
        "Write the app's .env",
        "Ask every backend in Italian",
        "Verify every host",
    ):
        assert f"PLAY [{stage}]" in first.output, stage
    assert "vllm: smoke test passed" in first.output
    assert "ollama: smoke test passed" in first.output
    assert "4 of 4 concurrent answers in Italian" in first.output  # through the gateway
    assert CANARY not in first.output
    for name in session_lab.hosts:
        assert first.recap[name]["failed"] == 0
        assert first.recap[name]["unreachable"] == 0
        assert first.recap[name]["changed"] > 0, f"{name} was converged already: the lab host was not fresh"


def test_second_run_reports_no_change(converged, session_lab):
    second = converged.second
    assert second.returncode == 0, second.output[-3000:]
    assert "vllm: smoke test passed" in second.output
    assert {name: second.recap[name]["changed"] for name in session_lab.hosts} == dict.fromkeys(session_lab.hosts, 0)


def test_check_mode_on_converged_hosts_reports_no_change(converged, session_lab):
    check = converged.check
    assert check.returncode == 0, check.output[-3000:]
    assert all(check.recap[name]["changed"] == 0 for name in session_lab.hosts)


def test_the_baseline_is_in_place_on_every_host(converged, session_lab):
    for name in session_lab.hosts:
        host = session_lab.host(name)
        assert host.package("acl").is_installed
        fact = json.loads(host.file("/etc/ansible/facts.d/llm_toolkit.fact").content_string)
        assert fact["config_dir"] == "/etc/llm-toolkit"


def test_verifiers_pass_on_every_converged_host(converged, session_lab):
    result = session_lab.verify()
    assert result.returncode == 0, result.stdout[-3000:]
    checks = VERIFY_BASE.read_text().count("\ndef test_")
    for name in session_lab.hosts:
        passed = re.findall(rf"^PASSED tests/verify/test_base.py::\w+\[ansible://{name}\]$", result.stdout, re.M)
        assert len(passed) == checks


@pytest.mark.parametrize(
    ("breakage", "failing_check"),
    [
        ("rm /etc/ansible/facts.d/llm_toolkit.fact", "test_toolkit_fact_records_this_toolkit_version"),
        ("chmod 0777 /etc/llm-toolkit", "test_toolkit_config_directory_is_owned_by_root"),
        ("apt-get -qq remove -y pciutils", "test_baseline_packages_are_installed"),
        ("systemctl start lab-broken-unit.service || true", "test_systemd_is_pid1_and_the_system_is_running"),
    ],
)
def test_each_verifier_fails_on_a_broken_host_and_a_rerun_repairs_it(converged, session_lab, breakage, failing_check):
    broken = session_lab.host("itest2")
    if "lab-broken-unit" in breakage:
        broken.run("systemd-run --unit=lab-broken-unit --quiet --property=Type=oneshot false")
    else:
        assert broken.run(breakage).rc == 0
    try:
        result = session_lab.verify()
        assert result.returncode != 0
        assert f"FAILED tests/verify/test_base.py::{failing_check}[ansible://itest2]" in result.stdout
        assert f"PASSED tests/verify/test_base.py::{failing_check}[ansible://itest1]" in result.stdout
    finally:
        broken.run("systemctl reset-failed")
        repair = session_lab.playbook("--tags", "base")  # the baseline stage repairs what these break
    assert repair.returncode == 0, repair.output[-3000:]
    assert session_lab.verify().returncode == 0


def test_bad_input_fails_in_one_message_naming_host_value_and_fix_and_changes_nothing(converged, session_lab):
    run = session_lab.playbook("-e", '{"llm_base_extra_packages": "htop"}')
    assert run.returncode != 0
    assert "itest1: llm_base_packages=" in run.output
    assert "llm_base_extra_packages=htop must be YAML lists" in run.output
    assert "fix:" in run.output
    assert all(run.recap[name]["changed"] == 0 for name in session_lab.hosts)
    assert not session_lab.host("itest1").package("htop").is_installed


def test_tags_select_stages(session_lab):
    listing = session_lab.playbook("--list-tasks", "--tags", "phase1").output
    assert "install | Ensure baseline packages are present" in listing
    listing = session_lab.playbook("--list-tasks", "--tags", "no-such-stage").output
    assert "install | Ensure baseline packages are present" not in listing
    assert "Stop if ansible-core is older than the toolkit supports" in listing
