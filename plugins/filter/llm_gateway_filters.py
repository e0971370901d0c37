"""Filter: the gateway's settings checked before anything changes (llm_toolkit.gateway).

{{ settings | llm_gateway_settings_errors(inventory_hostname) }}   one line per refusal ([] when good)
    settings: host, port, api_key, api_key_file, backends, allowed_paths, metrics_host, metrics_port,
    tls_certificate, tls_private_key (the llm_gateway_* variables), vllm_port, ollama_port,
    vllm_enabled, ollama_enabled. Secrets are named in the refusals, never shown.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from llm_toolkit.gateway import settings_errors

DOCUMENTATION = """
name: llm_gateway_filters
short_description: Refusals of the gateway's settings, one line each
"""


def gateway_settings_errors(settings, host):
    if not isinstance(settings, dict):
        raise AnsibleFilterError(f"llm_gateway_settings_errors: expected a dict of settings, got {type(settings)}")
    return settings_errors(dict(settings), str(host))


class FilterModule:
    def filters(self):
        return {"llm_gateway_settings_errors": gateway_settings_errors}
