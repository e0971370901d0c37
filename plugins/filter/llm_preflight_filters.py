"""Filter: the preflight report of one host (llm_toolkit.preflight).

{{ ansible_facts['nvidia_gpu'] | llm_preflight_report(ansible_facts['llm_host'], system, settings, host) }}
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from llm_toolkit.catalog import load_gates, load_models, load_serving
from llm_toolkit.preflight import evaluate

DOCUMENTATION = """
name: llm_preflight_filters
short_description: Preflight verdicts per check and per phase for one host
"""


def preflight_report(gpu, probes, system, settings, host):
    try:
        return evaluate(
            str(host),
            dict(gpu),
            dict(probes),
            dict(system),
            dict(settings),
            load_gates(),
            load_models(),
            load_serving(),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise AnsibleFilterError(f"llm_preflight_report: {host}: cannot evaluate ({error!r})") from None


class FilterModule:
    def filters(self):
        return {"llm_preflight_report": preflight_report}
