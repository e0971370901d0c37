"""The tiny test model, built once per recipe and cached outside the clone (test-only).

The cache key is a hash of the build script and its requirements, so changing either builds
a new model; an unchanged recipe reuses the cached one in no time. The build venv is cached
the same way, keyed by the requirements alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_tiny_model.py"
REQUIREMENTS = HERE / "requirements.txt"


def cache_root() -> Path:
    """$LLM_TEST_CACHE, else the lab's cache when writable, else ~/.cache/llm-toolkit."""
    if os.environ.get("LLM_TEST_CACHE"):
        return Path(os.environ["LLM_TEST_CACHE"])
    lab_home = Path(os.environ.get("LAB_HOME", "/var/cache/llm-lab"))
    if os.access(lab_home if lab_home.exists() else lab_home.parent, os.W_OK):
        return lab_home
    return Path.home() / ".cache" / "llm-toolkit"


def _key(*files: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{tail}")


@contextlib.contextmanager
def cache_lock(directory: Path, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock in directory (created if missing) while a cached item is checked or built."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_venv(root: Path) -> Path:
    venv = root / "venvs" / f"model-build-{_key(REQUIREMENTS)}"
    if not (venv / ".installed").exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "creating the model-build venv")
        _run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "-r", str(REQUIREMENTS)], "installing torch/transformers"
        )
        (venv / ".installed").touch()
    return venv


def tiny_mixtral(root: Path | None = None) -> Path:
    """The directory of the tiny Mixtral model, built when this recipe has not been built yet."""
    root = root or cache_root()
    target = root / "models" / f"tiny-mixtral-{_key(BUILD_SCRIPT, REQUIREMENTS)}"
    with cache_lock(target.parent):
        if not (target / "build.json").exists():
            venv = build_venv(root)
            work = target.with_name(target.name + ".tmp")
            shutil.rmtree(work, ignore_errors=True)
            _run([str(venv / "bin" / "python"), str(BUILD_SCRIPT), str(work)], "building the tiny model")
            work.rename(target)
    return target


if __name__ == "__main__":
    print(tiny_mixtral())
