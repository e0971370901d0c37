"""`scripts/lab up` refuses to start on a machine that cannot run the lab: one line, nothing changed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = [sys.executable, str(REPO / "scripts" / "lab"), "--name", "pfcheck", "--subnet", "10.213.250.0/24"]
IS_ROOT = os.geteuid() == 0


def run_lab(args, home: Path, env_extra=None, prefix=()):
    env = dict(os.environ, LAB_HOME=str(home), **(env_extra or {}))
    return subprocess.run([*prefix, *LAB, *args], capture_output=True, text=True, env=env, check=False)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lab: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_machine_unchanged(home: Path):
    assert not home.exists()
    bridge = subprocess.run(["ip", "link", "show", "llmlab-pfcheck"], capture_output=True, check=False)
    assert bridge.returncode != 0


@pytest.mark.skipif(not IS_ROOT, reason="dropping to an unprivileged user needs root")
def test_up_as_non_root_says_so_in_one_line_and_changes_nothing(tmp_path):
    home = tmp_path / "home"
    result = run_lab(["up", "1"], home, prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    assert_one_line_error(result, "must run as root", "fix:")
    assert_machine_unchanged(home)


def test_up_without_systemd_nspawn_says_so_in_one_line_and_changes_nothing(tmp_path):
    if not IS_ROOT:
        pytest.skip("the root check comes first for non-root users")
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    home = tmp_path / "home"
    result = run_lab(["up", "1"], home, env_extra={"PATH": str(empty_path)})
    assert_one_line_error(result, "systemd-nspawn", "not found on PATH", "fix: scripts/lab deps")
    assert_machine_unchanged(home)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tiny file system needs root")
def test_up_without_free_disk_says_so_in_one_line_and_changes_nothing(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        home = small / "home"
        result = run_lab(["up", "1"], home)
        assert_one_line_error(result, "MiB free under", "expected at least 2048 MiB", "fix:")
        assert_machine_unchanged(home)
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_bad_arguments_fail_before_any_check_of_the_machine(tmp_path):
    home = tmp_path / "home"
    result = run_lab(["up", "2", "--gpu", "3x-Z9000"], home)
    assert_one_line_error(result, "GPU profile '3x-Z9000' is unknown", "1x-L4-24GB")
    result = run_lab(["up", "40"], home)
    assert_one_line_error(result, "host count 40 is out of range")
    assert_machine_unchanged(home)


def test_status_of_a_lab_that_is_down_exits_3(tmp_path):
    result = run_lab(["status"], tmp_path / "home")
    assert result.returncode == 3
    assert "is down" in result.stdout


def test_inventory_of_a_lab_that_is_down_is_an_error(tmp_path):
    assert_one_line_error(run_lab(["inventory"], tmp_path / "home"), "is down", "fix: scripts/lab up")
