#!/usr/bin/env python3
"""scripts/docs.py [--check]: every role's README.md and sample inventory file, generated (llm_toolkit.roledocs)."""

import sys
from pathlib import Path

try:
    from llm_toolkit.roledocs import main
except ImportError as error:
    fix = "run make venv, then .venv/bin/python scripts/docs.py"
    sys.stderr.write(f"scripts/docs.py: cannot import llm_toolkit ({error}); fix: {fix}\n")
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main(root=Path(__file__).resolve().parents[1]))
