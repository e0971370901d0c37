"""The pull watcher behind the ollama_pull action plugin: the loop, the poll's command and its answer.

The loop runs here without Ansible: a fake job stands for the async pull on a host, and the clock
and the sleep are injected (a fake clock where time matters, the real ones where speed does).
The shell commands the plugin sends to hosts run here under /bin/sh on real files and processes.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_toolkit.host.llm_ollama import describe_progress

from llm_toolkit.pull_watch import (
    FINISHED,
    MISSING,
    MISSING_MARK,
    PROGRESS_MARK,
    RUNNING,
    Poll,
    PollError,
    Watch,
    duration,
    job_state,
    parse_poll,
    poll_command,
    read_progress,
    stop_command,
    summary_line,
    timeout_message,
    watch,
)

MODEL = "gemma2:2b"
TOTAL = 4_200_000
DONE = {"digest": "f" * 64, "attempts": 1, "changed": True, "removed_partials": [], "progress": {}}


def describe(progress: dict) -> str:
    return describe_progress(MODEL, progress)


def progress(completed: int, total: int = TOTAL, **extra) -> dict:
    return {
        "status": "pulling 0123456789ab",
        "completed": completed,
        "total": total,
        "percent": round(100 * completed / total, 1),
        "layers": 1,
        "error": None,
        "success": False,
        **extra,
    }


class FakeClock:
    """Time that passes only when the loop sleeps (plus an optional cost per poll)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class FakeJob:
    """A background pull: running for `runs` polls (progress moving every `step` polls), then its result."""

    def __init__(self, runs: int, step: int = 1, result: dict | None = None) -> None:
        self.runs, self.step, self.polls = runs, step, 0
        self.result = dict(DONE) if result is None else result

    def __call__(self) -> Poll:
        self.polls += 1
        if self.polls > self.runs:
            return Poll(FINISHED, self.result, progress(TOTAL, status="success", success=True))
        done = TOTAL * ((self.polls - 1) // self.step) // (self.runs // self.step)
        return Poll(RUNNING, None, progress(done))


def test_more_than_two_thousand_polls_at_a_zero_interval_run_in_one_loop_quickly():
    job, shown = FakeJob(runs=2_500, step=100), []
    began = time.monotonic()
    outcome = watch(job, shown.append, describe, interval=0, timeout=600)
    assert time.monotonic() - began < 10  # the whole loop; a task per poll took about 10 s for each
    assert outcome.status == FINISHED
    assert outcome.polls == job.polls == 2_501
    assert outcome.result == DONE
    # One line per change of the progress: 25 steps of 100 polls, no line for the 99 polls between.
    assert outcome.reports == len(shown) == 25
    assert shown[0] == "gemma2:2b: 0.0% (0 B of 4.2 MB), pulling 0123456789ab"
    assert shown[1] == "gemma2:2b: 4.0% (168.0 KB of 4.2 MB), pulling 0123456789ab"
    assert shown[-1] == "gemma2:2b: 96.0% (4.0 MB of 4.2 MB), pulling 0123456789ab"
    assert len(set(shown)) == len(shown)


def test_the_pauses_grow_to_the_interval_and_the_timeout_ends_the_loop_at_the_deadline():
    clock, shown = FakeClock(), []
    outcome = watch(
        FakeJob(runs=10**9), shown.append, describe, interval=10, timeout=35, clock=clock, sleep=clock.sleep
    )
    assert clock.sleeps == [0.5, 1, 2, 4, 8, 10, 9.5]  # the last pause stops at the deadline
    assert outcome.status == "timeout"
    assert (outcome.polls, outcome.elapsed) == (8, 35)
    assert outcome.result == {}
    assert outcome.progress == progress(0)


def test_without_a_ramp_every_pause_is_the_interval():
    clock = FakeClock()
    outcome = watch(
        FakeJob(runs=3), [].append, describe, interval=2, timeout=60, clock=clock, sleep=clock.sleep, ramp=0
    )
    assert clock.sleeps == [2, 2, 2]
    assert (outcome.status, outcome.polls) == (FINISHED, 4)


def test_a_timeout_is_reported_with_where_the_pull_got_the_rate_and_the_fix():
    clock = FakeClock()

    def slow() -> Poll:  # 1 MB every 100 s of a 4.2 MB pull
        return Poll(RUNNING, None, progress(int((clock.now - 1000) * 10_000)))

    outcome = watch(slow, [].append, describe, interval=50, timeout=300, clock=clock, sleep=clock.sleep)
    assert outcome.status == "timeout"
    message = timeout_message("lab1", MODEL, 300, outcome, "stopped the background pull (process group 42)")
    assert message == (
        "lab1: the pull of gemma2:2b did not finish within 300 s (ollama_pull_timeout); it got to 71.4% "
        "(3.0 MB of 4.2 MB), pulling 0123456789ab at about 10.0 KB/s, which needs about 2 min more; "
        "stopped the background pull (process group 42); fix: raise ollama_pull_timeout, or give the host "
        "a faster link to the registry"
    )
    assert summary_line(MODEL, outcome) == "gemma2:2b: timeout; 13 polls in 300.0 s"
    assert "no progress reported" in timeout_message("lab1", MODEL, 5, Watch("timeout"), "x")
    assert [duration(40), duration(720), duration(9000)] == ["40 s", "12 min", "2.5 h"]


def test_a_job_that_fails_returns_the_modules_failure_as_it_is():
    failure = {"failed": True, "msg": "unknown tag: pull model manifest: file does not exist", "attempts": 1}
    shown = []
    outcome = watch(FakeJob(runs=2, result=failure), shown.append, describe, interval=0, timeout=60)
    assert (outcome.status, outcome.result, outcome.polls) == (FINISHED, failure, 3)
    assert summary_line(MODEL, outcome).startswith(f"gemma2:2b: failed: {failure['msg']}; 3 polls in ")
    assert summary_line(MODEL, Watch(FINISHED, DONE, progress(9), 1)).startswith("gemma2:2b: 0.0% (9 B of 4.2 MB)")


def test_a_missing_or_half_written_progress_file_keeps_the_last_good_progress():
    answers = iter(
        [
            Poll(RUNNING, None, None),  # not written yet
            Poll(RUNNING, None, progress(1_000_000)),
            Poll(RUNNING, None, None),  # half-written: unreadable
            Poll(FINISHED, DONE, None),
        ]
    )
    shown = []
    outcome = watch(lambda: next(answers), shown.append, describe, interval=0, timeout=60)
    assert shown == ["gemma2:2b: starting", "gemma2:2b: 23.8% (1.0 MB of 4.2 MB), pulling 0123456789ab"]
    assert outcome.progress == progress(1_000_000)
    assert (outcome.status, outcome.polls) == (FINISHED, 4)


def test_an_unchanged_line_is_shown_again_after_the_heartbeat():
    clock, shown = FakeClock(), []
    watch(
        lambda: Poll(RUNNING, None, progress(5)),
        shown.append,
        describe,
        interval=10,
        timeout=200,
        clock=clock,
        sleep=clock.sleep,
        ramp=0,
        heartbeat=60,
    )
    assert len(shown) == 4  # at 0, 60, 120 and 180 s


def test_failing_polls_are_tolerated_for_a_while_then_the_job_is_lost():
    clock = FakeClock()
    answers = iter(
        [PollError("ssh: connection reset"), Poll(RUNNING), Poll(MISSING), Poll(RUNNING), Poll(FINISHED, DONE)]
    )

    def flaky() -> Poll:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    outcome = watch(flaky, [].append, describe, interval=5, timeout=600, clock=clock, sleep=clock.sleep, ramp=0)
    assert (outcome.status, outcome.polls) == (FINISHED, 5)

    def down() -> Poll:
        raise PollError("cannot reach lab1")

    clock = FakeClock()
    outcome = watch(down, [].append, describe, interval=5, timeout=600, clock=clock, sleep=clock.sleep, ramp=0)
    assert (outcome.status, outcome.error, outcome.polls, outcome.elapsed) == ("lost", "cannot reach lab1", 13, 60)
    clock = FakeClock()
    gone = watch(lambda: Poll(MISSING), [].append, describe, interval=30, timeout=600, clock=clock, sleep=clock.sleep)
    assert (gone.status, gone.error) == ("lost", "the job's results file is gone")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MISSING_MARK, (MISSING, None)),
        ("", (RUNNING, None)),
        ('{"started": true, "finished": false, "ansible_job_id": "j1.2"}', (RUNNING, None)),
        ('{"started": tr', (RUNNING, None)),
        ("[1]", (RUNNING, None)),
        ('{"changed": true, "digest": "abc"}', (FINISHED, {"changed": True, "digest": "abc"})),
        ('{"msg": "Timeout exceeded", "failed": true, "child_pid": 7}', (FINISHED, None)),
        ('{"started": 1, "finished": 1, "failed": true}', (FINISHED, {"started": 1, "finished": 1, "failed": True})),
    ],
)
def test_the_job_file_is_read_the_way_async_status_reads_it(text, expected):
    state, result = job_state(text)
    assert state == expected[0]
    if expected[1] is not None:
        assert result == expected[1]
    elif state == FINISHED:
        assert result == json.loads(text)


