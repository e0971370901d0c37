"""Secrets on a real host (a one-host lab of its own, no converge needed): the generator is idempotent
and rotates in place, and systemd's own EnvironmentFile= parser reads back every value the encoder of
vllm.env writes, byte for byte."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

from llm_toolkit.envfile import systemd_line
from tests.integration.conftest import REPO, lab, leftovers, require_lab
from tests.unit.test_secrets import TRICKY

NAME = "secrets"
HOST = f"{NAME}1"
KEY_FILE = "/etc/llm-toolkit/secrets/vllm_api_key"


@pytest.fixture(scope="module")
def secrets_lab():
    require_lab()
    lab(NAME, "down")
    try:
        lab(NAME, "up", "1")
        inventory = lab(NAME, "inventory").stdout.strip()
        yield inventory, testinfra.get_host(f"ansible://{HOST}", ansible_inventory=inventory)
    finally:
        lab(NAME, "down")
    assert leftovers(NAME) == []


def adhoc(inventory: str, module: str, args: dict, *options: str) -> tuple[int, dict, str]:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible")),
            HOST,
            "-i",
            inventory,
            "-m",
            module,
            "-a",
            json.dumps(args),
            "-o",
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        check=False,
    )
    payload = result.stdout.split("=>", 1)[1].strip() if "=>" in result.stdout else "{}"
    return result.returncode, json.loads(payload), result.stdout + result.stderr


def test_the_generated_key_is_made_once_root_only_and_rotates_in_place(secrets_lab):
    inventory, host = secrets_lab
    rc, first, output = adhoc(inventory, "llm_secret", {"path": KEY_FILE})
    assert rc == 0 and first["changed"] and first["created"], output
    with host.sudo():
        key = host.file(KEY_FILE).content_string.strip()
        assert (host.file(KEY_FILE).mode, host.file(KEY_FILE).user) == (0o600, "root")
        assert host.file(os.path.dirname(KEY_FILE)).mode == 0o700
    assert len(key) == 43
    rc, again, output = adhoc(inventory, "llm_secret", {"path": KEY_FILE})
    assert rc == 0 and not again["changed"], output
    assert key not in output
    rc, rotated, output = adhoc(inventory, "llm_secret", {"path": KEY_FILE, "rotate": True})
    assert rc == 0 and rotated["rotated"], output
    # The old key goes to grep in a root-only file (copy's content is no_log): on grep's command line,
    # the module call that runs it would log it to the journal, which the search then finds.
    rc, _, output = adhoc(inventory, "ansible.builtin.copy", {"dest": "/root/old-key", "content": key, "mode": "0600"})
    assert rc == 0, output
    with host.sudo():
        new = host.file(KEY_FILE).content_string.strip()
        left = host.run("grep -rlF -f /root/old-key /etc /var /tmp /run || true").stdout.split()
    assert new != key and len(new) == 43
    assert left == [], f"the old key is still in {left}"


DUMP = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('K')}))"


def test_systemd_reads_back_every_value_vllm_env_writes(secrets_lab):
    inventory, host = secrets_lab
    values = {f"K{index}": value for index, value in enumerate(TRICKY)}
    env_file = "".join(systemd_line(key, value) + "\n" for key, value in values.items())
    unit = (
        "[Service]\nType=oneshot\nEnvironmentFile=/etc/envtest.env\n"
        "ExecStart=/usr/bin/python3 /usr/local/bin/envdump.py\nStandardOutput=file:/run/envtest.json\n"
    )
    for dest, content in (
        ("/etc/envtest.env", env_file),
        ("/usr/local/bin/envdump.py", DUMP + "\n"),
        ("/etc/systemd/system/envtest.service", unit),
    ):
        rc, _, output = adhoc(inventory, "ansible.builtin.copy", {"dest": dest, "content": content, "mode": "0600"})
        assert rc == 0, output
    with host.sudo():
        started = host.run("systemctl daemon-reload && systemctl start envtest.service")
        assert started.rc == 0, started.stderr
        read_back = json.loads(host.file("/run/envtest.json").content_string)
    assert read_back == values
