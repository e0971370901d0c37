#!/usr/bin/python
"""Ansible module: the toolkit's one generator of secrets on a host (adapter over module_utils/llm_secret.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: llm_secret
short_description: Generate a secret once per host into a root-only file, rotate it on demand, or read it
description:
  - The one way the toolkit makes secrets (docs/security.md, "Secrets the toolkit generates"). The file is
    owned by root with mode 0600, its directory 0700; the secret is 32 random bytes, URL-safe base64.
  - Idempotent; supports check mode. Run the task with C(no_log) when return_value is true.
options:
  path:
    description: The secret's file (absolute), e.g. /etc/llm-toolkit/secrets/vllm_api_key.
    type: path
    required: true
  rotate:
    description: Replace the secret with a new one (the old one is overwritten, no copy is kept).
    type: bool
    default: false
  create:
    description: Make the secret when the file is missing or empty; false only reads it (a consumer).
    type: bool
    default: true
  bytes:
    description: Random bytes in a new secret (16 or more).
    type: int
    default: 32
  return_value:
    description: Return the secret as C(value) (the task must use no_log).
    type: bool
    default: false
author: LLM toolkit team
"""

EXAMPLES = r"""
- name: Ensure the API key exists
  llm_secret:
    path: /etc/llm-toolkit/secrets/vllm_api_key
    rotate: "{{ vllm_api_key_rotate | bool }}"
    return_value: true
  register: generated_key
  no_log: true
"""

RETURN = r"""
value:
  description: The secret (only with return_value).
  returned: when return_value
  type: str
created:
  description: Whether this run made the secret.
  returned: always
  type: bool
rotated:
  description: Whether this run replaced an existing secret.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_secret import SecretError, ensure


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "rotate": {"type": "bool", "default": False},
            "create": {"type": "bool", "default": True},
            "bytes": {"type": "int", "default": 32},
            "return_value": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = ensure(
            params["path"],
            rotate=params["rotate"],
            create=params["create"],
            nbytes=params["bytes"],
            check_mode=module.check_mode,
        )
    except (SecretError, OSError) as error:
        module.fail_json(msg=f"{error}; fix: converge the role that makes it, or set the secret in the inventory")
    value = result.pop("value")
    if params["return_value"]:
        result["value"] = value
    module.exit_json(path=params["path"], **result)


if __name__ == "__main__":
    main()
