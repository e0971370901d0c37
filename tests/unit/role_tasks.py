"""Run one of a role's task files on localhost, as the role includes it, with the variables it reads;
and stand-ins for commands (systemctl, journalctl) put first on PATH for such a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: Run the task file as the role includes it
      ansible.builtin.include_tasks: {tasks}
"""


def run_tasks(tasks: Path, extra: dict, tmp_path: Path, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    playbook = tmp_path / "tasks.yml"
    playbook.write_text(PLAYBOOK.format(tasks=tasks))
    command = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local"]
    return subprocess.run(
        [*command, str(playbook), "-e", json.dumps({"ansible_python_interpreter": sys.executable, **extra})],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(
            os.environ,
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            PATH=os.pathsep.join(filter(None, [str(path_prefix or ""), os.environ["PATH"]])),
        ),
        check=False,
    )


def command_stand_ins(bin_dir: Path, scripts: dict[str, str]) -> Path:
    """bin_dir holding one shell script per command name (its body given), for path_prefix."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir
