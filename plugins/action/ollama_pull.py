"""Action plugin: pull a model with the ollama_pull module in the background and watch it in one task.

Thin adapter over llm_toolkit.pull_watch. It starts the module as an async job on the host (its
timeout is `pull_timeout`, plus a margin, so async_wrapper's watchdog still stops it if the
controller goes away), then polls it from here until it ends or `pull_timeout` passes: each poll is
one shell command that prints the job's results file and the module's progress file together, and
each changed progress line is shown on the controller. The job file is removed at the end, and the
module's own result is returned, with `polls` (how many polls it took) added. When the time runs
out, the background pull is stopped and the task fails with one message saying what to do.

Options besides the module's (which are passed on unchanged):
  poll_interval: seconds between polls (default 10; 0 polls without pause)
  pull_timeout:  seconds the whole pull may take (default 14400)
"""

from __future__ import annotations

import shlex

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from llm_toolkit.host.llm_ollama import describe_progress

from llm_toolkit.pull_watch import (
    FINISHED,
    PollError,
    parse_poll,
    poll_command,
    stop_command,
    summary_line,
    timeout_message,
    watch,
)

display = Display()

# Seconds async_wrapper's watchdog waits beyond pull_timeout: the controller stops the job itself,
# the watchdog only acts when the controller is gone.
WATCHDOG_MARGIN = 60


def _number(args: dict, key: str, default: float, minimum: float) -> float:
    value = args.pop(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnsibleActionFail(f"{key} must be a number of seconds, got {value!r}") from None
    if number < minimum:
        raise AnsibleActionFail(f"{key} must be at least {minimum:g} s, got {value!r}")
    return number


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False  # the plugin runs the job asynchronously itself; the task keyword is refused

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        module_args = dict(self._task.args)
        interval = _number(module_args, "poll_interval", 10, 0)
        timeout = _number(module_args, "pull_timeout", 14400, 1)
        try:
            if self._task.check_mode:  # the module only reports whether it would pull
                result.update(self._execute_module(self._task.action, module_args, task_vars=task_vars))
                return result
            result.update(self._pull(module_args, task_vars, interval, timeout))
            return result
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def _pull(self, module_args: dict, task_vars: dict, interval: float, timeout: float) -> dict:
        host = str(task_vars.get("inventory_hostname", "the host"))
        model = str(module_args.get("name", ""))
        progress_file = module_args.get("progress_file")
        if progress_file:  # the file an earlier pull left would be shown as this one's progress
            self._low_level_execute_command(f"rm -f -- {shlex.quote(str(progress_file))}")
        started = self._start(module_args, task_vars, int(timeout) + WATCHDOG_MARGIN)
        results_file = started.get("results_file")
        if started.get("failed") or not results_file:
            return {**started, "msg": started.get("msg") or f"{host}: the background pull of {model} did not start"}
        command = poll_command(results_file, progress_file)

        def poll():
            try:
                answer = self._low_level_execute_command(command)
            except AnsibleConnectionFailure as exc:
                raise PollError(f"cannot reach {host}: {exc}") from exc
            if answer.get("rc") != 0:
                raise PollError(f"the poll failed (rc {answer.get('rc')}): {answer.get('stderr', '')[:200]}")
            return parse_poll(answer.get("stdout", ""))

        def report(line: str) -> None:
            display.display(f"[{host}] {line}")

        outcome, stopped = None, ""
        try:
            outcome = watch(
                poll, report, lambda progress: describe_progress(model, progress), interval=interval, timeout=timeout
            )
        finally:
            if outcome is None or outcome.status != FINISHED:  # timed out, lost, or interrupted here
                stopped = self._stop(results_file)
            self._forget(results_file)
        display.display(f"[{host}] {summary_line(model, outcome)}")
        if outcome.status == FINISHED:
            final = {key: value for key, value in outcome.result.items() if key != "ansible_job_id"}
            if final.get("child_pid") and final.get("msg") == "Timeout exceeded":  # async_wrapper's watchdog
                return self._timed_out(host, model, timeout, outcome, "async_wrapper's watchdog stopped it")
            return {**final, "polls": outcome.polls}
        if outcome.status == "lost":
            return {
                "failed": True,
                "lost": True,
                "polls": outcome.polls,
                "progress": outcome.progress,
                "msg": f"{host}: lost track of the background pull of {model}: {outcome.error}; "
                + (stopped or "it may still be running on the host"),
            }
        return self._timed_out(host, model, timeout, outcome, stopped or "the background pull had already ended")

    def _stop(self, results_file: str) -> str:
        """Stop the background job; say what was stopped ("" when nothing was, or the host is unreachable)."""
        try:
            answer = self._low_level_execute_command(stop_command(results_file))
        except AnsibleConnectionFailure:
            return ""
        groups = [line.split()[1] for line in answer.get("stdout", "").splitlines() if line.startswith("stopped ")]
        return f"stopped the background pull (process group {', '.join(groups)})" if groups else ""

    def _forget(self, results_file: str) -> None:
        """Remove the job's results file, as async_status's cleanup mode did; the progress file stays."""
        try:
            self._low_level_execute_command(f"rm -f -- {shlex.quote(results_file)}")
        except AnsibleConnectionFailure as exc:
            display.warning(f"could not remove the pull's job file {results_file}: {exc}")

    @staticmethod
    def _timed_out(host, model, timeout, outcome, stopped) -> dict:
        return {
            "failed": True,
            "timed_out": True,
            "polls": outcome.polls,
            "progress": outcome.progress,
            "msg": timeout_message(host, model, timeout, outcome, stopped),
        }

    def _start(self, module_args: dict, task_vars: dict, limit: int) -> dict:
        """Run the module through async_wrapper with `limit` seconds for its watchdog."""
        previous = self._task.async_val
        self._task.async_val = limit  # _execute_module hands the task's async value to async_wrapper
        try:
            return self._execute_module(self._task.action, module_args, task_vars=task_vars, wrap_async=True)
        finally:
            self._task.async_val = previous
