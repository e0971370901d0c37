"""The failover drill's load generator and report (llm_toolkit.drill, playbooks/drill.yml): the body size
it promises, and which failures the report accepts (only a request already under way on vLLM when it was
stopped), against a real loopback server for the requests themselves."""

from __future__ import annotations

import json

from llm_toolkit import drill
from tests.unit.gateway_backends import Backend

STOPPED, STARTED, READY = 100.0, 110.0, 150.0


def record(start: float, end: float, ok: bool = True, backend: str | None = "ollama") -> dict:
    return {"start": start, "end": end, "ok": ok, "backend": backend, "language": "it" if ok else None, "error": None}


def test_each_request_body_is_at_least_the_size_asked_for_and_keeps_the_italian_question():
    for size in (1024, 32768, 40000):
        body = drill.request_body("mixtral", size, stream=False, max_tokens=16)
        assert len(json.dumps(body)) >= size
        assert body["messages"][-1]["content"] == drill.PROMPT


def test_requests_are_counted_by_the_phase_they_started_in_and_by_who_answered():
    records = [record(90, 91, backend="vllm"), record(101, 102), record(120, 121), record(151, 152, backend="vllm")]
    summary = drill.summarize(records, STOPPED, STARTED, READY)
    phases = summary["phases"]
    assert (phases["before"]["sent"], phases["during"]["sent"], phases["after"]["sent"]) == (1, 2, 1)
    assert phases["during"]["by_backend"] == {"ollama": 2}
    assert phases["after"]["by_backend"] == {"vllm": 1}
    assert summary["unacceptable_failures"] == 0


def test_only_a_request_under_way_on_vllm_at_the_stop_may_fail():
    cut = record(99, 101, ok=False, backend=None)  # streaming from vLLM when it stopped
    assert drill.summarize([cut], STOPPED, STARTED, READY)["unacceptable_failures"] == 0
    for failed in (
        record(101, 102, ok=False, backend=None),  # started after the stop
        record(90, 95, ok=False, backend="vllm"),  # failed before the stop
        record(99, 101, ok=False, backend="ollama"),  # the backup failed it
    ):
        assert drill.summarize([failed], STOPPED, STARTED, READY)["unacceptable_failures"] == 1, failed


def test_a_request_that_vllm_held_while_its_stop_ran_may_fail_but_not_one_after_it():
    held = record(101, 103, ok=False, backend="vllm")  # sent just as the stop began, refused by the shutdown
    assert drill.summarize([held], STOPPED, STARTED, READY, stop_ended=104)["unacceptable_failures"] == 0
    late = record(105, 106, ok=False, backend=None)  # after the stop returned: the backup should have had it
    assert drill.summarize([late], STOPPED, STARTED, READY, stop_ended=104)["unacceptable_failures"] == 1


def test_the_report_exits_1_on_an_unacceptable_failure(tmp_path, capsys):
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(record(101, 102, ok=False)) + "\n")
    argv = ["report", "--input", str(path), "--stopped", "100", "--started", "110", "--ready", "150"]
    assert drill.main(argv) == 1
    assert json.loads(capsys.readouterr().out)["unacceptable_failures"] == 1
    path.write_text(json.dumps(record(101, 102)) + "\n")
    assert drill.main(argv) == 0


def test_one_request_records_status_server_and_language_and_a_refused_one_fails(tmp_path):
    backend = Backend("ollama")
    try:
        body = drill.request_body("mixtral", 2048, stream=True, max_tokens=8)
        answered = drill.one_request(backend.url + "/v1/chat/completions", "key", body, 10)
        assert answered["status"] == 200 and answered["ok"] and answered["characters"] > 0
        port = backend.port
    finally:
        backend.stop()
    refused = drill.one_request(f"http://127.0.0.1:{port}/v1/chat/completions", "key", body, 5)
    assert not refused["ok"] and refused["status"] is None and refused["error"]
