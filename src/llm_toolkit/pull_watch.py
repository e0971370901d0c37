"""Watch a model pull that runs in the background on a host until it ends, reporting its progress.

The ollama_pull action plugin (plugins/action/ollama_pull.py) starts the ollama_pull module as an
async job and hands `watch` a poll function: one shell command (`poll_command`) that prints the
job's results file and the module's progress file at once, read back by `parse_poll`. `watch`
polls until the job ends or the timeout passes, and reports one progress line per poll when the
line changed (and at least every `heartbeat` seconds while it does not). It runs in one loop, in
one task, however long the pull takes: no recursion, no task per poll.

The clock and the sleep are injected, so the loop is tested without Ansible and without waiting
(tests/unit/test_pull_watch.py).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_toolkit.host.llm_ollama import describe_progress, human_bytes

# Lines `poll_command` prints between and instead of the files; JSON written on one line by
# json.dumps (the async job's results, the module's progress) never holds a line like these.
PROGRESS_MARK = "@@llm-toolkit-pull-progress@@"
MISSING_MARK = "@@llm-toolkit-pull-missing@@"

RUNNING, FINISHED, MISSING = "running", "finished", "missing"


class PollError(Exception):
    """A poll that read nothing usable (the connection failed, the command failed)."""


@dataclass(frozen=True)
class Poll:
    """What one poll saw: the job's state, its result when finished, the progress file's content."""

    state: str
    result: dict | None = None
    progress: dict | None = None


@dataclass
class Watch:
    """How a watch ended: "finished" (result is the module's), "timeout" or "lost" (error says why)."""

    status: str
    result: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    polls: int = 0
    reports: int = 0
    elapsed: float = 0.0
    error: str = ""


def poll_command(results_file: str, progress_file: str | None) -> str:
    """One POSIX shell command that prints the job's results file, a mark line, then the progress file.

    A missing results file prints MISSING_MARK instead; a missing progress file prints nothing.
    """
    job = shlex.quote(results_file)
    command = f"if [ -e {job} ]; then cat -- {job}; else printf '%s' {MISSING_MARK}; fi"
    command += f"; printf '\\n%s\\n' {PROGRESS_MARK}"
    if progress_file:
        command += f"; cat -- {shlex.quote(progress_file)} 2>/dev/null"
    return command + "; exit 0"


# Stops an async job: async_wrapper runs as `<python> <tmp>/async_wrapper.py <jid> <limit>
# <module> ...`, and the fork that runs the module leads its own process group (its watchdog does
# not); SIGTERM that group, then SIGKILL what is left, and print each group stopped.
_STOP = r"""for proc in /proc/[0-9]*; do
  pid=${proc#/proc/}
  tr '\000' '\n' < "$proc/cmdline" 2>/dev/null | grep -qx -- JID || continue
  stat=$(cat "$proc/stat" 2>/dev/null) || continue
  set -- ${stat##*) }
  [ "$3" = "$pid" ] || continue
  kill -s TERM -- "-$pid" 2>/dev/null && echo "stopped $pid" && stopped="$stopped $pid"
done
[ -z "$stopped" ] && exit 0
sleep 1
for pid in $stopped; do kill -s KILL -- "-$pid" 2>/dev/null; done
exit 0"""


def stop_command(results_file: str) -> str:
    """A POSIX shell command that stops the async job whose results file this is."""
    jid = results_file.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    if not re.fullmatch(r"j\d+", jid):
        raise ValueError(f"not an async job's results file: {results_file}")
    return _STOP.replace("JID", jid)


def job_state(text: str) -> tuple[str, dict | None]:
    """The state of an async job from its results file's text, read the way async_status reads it."""
    text = text.strip()
    if text == MISSING_MARK:
        return MISSING, None
    if not text:
        return RUNNING, None  # created but not written yet
    try:
        data = json.loads(text)
    except ValueError:
        return RUNNING, None  # async_wrapper writes it atomically; treat a torn read as not ready yet
    if not isinstance(data, dict):
        return RUNNING, None
    if "started" not in data:
        return FINISHED, data  # the module's own result replaced the "started" marker
    if data.get("finished"):
        return FINISHED, data
    return RUNNING, None


def read_progress(text: str) -> dict | None:
    """The module's progress file; None when it is missing, empty or half-written."""
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def parse_poll(stdout: str) -> Poll:
    """Read back what `poll_command` printed (lines may end in CRLF: ssh may run it on a terminal)."""
    lines = stdout.replace("\r\n", "\n").split("\n")
    marks = [index for index, line in enumerate(lines) if line.strip() == PROGRESS_MARK]
    if not marks:
        raise PollError(f"unexpected answer to the poll: {stdout[:200]!r}")
    state, result = job_state("\n".join(lines[: marks[0]]))
    return Poll(state, result, read_progress("\n".join(lines[marks[0] + 1 :])))


def watch(
    poll: Callable[[], Poll],
    report: Callable[[str], None],
    describe: Callable[[dict], str],
    *,
    interval: float,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    heartbeat: float = 60.0,
    lost_after: float = 60.0,
    ramp: float = 0.5,
) -> Watch:
    """Poll until the job finishes, the timeout passes, or the job is lost; report progress lines.

    poll() returns a Poll or raises PollError; describe(progress) makes the line report() shows.
    A line is reported when it differs from the last one reported, or heartbeat seconds after it.
    Polls that fail or find no job file are tolerated for lost_after seconds (and at least 3 polls)
    in a row. The pauses start at `ramp` seconds and double up to `interval` (ramp=0: always the
    interval), so a short pull is not kept waiting for a whole interval. The timeout on the clock
    bounds the loop; the last poll is made at the deadline.
    """
    start = clock()
    outcome = Watch(status="timeout")
    last_line, last_report, lost_since, lost_polls, lost_reason = None, start, None, 0, ""
    while True:
        try:
            seen = poll()
        except PollError as exc:
            seen, lost_reason = None, str(exc)
        outcome.polls += 1
        now = clock()
        outcome.elapsed = now - start
        if seen is not None and seen.progress is not None:
            outcome.progress = seen.progress
        if seen is not None and seen.state == FINISHED:
            outcome.status, outcome.result = FINISHED, seen.result or {}
            return outcome
        if seen is None or seen.state == MISSING:
            lost_reason = lost_reason if seen is None else "the job's results file is gone"
            lost_since = now if lost_since is None else lost_since
            lost_polls += 1
            if lost_polls >= 3 and now - lost_since >= lost_after:
                outcome.status, outcome.error = "lost", lost_reason
                return outcome
        else:
            lost_since, lost_polls = None, 0
        line = describe(outcome.progress)
        if line != last_line or now - last_report >= heartbeat:
            report(line)
            outcome.reports += 1
            last_line, last_report = line, now
        if now - start >= timeout:
            return outcome
        pause = min(interval, ramp * 2 ** min(outcome.polls - 1, 32)) if ramp > 0 else interval
        sleep(max(0.0, min(pause, start + timeout - now)))


def summary_line(model: str, outcome: Watch) -> str:
    """The last line of a pull: how it ended, how many polls it took and how long."""
    if outcome.status == FINISHED and outcome.result.get("failed"):
        head = f"{model}: failed: {outcome.result.get('error') or outcome.result.get('msg') or 'no message'}"
    elif outcome.status == FINISHED:
        progress = outcome.result.get("progress") or outcome.progress
        head = describe_progress(model, progress) if progress else f"{model}: finished"
    else:
        head = f"{model}: {outcome.status}"
    return f"{head}; {outcome.polls} polls in {outcome.elapsed:.1f} s"


def duration(seconds: float) -> str:
    """A rough duration for a person: "40 s", "12 min", "2.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def timeout_message(host: str, model: str, timeout: float, outcome: Watch, stopped: str) -> str:
    """One message for a pull that ran out of time: where it got, that it was stopped, and the fix."""
    progress = outcome.progress
    where = describe_progress(model, progress).removeprefix(f"{model}: ") if progress else "no progress reported"
    rate = ""
    if progress.get("completed") and outcome.elapsed > 0:
        speed = progress["completed"] / outcome.elapsed
        left = max(0, progress.get("total", 0) - progress["completed"])
        rate = f" at about {human_bytes(speed)}/s"
        if left:
            rate += f", which needs about {duration(left / speed)} more"
    return (
        f"{host}: the pull of {model} did not finish within {timeout:g} s (ollama_pull_timeout); "
        f"it got to {where}{rate}; {stopped}; "
        "fix: raise ollama_pull_timeout, or give the host a faster link to the registry"
    )
