"""Filter: one host's verifier summary as report lines (llm_toolkit.verify).

{{ summary.hosts[inventory_hostname] | default(none) | llm_verify_lines }}  ['ok (16 passed, 0 failed, 2 skipped)', ...]
"""

from __future__ import annotations

from llm_toolkit.verify import host_lines

DOCUMENTATION = """
name: llm_verify_filters
short_description: A host's verifier summary as report lines
"""


def verify_lines(entry, skipped=False):
    return host_lines(dict(entry) if entry else None, skipped=skipped)


class FilterModule:
    def filters(self):
        return {"llm_verify_lines": verify_lines}
