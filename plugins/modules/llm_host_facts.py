#!/usr/bin/python
"""Ansible module: host facts for preflight (thin adapter over module_utils/llm_host.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: llm_host_facts
short_description: Free disk under model directories and the owners of TCP ports, for preflight
description:
  - Read-only; supports check mode. Run with become so that every socket owner can be seen.
options:
  paths:
    description: Directories whose file system's free space is measured (they need not exist yet).
    type: list
    elements: path
    default: []
  ports:
    description: TCP ports whose listeners are reported with PID, user, executable and systemd unit (never arguments).
    type: list
    elements: int
    default: []
author: LLM toolkit team
"""

EXAMPLES = r"""
- name: Measure disk and ports
  llm_host_facts:
    paths: [/var/lib/ollama]
    ports: [11434]
"""

RETURN = r"""
ansible_facts:
  description: C(llm_host) with C(disks) (path, measured_on, free_mib, directories) and C(ports) (port -> listeners).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_gpu import HostFiles
from ansible.module_utils.llm_host import free_mib, port_listeners


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path", "default": []},
            "ports": {"type": "list", "elements": "int", "default": []},
        },
        supports_check_mode=True,
    )
    files = HostFiles()
    facts = {
        "disks": [free_mib(path) for path in module.params["paths"]],
        "ports": {str(port): port_listeners(files, port) for port in module.params["ports"]},
    }
    module.exit_json(changed=False, ansible_facts={"llm_host": facts})


if __name__ == "__main__":
    main()
