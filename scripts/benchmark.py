#!/usr/bin/env python3
"""scripts/benchmark.py: the benchmark of one LLM backend on the RAG app's Italian queries (llm_toolkit.benchmark)."""

from _entry import run

run("benchmark", __file__)
