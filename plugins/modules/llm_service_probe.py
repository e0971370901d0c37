#!/usr/bin/python
"""Ansible module: one readiness probe of a served model and its unit (module_utils/llm_probe.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: llm_service_probe
short_description: Ask an OpenAI-compatible API whether it lists a model, and systemd whether it gave up on the unit
description:
  - One probe, meant for a task's C(until) loop (which shows each retry as progress). The loop ends when
    C(listed) is true, or when C(unit_gave_up) is true (the unit hit its start limit and systemd will not
    start it again, so waiting longer cannot help).
  - Changes nothing; supports check mode.
options:
  url:
    description: The API's model list, e.g. http://127.0.0.1:8000/v1/models.
    type: str
    required: true
  api_key:
    description: Sent as a bearer token when not empty.
    type: str
    default: ""
    no_log: true
  model:
    description:
      - The served model name the list must hold.
      - Empty for an endpoint that lists no models (Ollama's C(/api/version)); C(listed) is then true when the
        API answers 200.
    type: str
    default: ""
  unit:
    description: The systemd unit serving the API; empty to skip its state.
    type: str
    default: ""
  timeout_s:
    description: Seconds to wait for the API's answer.
    type: int
    default: 10
author: LLM toolkit team
"""

EXAMPLES = r"""
- name: Wait until vLLM lists the model, or systemd gives up on it
  llm_service_probe:
    url: http://127.0.0.1:8000/v1/models
    api_key: "{{ key }}"
    model: mixtral
    unit: vllm.service
  register: probe
  until: probe.listed or probe.unit_gave_up
  retries: 450
  delay: 2
"""

RETURN = r"""
status:
  description: The API's HTTP status (0 when it did not answer).
  returned: always
  type: int
models:
  description: The model ids the API listed.
  returned: always
  type: list
version:
  description: The C(version) the answer's body names (Ollama's C(/api/version), vLLM's C(/version)); empty for none.
  returned: always
  type: str
error:
  description: Why the API did not answer 200 (empty when it did).
  returned: always
  type: str
listed:
  description: Whether the API answered 200 with the model in its list (with no model named, whether it answered 200).
  returned: always
  type: bool
unit:
  description: The unit's ActiveState, SubState, Result and NRestarts (empty where systemctl cannot tell).
  returned: always
  type: dict
unit_gave_up:
  description: Whether systemd stopped starting the unit (ActiveState=failed).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_probe import probe


def main():
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "api_key": {"type": "str", "default": "", "no_log": True},
            "model": {"type": "str", "default": ""},
            "unit": {"type": "str", "default": ""},
            "timeout_s": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )
    params = module.params
    module.exit_json(
        changed=False,
        **probe(params["url"], params["api_key"], params["model"], params["unit"], params["timeout_s"]),
    )


if __name__ == "__main__":
    main()
