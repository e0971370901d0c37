"""The model catalog and its checks: model keys, Ollama tags, checkpoints.

The data lives beside this module: models.yml (the models), serving.yml (what the planner applies
to every model) and gates.yml (the preflight gates). It needs PyYAML (a dependency of ansible-core
on the controller, and pinned in the hosts' helper venv for the benchmark).
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path

import yaml

from llm_toolkit.planner import FORMATS, PlanError

CATALOG_DIR = resources.files(__name__)
ARCHITECTURE_FROM_CONFIG = {
    "num_layers": ("num_hidden_layers",),
    "hidden_size": ("hidden_size",),
    "num_attention_heads": ("num_attention_heads",),
    "intermediate_size": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "max_context": ("max_position_embeddings",),
}


def load_models(path: Path | None = None) -> dict:
    return yaml.safe_load((path or CATALOG_DIR / "models.yml").read_text())


def load_serving(path: Path | None = None) -> dict:
    return yaml.safe_load((path or CATALOG_DIR / "serving.yml").read_text())


def load_gates(path: Path | None = None) -> dict:
    return yaml.safe_load((path or CATALOG_DIR / "gates.yml").read_text())


def get_model(models: dict, key: str) -> dict:
    if key not in models:
        raise PlanError(f"--model {key!r} is not in the catalog; expected one of: {', '.join(sorted(models))}")
    return models[key]


def resolve_ollama_tag(models: dict, tag: str) -> tuple[str, str | None]:
    """(the tag to pull, a warning or None). Tags people write that are not real map to the real one."""
    for key, entry in models.items():
        ollama = entry.get("ollama") or {}
        if tag in (ollama.get("aliases") or []):
            return ollama["tag"], (
                f"Ollama tag {tag!r} does not exist; using {ollama['tag']!r}, the catalog's tag for {key}"
            )
    return tag, None


def ollama_entry(models: dict, tag: str) -> dict:
    """What the catalog knows of an Ollama tag: its model, download size, and the real tag to suggest.

    Keys: key (catalog model or None), tag (the real tag), download_gb (None when unknown),
    alias (True when the tag is one people write that does not exist), suggestions (real tags of
    the same model name, the closest first, for an error message).
    """
    name = tag.split(":", 1)[0]
    same_name = [
        entry["ollama"]["tag"]
        for entry in models.values()
        if entry.get("ollama") and entry["ollama"]["tag"].split(":", 1)[0] == name and entry["ollama"]["tag"] != tag
    ]
    suggestions = difflib.get_close_matches(tag, same_name, n=max(1, len(same_name)), cutoff=0)
    for key, entry in models.items():
        ollama = entry.get("ollama") or {}
        if tag == ollama.get("tag") or tag in (ollama.get("aliases") or []):
            return {
                "key": key,
                "tag": ollama["tag"],
                "download_gb": ollama.get("download_gb"),
                "alias": tag != ollama["tag"],
                "suggestions": [ollama["tag"]] if tag != ollama["tag"] else [],
            }
    return {"key": None, "tag": tag, "download_gb": None, "alias": False, "suggestions": suggestions}


def check_checkpoint(models: dict, key: str, fmt: str, repo: str) -> str | None:
    """Refuse a checkpoint vLLM cannot serve as asked; return a note for repos outside the catalog."""
    entry = get_model(models, key)
    formats = entry["formats"]
    for other_fmt, other in formats.items():
        refused = (other.get("refused") or {}).get(repo)
        if refused:
            better = [r for r in [other.get("repo"), *(other.get("alternatives") or [])] if r]
            raise PlanError(
                f"--repo {repo} is refused for {key}: {refused}; use {' or '.join(better) or 'another repository'}"
            )
        if other.get("repo") == repo and other_fmt != fmt:
            if other_fmt == "fp16":
                quantized = formats.get(fmt, {}).get("repo")
                raise PlanError(
                    f"--repo {repo} is an unquantized checkpoint, so --format {fmt} cannot serve it: vLLM does not "
                    f"quantize to {fmt.upper()} at load ('Cannot find the config file for {fmt}'); fix: use "
                    f"{quantized or f'a pre-quantized {fmt.upper()} repository'} with --format {fmt}, or --format fp16 "
                    "without --quantization"
                )
            raise PlanError(
                f"--repo {repo} is the {other_fmt} checkpoint of {key}, not {fmt}; fix: --format {other_fmt}"
            )
    known = {f.get("repo") for f in formats.values()} | {
        alt for f in formats.values() for alt in (f.get("alternatives") or [])
    }
    if repo not in known:
        return f"repository {repo} is not in the catalog: its format and size are taken on trust"
    return None


def entry_from_config_json(path: Path, float16_unsupported_types: list[str]) -> tuple[str, dict, str]:
    """(model key, catalog entry, format) for a local checkpoint, from its config.json.

    The weights size is the sum of the weight files beside config.json, or, when there are
    none, an estimate from the architecture.
    """
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PlanError(
            f"--config-json {path}: cannot read it as JSON ({error}); expected a model's config.json"
        ) from None
    if not isinstance(config, dict):
        raise PlanError(
            f"--config-json {path}: it holds a JSON {type(config).__name__}; expected a model's config.json"
        )
    quant = config.get("quantization_config") or {}
    config = config.get("text_config", config)
    if not isinstance(quant, dict) or not isinstance(config, dict):
        raise PlanError(f"--config-json {path}: quantization_config or text_config is not an object")

    def count(key: str, value) -> int:
        """A positive whole number from the config (sizes, counts), else a one-line PlanError."""
        text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if not text.isdigit() or int(text) <= 0:
            raise PlanError(f"--config-json {path}: {key} is {value!r}; expected a positive whole number")
        return int(text)

    arch = {}
    for name, keys in ARCHITECTURE_FROM_CONFIG.items():
        values = [(key, config[key]) for key in keys if key in config]
        if not values:
            raise PlanError(f"--config-json {path}: no {keys[0]!r}; expected a Hugging Face config.json")
        arch[name] = count(*values[0])
    optional = {
        "num_kv_heads": ("num_key_value_heads", arch["num_attention_heads"]),
        "head_dim": ("head_dim", arch["hidden_size"] // arch["num_attention_heads"]),
        "num_experts": ("num_local_experts", config.get("num_experts") or 1),
        "experts_per_token": ("num_experts_per_tok", 1),
    }
    for name, (key, default) in optional.items():
        arch[name] = count(key, config.get(key) or default)
    arch["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", False))
    method = str(quant.get("quant_method", "")).lower()
    fmt = method if method in FORMATS else "fp16"
    files = [p for p in path.parent.iterdir() if p.suffix in (".safetensors", ".bin")]
    group = quant.get("group_size") or 128
    group = count("quantization_config.group_size", group) if group != -1 else 128  # -1: one group per row
    weights = sum(p.stat().st_size for p in files) if files else estimate_weights_bytes(arch, fmt, group)
    fmt_entry = {"repo": str(path.parent), "gated": False, "weights_gb": round(weights / 1e9, 3), "group_size": group}
    if not files:
        fmt_entry["estimated"] = True
    key = path.parent.name or "local-model"
    entry = {
        "description": f"local checkpoint {path.parent}",
        "architecture": arch,
        "float16_unsupported": config.get("model_type") in float16_unsupported_types,
        "formats": {fmt: fmt_entry},
    }
    return key, entry, fmt


def estimate_weights_bytes(arch: dict, fmt: str, group_size: int = 128) -> int:
    """Bytes of weight files from the architecture: 2 bytes per parameter for fp16; for 4-bit
    formats half a byte per linear-layer weight plus a float16 scale and a 4-bit zero per group,
    with embeddings and the output head left in float16."""
    hidden, layers, head_dim = arch["hidden_size"], arch["num_layers"], arch["head_dim"]
    attention = hidden * head_dim * (2 * arch["num_attention_heads"] + 2 * arch["num_kv_heads"])
    mlp = 3 * hidden * arch["intermediate_size"] * arch.get("num_experts", 1)
    linear = layers * (attention + mlp)
    embeddings = arch["vocab_size"] * hidden * (1 if arch.get("tie_word_embeddings") else 2)
    if fmt == "fp16":
        return 2 * (linear + embeddings)
    return int(linear * (0.5 + 2.5 / group_size) + 2 * embeddings)
