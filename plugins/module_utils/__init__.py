"""Code Ansible ships to hosts with the toolkit's modules (also importable as llm_toolkit.host)."""
