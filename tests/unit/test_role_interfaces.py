"""Every role documents its interface: defaults/main.yml and meta/argument_specs.yml agree."""

import re
from pathlib import Path

import pytest
import yaml

from llm_toolkit.roledocs import sample_values

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(path.parent.parent for path in (REPO / "roles").glob("*/defaults/main.yml"))


def role_ids():
    return [role.name for role in ROLES]


@pytest.mark.parametrize("role", ROLES, ids=role_ids())
def test_argument_spec_lists_every_default_with_the_same_value(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, option in options.items():
        assert option.get("default") == defaults[name], name
        assert option.get("description"), f"{name} has no description"


# The shared settings' owner holds the toolkit's public names, which no single role prefix fits.
SHARED_PREFIXES = ("llm_", "ollama_", "vllm_")


@pytest.mark.parametrize("role", ROLES, ids=role_ids())
def test_every_default_has_a_comment_above_it_and_the_role_prefix(role):
    prefixes = SHARED_PREFIXES if role.name == "llm_defaults" else (f"{role.name}_",)
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^([a-z_][a-z0-9_]*):", line)
        if match:
            assert match[1].startswith(prefixes), f"{match[1]} lacks the {' or '.join(prefixes)} prefix"
            assert lines[index - 1].startswith("#"), f"{match[1]} has no comment above it"


@pytest.mark.parametrize("role", ROLES, ids=role_ids())
def test_sample_inventory_uncommented_gives_every_default(role):
    """The sample file is generated from the argument spec (tests/unit/test_roledocs.py keeps it
    current); uncommenting every variable in it must give exactly defaults/main.yml."""
    sample = REPO / "inventory" / "sample" / "group_vars" / "llm_servers" / f"{role.name}.yml"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    assert sample.is_file(), f"{sample.name} is missing; fix: run .venv/bin/python scripts/docs.py"
    assert sample_values(sample.read_text()) == defaults


def test_the_host_venv_lock_pins_the_controllers_versions_with_hashes():
    """The helper venv on the hosts runs the same package versions as the controller (constraints.txt)."""
    pins = {
        name.lower(): version
        for name, _, version in (line.partition("==") for line in (REPO / "constraints.txt").read_text().splitlines())
        if version
    }
    lock = (REPO / "roles" / "llm_toolkit_venv" / "files" / "requirements.txt").read_text()
    locked = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)
    assert {name.lower() for name, _ in locked} >= {"requests", "langdetect", "tqdm", "pyyaml"}
    for name, version in locked:
        assert pins[name.lower()] == version, f"{name}=={version} in the lock, not the controller's pin"
    assert lock.count("--hash=sha256:") >= len(locked)
