"""The ollama role's pure helpers: pull progress, error classes, retries, names, catalog sizes."""

import json

import pytest
from llm_toolkit.host.llm_ollama import (
    PullProgress,
    backoff_delays,
    describe_progress,
    human_bytes,
    is_transient,
    is_unknown_tag,
    manifest_path,
    model_digests,
    normalize_name,
    partial_files,
)

from tests.ansible_plugins import ansible_filter

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64

# A pull as Ollama streams it (api.md): manifest, layers with growing "completed", then success.
STREAM = [
    {"status": "pulling manifest"},
    {"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 2_000_000_000},
    {"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 2_000_000_000, "completed": 500_000_000},
    {"status": "pulling bbbbbbbbbbbb", "digest": DIGEST_B, "total": 1_000, "completed": 1_000},
    {"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 2_000_000_000, "completed": 2_000_000_000},
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    {"status": "success"},
]


def test_progress_adds_up_the_layers_and_ends_in_success():
    progress = PullProgress()
    progress.feed(json.dumps(STREAM[0]).encode() + b"\n")
    assert progress.percent() == 0.0
    for event in STREAM[1:3]:
        progress.feed(json.dumps(event))
    assert progress.completed == 500_000_000
    assert progress.total == 2_000_000_000
    assert progress.percent() == 25.0
    assert (
        describe_progress("mixtral", progress.as_dict()) == "mixtral: 25.0% (500.0 MB of 2.0 GB), pulling aaaaaaaaaaaa"
    )
    for event in STREAM[3:]:
        progress.feed(json.dumps(event))
    assert progress.success
    assert progress.error is None
    assert progress.percent() == 100.0
    assert describe_progress("mixtral", progress.as_dict()) == "mixtral: done (2.0 GB)"


def test_progress_records_an_error_line_and_ignores_blank_lines():
    progress = PullProgress()
    assert progress.feed(b"\n") is None
    progress.feed('{"status":"pulling manifest"}')
    progress.feed('{"error":"pull model manifest: file does not exist"}')
    assert progress.error == "pull model manifest: file does not exist"
    assert not progress.success
    assert describe_progress("x", progress.as_dict()) == "x: failed: pull model manifest: file does not exist"


@pytest.mark.parametrize("line", ["not json", "[1, 2]"])
def test_progress_reports_an_unreadable_answer(line):
    progress = PullProgress()
    progress.feed(line)
    assert progress.error.startswith(("unreadable answer", "unexpected answer"))


def test_describe_progress_before_any_layer_says_the_status():
    assert describe_progress("m", {}) == "m: starting"
    assert describe_progress("m", {"status": "pulling manifest", "total": 0}) == "m: pulling manifest"


@pytest.mark.parametrize(
    ("error", "status", "transient"),
    [
        ("pull model manifest: file does not exist", 500, False),
        ("model 'x' not found", 404, False),
        ("max retries exceeded: read tcp: connection reset by peer", None, True),
        ("cannot reach Ollama at http://127.0.0.1:11434: [Errno 111] Connection refused", None, True),
        ("pull model manifest: 429 Too Many Requests", None, True),
        ("pull model manifest: 503 Service Unavailable", None, True),
        ("digest mismatch, file must be downloaded again", None, True),
        ("something odd", 502, True),
        ("something odd", 400, False),
        ("invalid digest format", None, False),
        ("write /srv/models-503/blobs/sha256-0a1b-partial: no space left on device", None, False),
        ("max retries exceeded: write /m/blobs/sha256-0a1b-partial: disk quota exceeded", None, False),
    ],
)
def test_only_network_rate_limit_and_server_errors_are_retried(error, status, transient):
    assert is_transient(error, status) is transient


def test_a_missing_manifest_is_an_unknown_tag():
    assert is_unknown_tag("pull model manifest: file does not exist")
    assert not is_unknown_tag("max retries exceeded")


def test_backoff_doubles_and_is_capped():
    assert backoff_delays(4, 5) == [5, 10, 20, 40]
    assert backoff_delays(8, 5)[-1] == 120
    assert backoff_delays(0) == []


def test_partial_downloads_are_recognised_by_ollamas_names():
    names = [
        "sha256-" + "a" * 64,
        "sha256-" + "b" * 64 + "-partial",
        "sha256-" + "c" * 64 + "-partial-3",
        "sha256-short-partial",
    ]
    assert partial_files(names) == ["sha256-" + "b" * 64 + "-partial", "sha256-" + "c" * 64 + "-partial-3"]


def test_names_digests_and_manifest_paths_follow_ollamas_layout():
    assert normalize_name("mixtral") == "mixtral:latest"
    assert normalize_name("gemma2:2b") == "gemma2:2b"
    assert normalize_name("registry.example:5000/team/model") == "registry.example:5000/team/model:latest"
    answer = {"models": [{"name": "mixtral:latest", "digest": "d1"}, {"model": "gemma2:2b", "digest": "d2"}]}
    assert model_digests(answer) == {"mixtral:latest": "d1", "gemma2:2b": "d2"}
    assert manifest_path("mixtral") == "registry.ollama.ai/library/mixtral/latest"
    assert manifest_path("team/model:v1") == "registry.ollama.ai/team/model/v1"
    assert manifest_path("reg.example/team/model:v1") == "reg.example/team/model/v1"


def test_human_bytes_uses_decimal_units_like_ollama():
    assert human_bytes(999) == "999 B"
    assert human_bytes(2_097_152) == "2.1 MB"
    assert human_bytes(26.4e9) == "26.4 GB"


def test_download_size_comes_from_the_override_then_the_catalog_else_zero():
    size = ansible_filter("llm_ollama_download_gb")
    assert size("gemma2:2b") == 1.6
    assert size("gemma2:2b", {"gemma2:2b": 0.01}) == 0.01
    assert size("someone/else:1b") == 0.0


def test_catalog_entry_names_the_real_tag_for_an_alias_and_suggests_for_unknown_tags():
    entry = ansible_filter("llm_ollama_entry")
    alias = entry("mixtral:8x7b-instruct-q4_K_M")
    assert alias["alias"] is True
    assert alias["tag"] == "mixtral:8x7b-instruct-v0.1-q4_K_M"
    real = entry("mixtral:8x7b-instruct-v0.1-q4_K_M")
    assert real["alias"] is False
    assert real["key"] == "mixtral-8x7b-instruct"
    unknown = entry("mixtral:8x7b-instruct-v0.1-q5_0")
    assert unknown["key"] is None
    assert unknown["suggestions"][0] == "mixtral:8x7b-instruct-v0.1-q4_K_M"
    assert "mixtral:8x22b-instruct-v0.1-q4_K_M" in unknown["suggestions"]


def test_filter_progress_reads_the_progress_file_text():
    progress = ansible_filter("llm_ollama_progress")
    assert progress("m", "") == "m: starting"
    assert progress("m", "{broken") == "m: starting"
    text = json.dumps({"status": "pulling x", "completed": 1, "total": 4, "percent": 25.0})
    assert progress("m", text) == "m: 25.0% (1 B of 4 B), pulling x"


@pytest.mark.parametrize(
    ("status", "error", "running", "accelerator", "expected"),
    [
        (200, "", [{"size_vram": 100}], "gpu", ""),
        (200, "", [{"size_vram": 0}], "cpu", ""),
        (200, "", [{"size_vram": 0}], "gpu", "m loaded on the CPU (size_vram 0 in /api/ps); expected it in GPU memory"),
        (500, "model requires more system memory", [], "gpu", "m did not load: model requires more system memory; ex"),
        (200, "", [], "cpu", "m is not in /api/ps after loading; expected Ollama to load it"),
    ],
)
def test_the_warm_up_refusal_names_what_went_wrong_and_the_fix(status, error, running, accelerator, expected):
    refusal = ansible_filter("llm_ollama_warm_up_refusal")("m", status, error, running, accelerator)
    assert refusal.startswith(expected)
    assert (refusal == "") == (expected == "")
    if refusal:
        assert "fix: read journalctl -u ollama" in refusal
