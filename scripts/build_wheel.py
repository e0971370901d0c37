#!/usr/bin/env python3
"""Build the llm_toolkit wheel the roles install on hosts, and record its sha256.

    .venv/bin/python scripts/build_wheel.py [--dist DIR]

Writes DIR/llm_toolkit-<version>-py3-none-any.whl (built from a clean tree, with fixed file
times, so the same sources give the same bytes) and DIR/llm-toolkit.json: {"wheel": NAME,
"sha256": HEX, "version": VERSION}, which the roles read to check the file on each host before
installing it. `make wheel` runs it when a source changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Zip files cannot hold times before 1980: every file of the wheel gets this one.
FIXED_TIME = "315532800"


def build(dist: Path) -> dict:
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("llm_toolkit-*.whl"):
        old.unlink()
    # setuptools builds in ./build and would pack modules left there by an earlier build.
    shutil.rmtree(REPO / "build", ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", scratch, "."],
            check=True,
            cwd=REPO,
            env=dict(os.environ, SOURCE_DATE_EPOCH=FIXED_TIME, PIP_DISABLE_PIP_VERSION_CHECK="1"),
        )
        (wheel,) = Path(scratch).glob("llm_toolkit-*.whl")
        target = dist / wheel.name
        shutil.move(wheel, target)
    shutil.rmtree(REPO / "build", ignore_errors=True)
    record = {
        "wheel": target.name,
        "version": (REPO / "VERSION").read_text().strip(),
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
    }
    (dist / "llm-toolkit.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=REPO / "dist")
    args = parser.parse_args()
    record = build(args.dist)
    print(f"{args.dist / record['wheel']} sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
