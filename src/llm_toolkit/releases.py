"""vLLM's releases on a host: which venv and model revision a unit serves, and what may be removed.

A release is what `vllm.service` runs: the virtual environment of one vLLM version
(`<vllm_install_dir>/releases/<version>`), one model revision (`<vllm_models_dir>/<name>@<revision>`),
the serving flags and the environment file. The serving release and the previous one are the units
in /etc/systemd/system and /etc/vllm/previous (docs/upgrades.md); their ExecStart= names the venv
(the program `<venv>/bin/vllm`) and the model directory (the first word after `serve`).
"""

from __future__ import annotations

import shlex


def unit_paths(unit_text: str) -> dict:
    """The venv and the model directory a vllm.service unit runs ({} for a unit without ExecStart=).

    ExecStart= is written by llm_toolkit.serving.systemd_command: words plain or double-quoted with
    `\\` and `"` escaped, `%` and `$` doubled, which shlex reads back once the doubling is undone.
    """
    for line in (unit_text or "").splitlines():
        if not line.startswith("ExecStart="):
            continue
        words = shlex.split(line[len("ExecStart=") :].replace("%%", "%").replace("$$", "$"))
        if not words or not words[0].endswith("/bin/vllm"):
            return {}
        paths = {"venv": words[0][: -len("/bin/vllm")]}
        if len(words) > 2 and words[1] == "serve":
            paths["model"] = words[2]
        return paths
    return {}


def removable(found: list, keep: list, kept: int) -> list[str]:
    """The paths of `found` that go: all but those in `keep` and, up to `kept` in all, the newest others.

    found: dicts with `path` and `mtime` (as ansible.builtin.find returns them); keep: paths that stay
    whatever the count (the serving and the previous release, the one this run installed).
    """
    wanted = {str(path).rstrip("/") for path in keep if path}
    entries = sorted(found or [], key=lambda entry: -float(entry.get("mtime", 0)))
    staying = sum(1 for entry in entries if str(entry["path"]).rstrip("/") in wanted)
    going = []
    for entry in entries:
        path = str(entry["path"]).rstrip("/")
        if path in wanted:
            continue
        if staying < int(kept):
            staying += 1
            continue
        going.append(path)
    return sorted(going)
