#!/usr/bin/env python3
"""scripts/verify.py: this checkout's host verifiers (tests/verify), summarised per host (llm_toolkit.verify)."""

from _entry import REPO, run

run("verify", __file__, repo=REPO)
