"""Helpers of the host verifiers: what the roles recorded on each host (imported by the checks)."""

import json

FACTS_DIR = "/etc/ansible/facts.d"
BACKENDS = ["vllm", "ollama"]


def local_fact(host, name: str) -> dict | None:
    fact = host.file(f"{FACTS_DIR}/{name}.fact")
    if not fact.exists:
        return None
    return json.loads(fact.content_string)


def vllm_api_key(host) -> str:
    """The key vllm.service reads (root-only file), or an empty string."""
    with host.sudo():
        env = host.file("/etc/vllm/vllm.env")
        text = env.content_string if env.exists else ""
    for line in text.splitlines():
        if line.startswith("VLLM_API_KEY="):
            return line.split("=", 1)[1].strip()
    return ""