def test_the_progress_file_is_read_only_when_whole():
    assert read_progress(json.dumps(progress(7))) == progress(7)
    assert read_progress("") is None
    assert read_progress('{"status": "pulling 01') is None
    assert read_progress('"text"') is None


def run_sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False)


def test_one_shell_command_reads_the_job_file_and_the_progress_file(tmp_path):
    job, progress_file = tmp_path / "j123.456", tmp_path / "pull it's.json"
    command = poll_command(str(job), str(progress_file))
    answer = run_sh(command)
    assert answer.returncode == 0
    assert parse_poll(answer.stdout) == Poll(MISSING, None, None)
    job.write_text('{"started": true, "finished": false, "ansible_job_id": "j123.456"}')
    progress_file.write_text(json.dumps(progress(2_100_000))[:-9])  # half-written
    assert parse_poll(run_sh(command).stdout) == Poll(RUNNING, None, None)
    progress_file.write_text(json.dumps(progress(2_100_000)))
    assert parse_poll(run_sh(command).stdout) == Poll(RUNNING, None, progress(2_100_000))
    job.write_text(json.dumps(DONE))
    assert parse_poll(run_sh(command).stdout) == Poll(FINISHED, DONE, progress(2_100_000))
    assert parse_poll(run_sh(poll_command(str(job), None)).stdout) == Poll(FINISHED, DONE, None)
    assert PROGRESS_MARK in command
    # Over ssh with a terminal (Ansible's default for become), every line ends in CRLF.
    on_a_tty = run_sh(command).stdout.replace("\n", "\r\n")
    assert parse_poll(on_a_tty) == Poll(FINISHED, DONE, progress(2_100_000))
    with pytest.raises(PollError, match="unexpected answer"):
        parse_poll("sudo: a password is required\n")


def test_the_stop_command_ends_the_process_group_running_the_module(tmp_path):
    jid = f"j{secrets.randbelow(10**12)}"
    # Like async_wrapper's fork that runs the module: the jid in its arguments, leading its own
    # process group, with the module as its child.
    runner = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '120'])", jid, "3600"],
        start_new_session=True,
    )
    try:
        for _ in range(100):
            children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()
            if children:
                break
            time.sleep(0.05)
        assert children
        answer = run_sh(stop_command(f"{tmp_path}/{jid}.{runner.pid + 1}"))
        assert answer.returncode == 0
        assert answer.stdout.split() == ["stopped", str(runner.pid)]
        assert runner.wait(timeout=10) == -signal.SIGTERM
        for _ in range(100):
            if not Path(f"/proc/{children[0]}").exists():
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{children[0]}").exists()  # the module, in the group, is gone too
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert run_sh(stop_command(f"/root/.ansible_async/{jid}.1")).stdout == ""
    with pytest.raises(ValueError, match="not an async job"):
        stop_command("/var/x; rm -rf /")
