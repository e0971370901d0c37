"""Filters for the host firewall (thin adapters over llm_toolkit.firewall).

{{ llm_firewall_allow | llm_firewall_allow_errors }}   refusals, one line per bad entry
{{ llm_firewall_allow | llm_firewall_allow_rules }}    the entries as {port, proto, family, source}
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from llm_toolkit.firewall import FirewallInputError, allow_errors, allow_rules

DOCUMENTATION = """
name: llm_firewall_filters
short_description: The host firewall's extra openings (llm_firewall_allow), checked and normalised
"""


def rules(entries):
    try:
        return allow_rules(list(entries))
    except (FirewallInputError, TypeError) as error:
        raise AnsibleFilterError(str(error)) from None


class FilterModule:
    def filters(self):
        return {
            "llm_firewall_allow_errors": allow_errors,
            "llm_firewall_allow_rules": rules,
        }
