"""The repository's filter plugins as Ansible loads them (its own plugin loader, from plugins/filter)."""

from __future__ import annotations

import functools
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
