"""The repository's filter plugins as Ansible loads them (its own plugin loader, from plugins/filter),
and its test playbooks (tests/playbooks) run by the venv's ansible-playbook with the repository's ansible.cfg."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from ansible.plugins.loader import filter_loader, init_plugin_loader

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def _loader():
    init_plugin_loader()
    filter_loader.add_directory(str(REPO / "plugins" / "filter"))
    return filter_loader


def ansible_filter(name: str):
    """The Python function behind the filter `name`, loaded the way a playbook would."""
    plugin = _loader().get(name)
    if plugin is None:
        raise LookupError(f"no filter plugin named {name}")
    return plugin.j2_function


def run_test_playbook(playbook: str, *args: str) -> subprocess.CompletedProcess:
    """tests/playbooks/<playbook> run with `args`, as the repository runs playbooks; fails on a failed run."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), f"tests/playbooks/{playbook}", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result
