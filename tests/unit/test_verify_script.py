"""scripts/verify.py: the per-host summary of a JUnit report, and its exit codes."""

import json
import subprocess
import sys
from pathlib import Path

from llm_toolkit import verify

REPO = Path(__file__).resolve().parents[2]

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.verify.test_base" name="test_baseline_packages_are_installed[ansible://lab1]"/>
<testcase classname="tests.verify.test_base" name="test_baseline_packages_are_installed[ansible://lab2]"/>
<testcase classname="tests.verify.test_backends" name="test_service_is_enabled_and_active[backend=ollama-ansible://lab-1]">
  <failure message="AssertionError: ollama.service is inactive; see journalctl -u ollama.service&#10;more">x</failure>
</testcase>
<testcase classname="tests.verify.test_backends" name="test_service_is_enabled_and_active[backend=vllm-ansible://lab2]">
  <skipped type="pytest.skip" message="vllm is not deployed on this host">skip</skipped>
</testcase>
</testsuite></testsuites>"""


def test_the_report_is_summarised_per_host_with_reasons():
    hosts = verify.summarise(REPORT)
    assert list(hosts) == ["lab-1", "lab1", "lab2"]
    assert hosts["lab1"]["passed"] == ["test_base::test_baseline_packages_are_installed"]
    assert hosts["lab-1"]["failed"] == [
        {
            "check": "test_backends::test_service_is_enabled_and_active[ollama]",
            "message": "AssertionError: ollama.service is inactive; see journalctl -u ollama.service",
        }
    ]
    assert hosts["lab2"]["skipped"] == [
        {
            "check": "test_backends::test_service_is_enabled_and_active[vllm]",
            "reason": "vllm is not deployed on this host",
        }
    ]


def test_exit_codes_follow_pytest_and_an_empty_run_is_an_error():
    assert verify.exit_code(0, {"lab1": {}}) == 0
    assert verify.exit_code(1, {"lab1": {}}) == 1
    assert verify.exit_code(0, {}) == 2
    assert verify.exit_code(4, {}) == 2
    assert verify.exit_code(5, {}) == 2


def test_a_missing_inventory_is_reported_in_one_line_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "verify.py"), "--inventory", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"verify: inventory {tmp_path / 'nope'} does not exist; fix: pass --inventory"


def test_a_local_run_against_no_matching_host_exits_2(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {}}}))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "verify.py"), "--inventory", str(inventory), "--hosts", "nothing"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "could not run against nothing" in result.stderr
