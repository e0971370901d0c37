"""llm_toolkit.releases: the paths a vllm.service serves, and which releases and revisions may go."""

from __future__ import annotations

import pytest

from llm_toolkit.releases import removable, unit_paths
from llm_toolkit.serving import systemd_command


def unit(argv: list[str]) -> str:
    return f"[Unit]\nDescription=x\n\n[Service]\nExecStart={systemd_command(argv)}\nRestart=always\n"


def test_the_venv_and_the_model_come_from_execstart():
    text = unit(["/opt/vllm/releases/0.32.0/bin/vllm", "serve", "/var/lib/vllm/models/tiny@0123", "--port", "8000"])
    assert unit_paths(text) == {"venv": "/opt/vllm/releases/0.32.0", "model": "/var/lib/vllm/models/tiny@0123"}


def test_quoted_words_are_read_back_exactly():
    model = '/models/a dir with "quotes" and 100% $HOME'
    assert unit_paths(unit(["/opt/v x/bin/vllm", "serve", model]))["model"] == model
    assert unit_paths(unit(["/opt/v x/bin/vllm", "serve", model]))["venv"] == "/opt/v x"


@pytest.mark.parametrize("text", ["", "[Service]\nRestart=always\n", "ExecStart=/usr/bin/python3 -m x\n"])
def test_a_unit_that_runs_no_vllm_names_nothing(text):
    assert unit_paths(text) == {}


def entries(*pairs):
    return [{"path": path, "mtime": mtime} for path, mtime in pairs]


def test_the_kept_ones_stay_and_the_oldest_others_go():
    found = entries(("/r/0.30.0", 1), ("/r/0.31.0", 2), ("/r/0.32.0", 3), ("/r/0.29.0", 0))
    assert removable(found, keep=["/r/0.32.0", "/r/0.31.0"], kept=2) == ["/r/0.29.0", "/r/0.30.0"]
    assert removable(found, keep=["/r/0.32.0"], kept=2) == ["/r/0.29.0", "/r/0.30.0"]
    assert removable(found, keep=["/r/0.32.0"], kept=3) == ["/r/0.29.0"]


def test_what_must_stay_stays_even_past_the_count():
    found = entries(("/r/a", 1), ("/r/b", 2), ("/r/c", 3))
    assert removable(found, keep=["/r/a", "/r/b", "/r/c/"], kept=1) == []
    assert removable(found, keep=["/r/a"], kept=1) == ["/r/b", "/r/c"]


def test_nothing_found_removes_nothing():
    assert removable([], keep=["/r/a"], kept=2) == []
