"""Runs a command of the llm_toolkit package for the thin wrappers in scripts/.

The package is installed into the checkout's .venv by `make venv`. A wrapper started by another
Python (its shebang finds the system python3) hands itself over to .venv/bin/python, so that the
documented commands work with or without the venv on PATH; without a venv it says how to make one.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"


def run(module: str, script: str, **main_kwargs) -> None:
    """Import llm_toolkit.<module> and exit with what its main() returns."""
    try:
        command = importlib.import_module(f"llm_toolkit.{module}")
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("llm_toolkit"):
            raise
        python = VENV / "bin" / "python"
        if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
            os.execv(python, [str(python), script, *sys.argv[1:]])  # noqa: S606 - the checkout's own venv
        sys.exit(f"{Path(script).name}: the llm_toolkit package is not installed; fix: make venv (in {REPO})")
    sys.exit(command.main(**main_kwargs))
