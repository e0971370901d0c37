#!/usr/bin/python
"""Ansible module: drain a gateway server for a reason, or bring it back (module_utils/llm_haproxy.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: llm_gateway_server
short_description: Drain or enable a server of the gateway's HAProxy, one reason at a time
description:
  - A server drained for several reasons (an upgrade and a health probe) comes back only when every reason is
    cleared; each component clears only its own reason. The reasons are files under I(state_dir).
  - C(state=reconciled) drains again every server that has a reason recorded (HAProxy forgets its runtime
    state when it restarts). C(state=queried) changes nothing and returns every server's state.
  - Supports check mode.
options:
  server:
    description: The server of the backend (vllm or ollama). Not used with state=reconciled.
    type: str
  backend:
    description: The HAProxy backend.
    type: str
    default: llm
  reason:
    description: Why (letters, digits, '.', '-', '_'; e.g. upgrade, gpu-health, operator).
    type: str
  state:
    description: drained (add the reason), enabled (clear it), reconciled (apply the recorded reasons).
    type: str
    choices: [drained, enabled, reconciled, queried]
    required: true
  wait_idle_s:
    description: With state=drained, seconds to wait for the requests under way on the server to finish.
    type: int
    default: 0
  socket:
    description: HAProxy's master CLI socket (commands go to the current worker), or a stats socket.
    type: path
    default: /run/haproxy/master.sock
  state_dir:
    description: Where the reasons are kept.
    type: path
    default: /var/lib/llm-toolkit/gateway
author: LLM toolkit team
"""

EXAMPLES = r"""
- name: Take vLLM out of rotation for the upgrade
  llm_gateway_server:
    server: vllm
    reason: upgrade
    state: drained
    wait_idle_s: 120
"""

RETURN = r"""
reasons:
  description: The reasons the server is out of rotation after this run (empty when it serves).
  returned: with state drained or enabled
  type: list
drained:
  description: Whether the server is out of rotation (drained or enabled), or the servers drained (reconciled).
  returned: always
  type: raw
servers:
  description: With state queried, each server ("backend/server") with its status (UP, DOWN, DRAIN, ...),
    the requests under way on it (current) and its reasons to be out of rotation.
  returned: with state queried
  type: dict
in_flight:
  description: Requests still under way on the server when the wait ended.
  returned: with state drained and wait_idle_s
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_haproxy import GatewayError, describe, reconcile, set_reason, wait_idle


def main():
    module = AnsibleModule(
        argument_spec={
            "server": {"type": "str"},
            "backend": {"type": "str", "default": "llm"},
            "reason": {"type": "str"},
            "state": {"type": "str", "required": True, "choices": ["drained", "enabled", "reconciled", "queried"]},
            "wait_idle_s": {"type": "int", "default": 0},
            "socket": {"type": "path", "default": "/run/haproxy/master.sock"},
            "state_dir": {"type": "path", "default": "/var/lib/llm-toolkit/gateway"},
        },
        required_if=[("state", "drained", ("server", "reason")), ("state", "enabled", ("server", "reason"))],
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["state"] == "queried":
            module.exit_json(changed=False, servers=describe(params["socket"], params["state_dir"]))
        if params["state"] == "reconciled":
            module.exit_json(**reconcile(params["socket"], params["state_dir"], module.check_mode))
        result = set_reason(
            params["socket"],
            params["state_dir"],
            params["backend"],
            params["server"],
            params["reason"],
            present=params["state"] == "drained",
            check_mode=module.check_mode,
        )
        if params["state"] == "drained" and params["wait_idle_s"] > 0 and not module.check_mode:
            result["in_flight"] = wait_idle(
                params["socket"], params["backend"], params["server"], params["wait_idle_s"]
            )
    except (GatewayError, OSError) as error:
        module.fail_json(msg=str(error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
