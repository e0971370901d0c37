"""A small real file system that fills up on purpose, for the tests of a disk that fills during a
download. Test-only fault injector: a tmpfs mounted for one test (mounting needs root) and another
writer that takes all the space left on it once the download under test has written some of its bytes."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of size mounted on path (created), always unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(disk: Path) -> None:
    """Take every byte left on disk (into disk/filler): another writer filling the file system."""
    with open(disk / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def fill_once(disk: Path, ready: Callable[[], bool], wait_s: float = 60) -> Callable[[], None]:
    """A function that waits until ready() (the download has written some bytes), then fills disk."""

    def run() -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not ready():
            time.sleep(0.01)
        fill(disk)

    return run


def fill_in_background(disk: Path, ready: Callable[[], bool]) -> threading.Thread:
    thread = threading.Thread(target=fill_once(disk, ready), daemon=True)
    thread.start()
    return thread
