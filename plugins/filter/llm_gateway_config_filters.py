"""Filters that build the gateway's HAProxy configuration (llm_toolkit.gateway_config).

{{ records | llm_gateway_servers(order) }}               servers of the backend `llm`, primary first
{{ key | llm_gateway_client_digest }}                     sha256 of the client's Authorization header
{{ max_request_bytes | llm_gateway_buffer_size(max_header_bytes) }}  HAProxy's tune.bufsize
{{ inventory_hostname | llm_gateway_certificate_subjects(ansible_host, llm_gateway_host) }}  names, addresses
{{ value | llm_haproxy_log_format_word }}                   one quoted word of haproxy.cfg, as log-format text
{{ inventory_hostname | llm_gateway_fleet_members(hosts_settings, defaults) }}  a fleet gateway's servers, errors
{{ inventory_hostname | llm_app_gateway_url(fleet_host, fleet_record, fleet_hostvars) }}  an app's URL of it, errors
{{ inventory_hostname | llm_haproxy_name }}               the host's server name in a fleet gateway
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from llm_toolkit.gateway_config import (
    app_gateway_url,
    buffer_size,
    certificate_subjects,
    client_digest,
    fleet_members,
    haproxy_name,
    log_format_word,
    servers,
)

DOCUMENTATION = """
name: llm_gateway_config_filters
short_description: The gateway's HAProxy servers, client key digest and buffer size
"""


def gateway_client_digest(key):
    try:
        return client_digest(str(key))
    except ValueError as error:
        raise AnsibleFilterError(f"llm_gateway_client_digest: {error}") from None


def haproxy_log_format_word(value):
    try:
        return log_format_word(str(value))
    except ValueError as error:
        raise AnsibleFilterError(f"llm_haproxy_log_format_word: {error}") from None


class FilterModule:
    def filters(self):
        return {
            "llm_gateway_servers": servers,
            "llm_gateway_client_digest": gateway_client_digest,
            "llm_gateway_buffer_size": buffer_size,
            "llm_haproxy_log_format_word": haproxy_log_format_word,
            "llm_gateway_certificate_subjects": certificate_subjects,
            "llm_gateway_fleet_members": fleet_members,
            "llm_app_gateway_url": app_gateway_url,
            "llm_haproxy_name": haproxy_name,
        }
