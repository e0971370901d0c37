"""What the toolkit's commands share: one-line usage errors, argument types, output paths checked early.

Exit codes of every command (README, "Commands"): 0 passed, 1 a check failed, 2 could not run or
bad input, which is always one line on standard error, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

# A deadline longer than a day is a typo, not a setting (and "inf" would wait forever).
MAX_SECONDS = 86400.0


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on standard error and exit code 2."""

    def __init__(self, *args, name: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.name = name or self.prog

    def error(self, message: str):
        self.exit(2, f"{self.name}: error: {message}; see {self.prog} --help\n")


def positive_seconds(text: str) -> float:
    """A finite number of seconds above 0 and at most a day (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, {MAX_SECONDS:g}]")
    return value


def output_problem(path: Path | None, option: str) -> str | None:
    """Why `path` cannot be written (its directory is missing or not writable), or None; checked
    before a run starts, so that nothing measured is lost when the run ends."""
    if path is None:
        return None
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{option} {path} is a directory; expected a file name"
    if not directory.is_dir():
        return f"{option} {path}: the directory {directory} does not exist; fix: create it or choose another path"
    if not os.access(directory, os.W_OK):
        return f"{option} {path}: the directory {directory} is not writable"
    return None
