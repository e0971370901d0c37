#!/usr/bin/env python3
"""scripts/plan.py: the serving planner, the smallest tensor-parallel size that fits (llm_toolkit.plan)."""

from _entry import run

run("plan", __file__)
