#!/usr/bin/env python3
"""scripts/smoke_test.py: the Italian smoke test of one LLM backend (llm_toolkit.smoke_test)."""

from _entry import run

run("smoke_test", __file__)
