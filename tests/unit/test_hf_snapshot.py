"""Hugging Face downloads: the pure helpers, and the hf_snapshot module against the Hub stand-in.

Stand-in coverage: the Hub cannot be reached from CI, so tests/standins/hf_hub serves local
directories through the two endpoints a snapshot download uses, with the Hub's 401/404 rules.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from llm_toolkit.host.llm_hf import HubError, backoff, check_request, classify, commit_of, files_to_fetch

from tests.standins.hf_hub import hf_hub_standin

REPO = Path(__file__).resolve().parents[2]

ANSIBLE = str(Path(sys.executable).parent / "ansible")
TOKEN = "hf_canary_token_0123456789"


def test_requests_must_name_a_repo_and_a_pinned_revision():
    assert check_request("casperhansen/mixtral-instruct-awq", "a" * 40) is None
    assert "owner/name" in check_request("mixtral", "a" * 40)
    assert "no revision" in check_request("o/n", "")
    assert "not a commit" in check_request("o/n", "../../etc")


@pytest.mark.parametrize(
    ("status", "with_token", "words", "retryable"),
    [
        (401, False, ["401 Unauthorized (no token was sent)", "gated or private, or the id is wrong"], False),
        (401, True, ["401 Unauthorized (the token was refused or lacks access)"], False),
        (403, True, ["403 Forbidden", "accept the model's terms"], False),
        (404, True, ["404 Not Found", "check vllm_hf_repo and vllm_hf_revision"], False),
        (429, False, ["429 Too Many Requests"], True),
        (503, False, ["503 from the Hub"], True),
        (400, False, ["unexpected HTTP 400"], False),
    ],
)
def test_errors_are_told_apart_and_only_429_and_5xx_are_retried(status, with_token, words, retryable):
    error = classify(status, "o/n", "abc", "", with_token)
    assert error.retryable is retryable
    for word in words:
        assert word in str(error)
    assert str(error).startswith("o/n@abc: ")


def test_only_the_files_a_model_directory_needs_are_fetched():
    info = {
        "sha": "b" * 40,
        "siblings": [
            {"rfilename": "config.json", "size": 10},
            {"rfilename": "model-00001-of-00002.safetensors", "lfs": {"size": 5}},
            {"rfilename": "pytorch_model.bin", "size": 99},
            {"rfilename": "README.md"},
            {"rfilename": "tokenizer.json"},
        ],
    }
    files = files_to_fetch(info)
    assert [item["name"] for item in files] == ["config.json", "model-00001-of-00002.safetensors", "tokenizer.json"]
    assert [item["size"] for item in files] == [10, 5, None]
    assert commit_of(info) == "b" * 40


@pytest.mark.parametrize(
    "info",
    [
        {"sha": "b" * 40, "siblings": [{"rfilename": "../config.json"}]},
        {"sha": "b" * 40, "siblings": [{"rfilename": "model.safetensors"}]},
    ],
)
def test_unsafe_names_and_snapshots_without_config_are_refused(info):
    with pytest.raises(HubError):
        files_to_fetch(info)


def test_a_missing_commit_is_refused_and_backoff_honours_retry_after():
    with pytest.raises(HubError):
        commit_of({"sha": "main"})
    assert backoff(0, 2) == 2
    assert backoff(3, 2) == 16
    assert backoff(10, 2) == 60
    assert backoff(0, 2, retry_after="7") == 7


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def model_files(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"max_position_embeddings": 512, "note": text}))
    (directory / "model.safetensors").write_bytes(os.urandom(200_000))
    (directory / "pytorch_model.bin").write_bytes(b"duplicate weights")
    return directory


@pytest.fixture
def hub(tmp_path):
    repos = [
        hf_hub_standin.Repo("toolkit/tiny", model_files(tmp_path / "tiny", "v1")),
        hf_hub_standin.Repo("toolkit/gated", model_files(tmp_path / "gated", "g"), token=TOKEN),
    ]
    server = hf_hub_standin.start(("127.0.0.1", free_port()), repos)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def snapshot(
    hub,
    dest: Path,
    repo: str = "toolkit/tiny",
    revision: str | None = None,
    token: str = "",
    env_token: str = "",
    **extra,
):
    """The module through `ansible localhost`; the token as its argument (the roles' way) or in HF_TOKEN."""
    revision = revision or (hub.repos[repo].commit if repo in hub.repos else "a" * 40)
    args = {"repo": repo, "revision": revision, "dest": str(dest), "endpoint": hub.url, "backoff": 0, **extra}
    if token:
        args["token"] = token
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), HF_TOKEN=env_token)
    result = subprocess.run(
        [ANSIBLE, "localhost", "-c", "local", "-m", "hf_snapshot", "-a", json.dumps(args), "-o"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
    )
    payload = result.stdout.split("=>", 1)[1].strip() if "=>" in result.stdout else "{}"
    return result.returncode, json.loads(payload), result.stdout + result.stderr


def test_a_snapshot_lands_complete_then_is_not_downloaded_again(hub, tmp_path):
    dest = tmp_path / "models" / "toolkit--tiny"
    dest.parent.mkdir()
    rc, first, _ = snapshot(hub, dest)
    assert rc == 0, first
    assert first["changed"] is True
    assert sorted(path.name for path in dest.iterdir()) == [".hf_snapshot.json", "config.json", "model.safetensors"]
    assert json.loads((dest / ".hf_snapshot.json").read_text())["commit"] == hub.repos["toolkit/tiny"].commit
    requests_before = len(hub.requests)
    rc, second, _ = snapshot(hub, dest)
    assert (rc, second["changed"]) == (0, False)
    assert len(hub.requests) == requests_before + 1  # only the revision lookup


def test_a_gated_repo_needs_its_token_which_never_shows(hub, tmp_path):
    dest = tmp_path / "gated"
    rc, result, _ = snapshot(hub, dest, repo="toolkit/gated")
    assert rc != 0
    assert "401 Unauthorized (no token was sent)" in result["msg"]
    rc, result, _ = snapshot(hub, dest, repo="toolkit/gated", token="hf_wrong")
    assert "401 Unauthorized (the token was refused or lacks access)" in result["msg"]
    rc, result, output = snapshot(hub, dest, repo="toolkit/gated", token=TOKEN)
    assert rc == 0, result
    assert TOKEN not in output


def test_the_token_can_come_from_the_environment_of_the_module(hub, tmp_path):
    rc, result, output = snapshot(hub, tmp_path / "gated", repo="toolkit/gated", env_token=TOKEN)
    assert rc == 0, result
    assert TOKEN not in output


def test_unknown_repos_answer_401_without_a_token_and_404_with_one(hub, tmp_path):
    rc, result, _ = snapshot(hub, tmp_path / "x", repo="toolkit/typo")
    assert rc != 0
    assert "401 Unauthorized" in result["msg"]
    rc, result, _ = snapshot(hub, tmp_path / "x", repo="toolkit/typo", token=TOKEN)
    assert "toolkit/typo@" in result["msg"]
    assert "404 Not Found" in result["msg"]
    rc, result, _ = snapshot(hub, tmp_path / "x", revision="c" * 40)
    assert "404 Not Found (Invalid rev id" in result["msg"]


def test_rate_limits_are_retried_until_the_budget_is_spent(hub, tmp_path):
    hub.faults = [429, 503]
    rc, result, _ = snapshot(hub, tmp_path / "retried")
    assert rc == 0, result
    assert result["attempts"] == 2
    hub.faults = [429] * 3
    rc, result, _ = snapshot(hub, tmp_path / "limited", retries=2)
    assert rc != 0
    assert "429 Too Many Requests (rate-limited) after 3 attempts" in result["msg"]
    assert hub.faults == []


def test_a_failed_download_keeps_the_previous_snapshot_and_leaves_no_partial(hub, tmp_path):
    dest = tmp_path / "kept"
    rc, _, _ = snapshot(hub, dest)
    assert rc == 0
    before = (dest / ".hf_snapshot.json").read_text()
    hub.repos["toolkit/tiny"] = hf_hub_standin.Repo("toolkit/tiny", model_files(tmp_path / "tiny2", "v2"))
    hub.file_faults = {"model.safetensors": 500}  # the newer commit's weights never come
    rc, result, _ = snapshot(hub, dest, retries=1)
    assert rc != 0
    assert "500 from the Hub" in result["msg"]
    assert (dest / ".hf_snapshot.json").read_text() == before
    assert not Path(str(dest) + ".partial").exists()
