"""Helpers of the host verifiers: the shared settings as a host sees them, and what the roles recorded on it."""

import json
from pathlib import Path

import yaml

from llm_toolkit.backends import validate
from llm_toolkit.envfile import decode_systemd_value

REPO = Path(__file__).resolve().parents[2]
# The settings every role shares (roles/llm_defaults), before the inventory overrides them.
SHARED = yaml.safe_load((REPO / "roles" / "llm_defaults" / "defaults" / "main.yml").read_text())
BACKENDS = ["vllm", "ollama"]


def setting(host, name: str):
    """A shared setting (roles/llm_defaults) as this host's inventory sets it, else its default."""
    return host.ansible.get_variables().get(name, SHARED[name])


def local_fact(host, name: str) -> dict | None:
    fact = host.file(f"{setting(host, 'llm_facts_dir')}/{name}.fact")
    if not fact.exists:
        return None
    return json.loads(fact.content_string)


def backend_record(host, backend: str) -> dict | None:
    """The backend's record (docs/backend-record.md), checked against the contract; None where not deployed."""
    record = local_fact(host, f"llm_{backend}")
    return None if record is None else validate(record, f"llm_{backend}.fact")


def vllm_api_key(host) -> str:
    """The key vllm.service reads (root-only file), or an empty string."""
    with host.sudo():
        env = host.file("/etc/vllm/vllm.env")
        text = env.content_string if env.exists else ""
    for line in text.splitlines():
        if line.startswith("VLLM_API_KEY="):
            return decode_systemd_value(line.split("=", 1)[1])
    return ""


def apt_list(dump: str, key: str) -> list[str]:
    """The entries of an apt configuration list, from `apt-config dump` output."""
    prefix = f"{key}:: "
    return [line[len(prefix) :].rstrip(";").strip('"') for line in dump.splitlines() if line.startswith(prefix)]
