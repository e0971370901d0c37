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
