"""Filters for the .env of the RAG app (thin adapters over llm_toolkit.envfile).

{{ {'LLM_BACKEND': 'vllm', 'VLLM_API_KEY': key} | llm_dotenv }}           the file's text
{{ {'LLM_BACKEND': 'vllm'} | llm_dotenv_errors }}                         refusals, naming keys only
{{ ansible_facts['ansible_local'] | llm_recorded_backends }}              the backends the service roles
                                                                          recorded (llm_vllm, llm_ollama), vLLM first
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from llm_toolkit.envfile import DotenvError, encode_value, render

DOCUMENTATION = """
name: llm_env_filters
short_description: python-dotenv encoding of the app's .env
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


# Local facts the service roles write, in the app's order of preference.
BACKEND_FACTS = ("llm_vllm", "llm_ollama")


def recorded_backends(local_facts):
    return [local_facts[name] for name in BACKEND_FACTS if name in (local_facts or {})]


class FilterModule:
    def filters(self):
        return {
            "llm_dotenv": dotenv,
            "llm_dotenv_errors": dotenv_errors,
            "llm_recorded_backends": recorded_backends,
        }
