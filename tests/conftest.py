"""Shared test setup: make the lab's and the stand-ins' Python importable."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (
    REPO / "scripts",
    REPO / "plugins" / "module_utils",
    REPO / "plugins" / "filter",
    REPO / "tests" / "standins" / "nvidia_smi",
):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
