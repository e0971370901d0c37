"""The LLM inference host toolkit's Python: what runs on the controller, and on hosts from a wheel.

Filter and action plugins import it; `plugins/module_utils` (exposed here as `llm_toolkit.host`)
keeps only what Ansible modules run on hosts.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llm-toolkit")
except PackageNotFoundError:  # pragma: no cover - only when imported from a source tree
    __version__ = "0+unknown"
