"""Host verifiers for the baseline (roles/llm_base): run against any inventory with testinfra.

    pytest tests/verify --hosts='ansible://llm_servers' --ansible-inventory=inventory/lab

What a host should look like comes from the role's defaults and the host's inventory
variables, so a site that overrides a variable is verified against its own setting.
"""

import json

import pytest
import yaml

from tests.verify.verify_helpers import REPO, SHARED

VERSION = (REPO / "VERSION").read_text().strip()
DEFAULTS = yaml.safe_load((REPO / "roles" / "llm_base" / "defaults" / "main.yml").read_text())


@pytest.fixture
def settings(host):
    """The role's and the shared variables as this host sees them (defaults, then inventory)."""
    inventory = host.ansible.get_variables()
    return {name: inventory.get(name, default) for name, default in {**SHARED, **DEFAULTS}.items()}


def test_systemd_is_pid1_and_the_system_is_running(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", f"systemd reports {state!r}; see systemctl --failed"


def test_baseline_packages_are_installed(host, settings):
    missing = [
        package
        for package in settings["llm_base_packages"] + settings["llm_base_extra_packages"]
        if not host.package(package).is_installed
    ]
    assert not missing, f"packages not installed: {missing}"


def test_toolkit_config_directory_is_owned_by_root(host, settings):
    directory = host.file(settings["llm_config_dir"])
    assert directory.is_directory
    assert (directory.user, directory.group, directory.mode) == ("root", "root", 0o755)


def test_toolkit_fact_records_this_toolkit_version(host, settings):
    fact = host.file(f"{settings['llm_facts_dir']}/llm_toolkit.fact")
    assert fact.exists, "the llm_toolkit local fact is missing: the baseline never ran"
    assert (fact.user, fact.mode) == ("root", 0o644)
    assert json.loads(fact.content_string) == {
        "toolkit_version": VERSION,
        "config_dir": settings["llm_config_dir"],
    }
