"""Filters for the .env of the RAG app (thin adapters over llm_toolkit.envfile).

{{ {'LLM_BACKEND': 'vllm', 'VLLM_API_KEY': key} | llm_dotenv }}           the file's text
{{ {'LLM_BACKEND': 'vllm'} | llm_dotenv_errors }}                         refusals, naming keys only
{{ records | llm_ready_backends(probe_results, preference) }}             the records that answered with their model
{{ ready | llm_app_env_pairs(vllm_api_key, timeout_s, extra, gateway) }}  the app's settings
{{ gateway | llm_fleet_app_env_pairs(model, timeout_s, extra) }}          an llm_apps host's, for the fleet gateway
{{ 'VLLM_API_KEY' | llm_systemd_env(key) }}                                one line of a systemd EnvironmentFile=
{{ {'VLLM_API_KEY': key} | llm_systemd_env_errors }}                       refusals, naming keys only
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from llm_toolkit.envfile import (
    DotenvError,
    app_env_pairs,
    encode_value,
    fleet_app_env_pairs,
    ready_backends,
    render,
    systemd_errors,
    systemd_line,
)

DOCUMENTATION = """
name: llm_env_filters
short_description: python-dotenv encoding of the app's .env, systemd's EnvironmentFile= encoding
"""


def dotenv(pairs, header=""):
    try:
        return render(dict(pairs), header)
    except DotenvError as error:
        raise AnsibleFilterError(str(error)) from None


def dotenv_errors(pairs):
    errors = []
    for key, value in dict(pairs).items():
        try:
            encode_value(key, value)
        except DotenvError as error:
            errors.append(str(error))
    return errors


def ready(records, probe_results, preference):
    """probe_results: the uri module's loop results, one per record ({status, json})."""
    answers = [{"status": result.get("status"), "json": result.get("json")} for result in probe_results]
    return ready_backends(list(records), answers, list(preference))


def pairs(ready_records, vllm_api_key, timeout_s, extra=None, gateway=None):
    try:
        return app_env_pairs(list(ready_records), vllm_api_key, timeout_s, extra or {}, gateway or None)
    except DotenvError as error:
        raise AnsibleFilterError(str(error)) from None


def systemd_env(key, value):
    try:
        return systemd_line(str(key), value)
    except DotenvError as error:
        raise AnsibleFilterError(str(error)) from None


class FilterModule:
    def filters(self):
        return {
            "llm_dotenv": dotenv,
            "llm_dotenv_errors": dotenv_errors,
            "llm_ready_backends": ready,
            "llm_app_env_pairs": pairs,
            "llm_fleet_app_env_pairs": fleet_app_env_pairs,
            "llm_systemd_env": systemd_env,
            "llm_systemd_env_errors": lambda pairs: systemd_errors(dict(pairs)),
        }
