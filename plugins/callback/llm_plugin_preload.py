"""Callback plugin: load the Jinja filter and test plugins once, in the controller's main process.

Ansible runs every task of every host in a worker process forked from the main one. A worker that
templates anything with a filter (`| bool`, `| default`, ...) first loads every filter plugin on
the configured paths (about 200, ours included) unless its parent had already loaded them; the main
process never templates a filter itself, so each worker paid that again: about 0.1 s per task, a
tenth of a no-op converge (docs/converge-speed.md has the figures). Loading them here, before the
first play, lets every worker inherit them. It prints nothing and changes no result.

Enabled by ansible.cfg (callbacks_enabled); without it runs are only slower.
"""

from __future__ import annotations

from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import filter_loader, test_loader

DOCUMENTATION = """
name: llm_plugin_preload
type: aggregate
short_description: load the Jinja filter and test plugins once, before workers fork
description:
  - Loads every filter and test plugin in the controller's main process when the playbook starts,
    so the forked worker of each task inherits them instead of loading them again.
requirements: []
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "llm_plugin_preload"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook) -> None:
        for loader in (filter_loader, test_loader):
            for _plugin in loader.all():
                pass
