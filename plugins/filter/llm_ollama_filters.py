"""Filters for the ollama role (thin adapters over llm_toolkit.host.llm_ollama).

{{ ['mixtral', 'gemma2:2b'] | llm_ollama_names }}         ['mixtral:latest', 'gemma2:2b']
{{ tags_answer | llm_ollama_digests }}                     {name: digest} from GET /api/tags
{{ 'gemma2:2b' | llm_ollama_download_gb(overrides) }}      GB to download (override, catalog, else 0)
{{ 'mixtral' | llm_ollama_progress(progress_json) }}        one line: percent and bytes of a pull
{{ 'mixtral:8x7b' | llm_ollama_entry }}                    what the catalog knows of a tag
{{ 'mixtral' | llm_ollama_manifest_path }}                 registry.ollama.ai/library/mixtral/latest
{{ 3100000 | llm_ollama_bytes }}                           3.1 MB
{{ model | llm_ollama_warm_up_refusal(status, error, running, accelerator) }}  why the warm-up failed, or ""
{{ ollama_extra_environment | llm_ollama_owned_keys }}    one line per key the role owns (OLLAMA_HOST, ...): []
"""

from __future__ import annotations

import json

from llm_toolkit.host.llm_ollama import describe_progress, human_bytes, manifest_path, model_digests, normalize_name

from llm_toolkit.catalog import load_models, ollama_entry
from llm_toolkit.ollama import owned_key_refusals, warm_up_refusal

DOCUMENTATION = """
name: llm_ollama_filters
short_description: Ollama model names, digests, download sizes and pull progress
"""


def names(tags):
    return [normalize_name(str(tag)) for tag in tags]


def digests(tags_answer):
    return model_digests(tags_answer if isinstance(tags_answer, dict) else {})


def download_gb(tag, overrides=None):
    overrides = overrides or {}
    if tag in overrides:
        return float(overrides[tag])
    known = ollama_entry(load_models(), str(tag))
    return float(known["download_gb"] or 0) if known["key"] else 0.0


def progress(model, progress_json):
    try:
        data = json.loads(progress_json) if progress_json else {}
    except ValueError:
        data = {}
    return describe_progress(str(model), data if isinstance(data, dict) else {})


def manifest(tag):
    return manifest_path(str(tag))


def bytes_text(count):
    return human_bytes(float(count))


def entry(tag):
    return ollama_entry(load_models(), str(tag))


def warm_up(model, status, error, running, accelerator):
    return warm_up_refusal(str(model), int(status or 0), str(error or ""), list(running or []), str(accelerator))


class FilterModule:
    def filters(self):
        return {
            "llm_ollama_names": names,
            "llm_ollama_digests": digests,
            "llm_ollama_download_gb": download_gb,
            "llm_ollama_progress": progress,
            "llm_ollama_entry": entry,
            "llm_ollama_manifest_path": manifest,
            "llm_ollama_bytes": bytes_text,
            "llm_ollama_warm_up_refusal": warm_up,
            "llm_ollama_owned_keys": owned_key_refusals,
        }
