"""Controller-side checks of the ollama role, each one line naming what went wrong and the fix."""

from __future__ import annotations


def warm_up_refusal(model: str, status: int, error: str, running: list[dict], accelerator: str) -> str:
    """Why the warm-up of `model` failed ("" when it is loaded where it should be).

    status, error: the answer to POST /api/generate; running: the entries of GET /api/ps for the
    model's digest; accelerator: gpu (the model must be in GPU memory) or cpu.
    """
    if status != 200 or not running:
        what = f"did not load: {error}".rstrip(": ") if status != 200 else "is not in /api/ps after loading"
        return (
            f"{model} {what}; expected Ollama to load it; fix: read journalctl -u ollama (on a GPU host: driver "
            "550 or newer, /dev/nvidia* present)"
        )
    if accelerator != "cpu" and int(running[0].get("size_vram") or 0) <= 0:
        return (
            f"{model} loaded on the CPU (size_vram 0 in /api/ps); expected it in GPU memory on a GPU host; fix: read "
            "journalctl -u ollama (driver 550 or newer, /dev/nvidia* present), or set llm_accelerator: cpu"
        )
    return ""


# The environment keys the ollama role sets, each with the variable that sets it instead.
# ollama_extra_environment may not hold them: OLLAMA_HOST=0.0.0.0 there would bypass the loopback check.
OWNED_OLLAMA_KEYS = {
    "OLLAMA_HOST": "ollama_host and ollama_port (anything but loopback needs ollama_auth_front_end)",
    "OLLAMA_MODELS": "ollama_models_dir",
    "OLLAMA_NUM_PARALLEL": "ollama_num_parallel",
    "OLLAMA_KEEP_ALIVE": "ollama_keep_alive",
    "OLLAMA_MAX_LOADED_MODELS": "ollama_max_loaded_models",
    "OLLAMA_FLASH_ATTENTION": "ollama_flash_attention",
    "OLLAMA_KV_CACHE_TYPE": "ollama_kv_cache_type",
    "OLLAMA_CONTEXT_LENGTH": "ollama_context_length",
    "OLLAMA_LOAD_TIMEOUT": "ollama_load_timeout",
    "OLLAMA_NOPRUNE": "nothing (the role keeps pruning on)",
    "HOME": "ollama_home",
}


def owned_key_refusals(environment: object, variable: str = "ollama_extra_environment") -> list[str]:
    """One line per key of environment that the role owns: the key and the variable to set instead."""
    if environment is None:
        return []
    if not isinstance(environment, dict):
        return [f"{variable} is {type(environment).__name__}; expected a mapping such as {{OLLAMA_SCHED_SPREAD: '1'}}"]
    refusals = []
    for key in environment:
        name = str(key).strip().upper()
        if name in OWNED_OLLAMA_KEYS:
            refusals.append(
                f"{variable} has {name} (set by the role); expected only keys the role does not own; "
                f"fix: set {OWNED_OLLAMA_KEYS[name]} instead"
            )
    return refusals
