"""The llm_plugin_preload callback: Jinja plugins are loaded once in the main process, before workers fork."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter with the repository's ansible.cfg, as ansible-playbook would.
PROBE = """
import json
from ansible.plugins.loader import callback_loader, filter_loader, init_plugin_loader, test_loader
init_plugin_loader()
def loaded():
    return {'filters': sorted(filter_loader._cached_non_collection_wrappers),
            'tests': sorted(test_loader._cached_non_collection_wrappers)}
before = loaded()
callback = callback_loader.get('llm_plugin_preload')
if callback is not None:
    callback.v2_playbook_on_start(None)
print(json.dumps({'found': callback is not None, 'before': before, 'after': loaded()}))
"""


def probe(**env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), **env},
        check=True,
    )
    return json.loads(result.stdout)


def test_the_callback_loads_every_filter_and_test_before_the_first_play():
    state = probe()
    assert state["found"]
    assert state["before"] == {"filters": [], "tests": []}  # nothing loaded them before it: the workers would
    assert {"bool", "default", "llm_backend_record", "llm_verify_lines"} <= set(state["after"]["filters"])
    assert "version" in state["after"]["tests"]


def test_ansible_cfg_enables_it_from_the_repositorys_callback_directory():
    listing = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-config")), "dump", "--only-changed", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        check=True,
    )
    settings = {entry["name"]: entry["value"] for entry in json.loads(listing.stdout) if "name" in entry}
    assert settings["CALLBACKS_ENABLED"] == ["llm_plugin_preload"]
    assert settings["DEFAULT_CALLBACK_PLUGIN_PATH"] == [str(REPO / "plugins/callback")]
