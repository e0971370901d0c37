"""Hugging Face downloads: the pure helpers, and the hf_snapshot module against the Hub stand-in.

Stand-in coverage: the Hub cannot be reached from CI, so tests/standins/hf_hub serves local
directories through the endpoints a snapshot download uses, with the Hub's 401/404 rules, its
files metadata, its redirect of LFS files to a CDN on another origin, and injected faults.
"""

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from llm_toolkit.host.llm_hf import (
    HubError,
    WriteError,
    backoff,
    check_file,
    check_request,
    classify,
    commit_of,
    files_to_fetch,
    follow_redirect,
    hasher,
    write_failure,
)

from tests.standins.hf_hub import hf_hub_standin
from tests.unit import disk_faults

REPO = Path(__file__).resolve().parents[2]

ANSIBLE = str(Path(sys.executable).parent / "ansible")
TOKEN = "hf_canary_token_0123456789"


def test_requests_must_name_a_repo_and_a_pinned_revision():
    assert check_request("casperhansen/mixtral-instruct-awq", "a" * 40) is None
    assert "owner/name" in check_request("mixtral", "a" * 40)
    assert "no revision" in check_request("o/n", "")
    assert "not a commit" in check_request("o/n", "../../etc")


@pytest.mark.parametrize(
    "revision",
    ["main", "v1.0", "a" * 39, "A" * 40, "a" * 41, "g" * 40, "a" * 40 + "\n"],
    ids=["branch", "tag", "short", "uppercase", "long", "not-hex", "trailing-newline"],
)
def test_a_branch_tag_or_short_id_is_refused_for_the_commit_shown_on_the_model_page(revision):
    problem = check_request("o/n", revision)
    assert problem.startswith(f"revision {revision!r} is not a commit id; expected the 40 lowercase hex digits")
    assert "fix: pin the commit shown on the model page" in problem
    assert "\n" not in problem.replace(repr(revision), "")


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
    error = classify(status, "o/n", "abc", "", TOKEN if with_token else "")
    assert error.retryable is retryable
    for word in words:
        assert word in str(error)
    assert str(error).startswith("o/n@abc: ")


def test_an_echoed_token_never_reaches_the_message():
    body = json.dumps({"error": f"Invalid credentials in Authorization header: Bearer {TOKEN}"})
    assert TOKEN not in str(classify(403, "o/n", "abc", body, TOKEN))
    assert "Bearer <token>" in str(classify(403, "o/n", "abc", body, TOKEN))


def test_only_the_files_a_model_directory_needs_are_fetched_each_with_its_checksum():
    info = {
        "sha": "b" * 40,
        "siblings": [
            {"rfilename": "config.json", "size": 10, "blobId": "c" * 40},
            {
                "rfilename": "model-00001-of-00002.safetensors",
                "size": 5,
                "blobId": "d" * 40,
                "lfs": {"size": 5, "sha256": "e" * 64, "pointerSize": 130},
            },
            {"rfilename": "pytorch_model.bin", "size": 99},
            {"rfilename": "README.md"},
            {"rfilename": "tokenizer.json", "size": 3, "blobId": "f" * 40},
        ],
    }
    assert files_to_fetch(info) == [
        {"name": "config.json", "size": 10, "blob_id": "c" * 40},
        {"name": "model-00001-of-00002.safetensors", "size": 5, "sha256": "e" * 64},
        {"name": "tokenizer.json", "size": 3, "blob_id": "f" * 40},
    ]
    assert commit_of(info) == "b" * 40


@pytest.mark.parametrize(
    "info",
    [
        {"sha": "b" * 40, "siblings": [{"rfilename": "../config.json", "size": 1, "blobId": "c" * 40}]},
        {
            "sha": "b" * 40,
            "siblings": [{"rfilename": "model.safetensors", "size": 1, "lfs": {"size": 1, "sha256": "e" * 64}}],
        },
        {"sha": "b" * 40, "siblings": [{"rfilename": "config.json", "size": 10}]},
        {"sha": "b" * 40, "siblings": [{"rfilename": "config.json", "blobId": "c" * 40}]},
        {
            "sha": "b" * 40,
            "siblings": [{"rfilename": "config.json"}, {"rfilename": "x.safetensors", "lfs": {"size": 1}}],
        },
    ],
)
def test_unsafe_names_snapshots_without_config_and_files_without_checksum_are_refused(info):
    with pytest.raises(HubError):
        files_to_fetch(info)


@pytest.mark.parametrize(
    ("item", "data"),
    [
        ({"name": "config.json", "size": 13, "blob_id": "b45ef6fec89518d314f546fd6c3025367b721684"}, b"Hello, World!"),
        ({"name": "w.safetensors", "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}, b"abc"),
    ],
)
def test_files_are_checked_by_git_blob_id_or_lfs_sha256(item, data):
    """b45ef6fe... is what `git hash-object` prints for b"Hello, World!" (huggingface_hub's git_hash docstring)."""
    digest = hasher(item)
    digest.update(data)
    check_file(item, len(data), digest.hexdigest())
    tampered = hasher(item)
    tampered.update(data[:-1] + b"?")
    with pytest.raises(HubError, match=r"differs from the \w+ the Hub listed"):
        check_file(item, len(data), tampered.hexdigest())
    with pytest.raises(HubError, match="bytes; the Hub listed"):
        check_file(item, len(data) - 1, digest.hexdigest())


HUB = "https://huggingface.co"
RESOLVE = f"{HUB}/o/n/resolve/c/w"


@pytest.mark.parametrize(
    ("endpoint", "current", "location", "authorized", "expected"),
    [
        (HUB, RESOLVE, "/o2/n/resolve/c/w", True, (f"{HUB}/o2/n/resolve/c/w", True)),  # a renamed repository
        (HUB, RESOLVE, "https://cdn-lfs.hf.co/x?sig=1", True, ("https://cdn-lfs.hf.co/x?sig=1", False)),
        (HUB, RESOLVE, "https://huggingface.co:8443/x", True, ("https://huggingface.co:8443/x", False)),
        (HUB, RESOLVE, "https://HuggingFace.co:443/x", True, ("https://HuggingFace.co:443/x", True)),
        (HUB, "https://cdn-lfs.hf.co/x", f"{HUB}/y", False, (f"{HUB}/y", False)),  # once dropped, never back
        ("http://127.0.0.1:1", "http://127.0.0.1:1/r", "http://127.0.0.1:2/x", True, ("http://127.0.0.1:2/x", False)),
        ("http://127.0.0.1:1", "http://127.0.0.1:1/r", "http://localhost:1/x", True, ("http://localhost:1/x", False)),
    ],
    ids=["renamed-repo", "cdn", "other-port", "same-origin", "once-dropped", "loopback-port", "loopback-host"],
)
def test_the_token_follows_a_redirect_only_within_the_endpoint_origin(
    endpoint, current, location, authorized, expected
):
    assert follow_redirect(current, location, endpoint, authorized) == expected


@pytest.mark.parametrize(
    "location", ["http://huggingface.co/x", "file:///etc/passwd", "ftp://x/y"], ids=["http", "file", "ftp"]
)
def test_a_redirect_from_https_to_http_or_another_scheme_is_refused(location):
    with pytest.raises(HubError, match="refused"):
        follow_redirect("https://huggingface.co/o/n/resolve/c/w", location, "https://huggingface.co", True)


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
    (directory / "tokenizer.json").write_text(json.dumps({"note": text}) * 2000)
    return directory


def serve(repos, tls=None):
    server = hf_hub_standin.start(("127.0.0.1", free_port()), repos, tls=tls)
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    return server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub(tmp_path):
    repos = [
        hf_hub_standin.Repo("toolkit/tiny", model_files(tmp_path / "tiny", "v1")),
        hf_hub_standin.Repo("toolkit/gated", model_files(tmp_path / "gated", "g"), token=TOKEN),
    ]
    server = serve(repos)
    yield server
    stop(server)


@pytest.fixture
def cdn(hub):
    """A second stand-in on another port, another origin: the hub redirects LFS files there (the Hub: to its CDN)."""
    server = serve(list(hub.repos.values()))
    hub.cdn = server.url
    yield server
    stop(server)


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, trusted by the module through SSL_CERT_FILE."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def snapshot(
    hub,
    dest: Path,
    repo: str = "toolkit/tiny",
    revision: str | None = None,
    token: str = "",
    env: dict | None = None,
    check: bool = False,
    **extra,
):
    """The module through `ansible localhost` (--check with check), the token as its argument (the roles' way)."""
    revision = revision or (hub.repos[repo].commit if repo in hub.repos else "a" * 40)
    args = {"repo": repo, "revision": revision, "dest": str(dest), "endpoint": hub.url, "backoff": 0, **extra}
    if token:
        args["token"] = token
    command = [ANSIBLE, "localhost", "-c", "local", "-m", "hf_snapshot", "-a", json.dumps(args), "-o"]
    if check:
        command.append("--check")
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), **(env or {})),
        check=False,
    )
    payload = result.stdout.split("=>", 1)[1].strip() if "=>" in result.stdout else "{}"
    return result.returncode, json.loads(payload), result.stdout + result.stderr


def leftovers(dest: Path) -> list[str]:
    """What a download left beside dest (a staging .partial, a .previous snapshot)."""
    return sorted(path.name for path in dest.parent.iterdir() if path.name.startswith(f"{dest.name}."))


def test_a_snapshot_lands_complete_then_a_rerun_needs_no_hub(hub, tmp_path):
    """Row 1 for this module: the second run changes nothing, and asks nothing of the Hub (stopped here)."""
    dest = tmp_path / "models" / "toolkit--tiny"
    dest.parent.mkdir()
    rc, first, _ = snapshot(hub, dest)
    assert rc == 0, first
    assert first["changed"] is True
    assert sorted(path.name for path in dest.iterdir()) == [
        ".hf_snapshot.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert json.loads((dest / ".hf_snapshot.json").read_text())["commit"] == hub.repos["toolkit/tiny"].commit
    assert leftovers(dest) == []
    requests_before = len(hub.requests)
    rc, second, _ = snapshot(hub, dest)
    assert (rc, second["changed"], second["files"]) == (0, False, first["files"])
    assert len(hub.requests) == requests_before
    stop(hub)
    for check in (False, True):
        rc, again, _ = snapshot(hub, dest, check=check)
        assert (rc, again["changed"]) == (0, False), again


def test_a_damaged_snapshot_on_disk_is_downloaded_again(hub, tmp_path):
    dest = tmp_path / "damaged"
    assert snapshot(hub, dest)[0] == 0
    with open(dest / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    rc, result, _ = snapshot(hub, dest, check=True)
    assert (rc, result["changed"]) == (0, True)
    assert (dest / "model.safetensors").stat().st_size == 1000  # check mode changed nothing
    rc, result, _ = snapshot(hub, dest)
    assert (rc, result["changed"]) == (0, True)
    assert (dest / "model.safetensors").read_bytes() == hub.repos["toolkit/tiny"].files[
        "model.safetensors"
    ].read_bytes()


def test_a_gated_repo_needs_its_token_which_never_shows(hub, tmp_path):
    dest = tmp_path / "models-gated"
    rc, result, _ = snapshot(hub, dest, repo="toolkit/gated")
    assert rc != 0
    assert "401 Unauthorized (no token was sent)" in result["msg"]
    rc, result, _ = snapshot(hub, dest, repo="toolkit/gated", token="hf_wrong")
    assert "401 Unauthorized (the token was refused or lacks access)" in result["msg"]
    rc, result, output = snapshot(hub, dest, repo="toolkit/gated", token=TOKEN)
    assert rc == 0, result
    assert TOKEN not in output


def test_hf_token_in_the_module_environment_is_not_used(hub, tmp_path):
    """The token reaches the module only as its no_log argument, never through a task's environment."""
    rc, result, _ = snapshot(hub, tmp_path / "models-gated", repo="toolkit/gated", env={"HF_TOKEN": TOKEN})
    assert rc != 0
    assert "401 Unauthorized (no token was sent)" in result["msg"]
    assert all(header is None for _path, header in hub.authorizations)


def test_the_token_stays_on_the_endpoint_origin_when_lfs_files_go_to_the_cdn(hub, cdn, tmp_path):
    """Row 4: a redirect to another origin (another port here) is followed without the Authorization header."""
    dest = tmp_path / "models-gated"
    rc, result, output = snapshot(hub, dest, repo="toolkit/gated", token=TOKEN)
    assert rc == 0, result
    assert TOKEN not in output
    weights = hub.repos["toolkit/gated"].files["model.safetensors"].read_bytes()
    assert cdn.authorizations == [(f"/cdn-lfs/{hashlib.sha256(weights).hexdigest()}", None)]
    assert {header for _, header in hub.authorizations} == {f"Bearer {TOKEN}"}
    assert (dest / "model.safetensors").read_bytes() == weights


def test_a_redirect_within_the_origin_keeps_the_token(hub, tmp_path):
    """A renamed repository answers a relative redirect on the same origin: the token is still needed there."""
    hub.renamed = {"toolkit/old-name": "toolkit/gated"}
    rc, result, _ = snapshot(
        hub, tmp_path / "renamed", repo="toolkit/old-name", revision=hub.repos["toolkit/gated"].commit, token=TOKEN
    )
    assert rc == 0, result
    assert any(path.startswith("/toolkit/gated/resolve/") for path, _ in hub.authorizations)
    assert {header for _, header in hub.authorizations} == {f"Bearer {TOKEN}"}


def test_a_redirect_from_https_to_http_is_refused_and_nothing_is_sent_there(hub, tmp_path, tls_cert):
    """Row 4: an https Hub that redirects a file to plain http is refused before any request goes there."""
    secure = serve(list(hub.repos.values()), tls=tls_cert)
    try:
        secure.redirects = {"model.safetensors": f"{hub.url}/cdn-lfs/x"}
        dest = tmp_path / "models-gated"
        rc, result, output = snapshot(
            secure, dest, repo="toolkit/gated", token=TOKEN, env={"SSL_CERT_FILE": tls_cert[0]}
        )
        assert rc != 0
        assert "from https to http (127.0.0.1); refused" in result["msg"], result
        assert "Traceback" not in output
        assert TOKEN not in output
        assert hub.requests == []
        assert not dest.exists()
        assert leftovers(dest) == []
        secure.redirects = {}
        rc, result, _ = snapshot(secure, dest, repo="toolkit/gated", token=TOKEN, env={"SSL_CERT_FILE": tls_cert[0]})
        assert rc == 0, result  # the same https Hub without the downgrade works: the refusal was the redirect
    finally:
        stop(secure)


def test_unknown_repos_answer_401_without_a_token_and_404_with_one(hub, tmp_path):
    rc, result, _ = snapshot(hub, tmp_path / "x", repo="toolkit/typo")
    assert rc != 0
    assert "401 Unauthorized" in result["msg"]
    rc, result, _ = snapshot(hub, tmp_path / "x", repo="toolkit/typo", token=TOKEN)
    assert "toolkit/typo@" in result["msg"]
    assert "404 Not Found" in result["msg"]
    rc, result, _ = snapshot(hub, tmp_path / "x", revision="c" * 40)
    assert "404 Not Found (Invalid rev id" in result["msg"]


def test_a_branch_name_is_refused_before_the_hub_is_asked(hub, tmp_path):
    rc, result, _ = snapshot(hub, tmp_path / "x", revision="main")
    assert rc != 0
    assert result["msg"].startswith("revision 'main' is not a commit id;")
    assert hub.requests == []


def test_rate_limits_are_retried_until_the_budget_is_spent(hub, tmp_path):
    """Row 17: 429 then 200 is retried; 429 forever ends in a clear error after the budget."""
    hub.faults = [429, 503]
    rc, result, _ = snapshot(hub, tmp_path / "retried")
    assert rc == 0, result
    assert result["attempts"] == 2
    hub.faults = [429] * 3
    rc, result, _ = snapshot(hub, tmp_path / "limited", retries=2)
    assert rc != 0
    assert "429 Too Many Requests (rate-limited) after 3 attempts" in result["msg"]
    assert hub.faults == []


@pytest.mark.parametrize("status", [500, 429])
def test_a_failed_download_keeps_the_previous_snapshot_and_leaves_no_partial(hub, tmp_path, status):
    """Rows 16 and 17: a file that never comes (429 forever included) leaves the active snapshot as it was."""
    dest = tmp_path / "kept"
    rc, _, _ = snapshot(hub, dest)
    assert rc == 0
    before = (dest / ".hf_snapshot.json").read_text()
    hub.repos["toolkit/tiny"] = hf_hub_standin.Repo("toolkit/tiny", model_files(tmp_path / "tiny2", "v2"))
    hub.file_faults = {"model.safetensors": status}  # the newer commit's weights never come
    rc, result, output = snapshot(hub, dest, retries=1, revision=hub.repos["toolkit/tiny"].commit)
    assert rc != 0
    assert {500: "500 from the Hub", 429: "429 Too Many Requests (rate-limited) after 2 attempts"}[status] in result[
        "msg"
    ]
    assert "Traceback" not in output
    assert (dest / ".hf_snapshot.json").read_text() == before
    assert leftovers(dest) == []


@pytest.mark.parametrize(("mode", "through_cdn"), [("length", True), ("chunked", False)])
def test_a_body_cut_mid_transfer_is_retried(hub, cdn, tmp_path, mode, through_cdn):
    """Row 16: a body cut short (Content-Length or chunked) is retried, and then lands whole."""
    if not through_cdn:
        hub.cdn = None
    weights = cdn if through_cdn else hub  # the LFS file comes from the CDN when the hub redirects it there
    weights.cuts["model.safetensors"] = [mode, mode]
    hub.cuts["tokenizer.json"] = [mode]
    dest = tmp_path / "cut"
    rc, result, output = snapshot(hub, dest, retries=3)
    assert rc == 0, output
    assert result["attempts"] == 3
    assert (weights.cuts["model.safetensors"], hub.cuts["tokenizer.json"]) == ([], [])
    for name in ("model.safetensors", "tokenizer.json"):
        assert (dest / name).read_bytes() == hub.repos["toolkit/tiny"].files[name].read_bytes()
    assert leftovers(dest) == []


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_a_body_cut_every_time_fails_cleanly_after_the_budget(hub, tmp_path, mode):
    """Row 16: no traceback, no staging directory, nothing at the active path."""
    hub.cuts = {"model.safetensors": [mode] * 3}
    dest = tmp_path / "cut"
    rc, result, output = snapshot(hub, dest, retries=2)
    assert rc != 0
    assert "Traceback" not in output
    assert result["msg"].startswith(f"toolkit/tiny@{hub.repos['toolkit/tiny'].commit}: ")
    assert result["msg"].endswith("after 3 attempts; fix: retry later, or set vllm_hf_token")
    assert {"length": "the transfer was cut after", "chunked": "IncompleteRead"}[mode] in result["msg"]
    assert not dest.exists()
    assert leftovers(dest) == []


@pytest.mark.parametrize(
    ("name", "kind", "through_cdn"),
    [
        ("model.safetensors", "sha256", True),
        ("model.safetensors", "sha256", False),
        ("tokenizer.json", "git blob id", False),
    ],
)
def test_a_corrupted_file_is_refused_before_the_snapshot_is_swapped_in(hub, cdn, tmp_path, name, kind, through_cdn):
    """Row 15: a file whose checksum is not the one the Hub listed replaces nothing."""
    if not through_cdn:
        hub.cdn = None
    dest = tmp_path / "kept"
    assert snapshot(hub, dest)[0] == 0
    before = {path.name: path.read_bytes() for path in dest.iterdir()}
    hub.repos["toolkit/tiny"] = hf_hub_standin.Repo("toolkit/tiny", model_files(tmp_path / "tiny2", "v2"))
    cdn.repos = hub.repos
    (cdn if through_cdn and name.endswith(".safetensors") else hub).corrupt = {name}
    rc, result, output = snapshot(hub, dest, revision=hub.repos["toolkit/tiny"].commit)
    assert rc != 0
    assert f"{name}: {kind} " in result["msg"]
    assert "differs from the" in result["msg"]
    assert "Traceback" not in output
    assert {path.name: path.read_bytes() for path in dest.iterdir()} == before
    assert leftovers(dest) == []


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs to download into: a real file system that fills up."""
    with disk_faults.small_disk(tmp_path / "disk") as disk:
        yield disk


def big_model(directory: Path, text: str) -> Path:
    """A model whose weights take several of the module's 1 MiB writes."""
    model_files(directory, text)
    (directory / "model.safetensors").write_bytes(os.urandom(3 << 20))
    return directory


@disk_faults.needs_root
def test_a_disk_that_fills_during_the_download_fails_in_one_line_and_keeps_the_previous_snapshot(
    hub, small_disk, tmp_path
):
    """Row 18: the disk fills mid-download (after preflight's check passed): one line with the path,
    "no space left" and the fix; the partial download removed; the previous snapshot as it was."""
    dest = small_disk / "models" / "toolkit--tiny"
    dest.parent.mkdir()
    hub.repos["toolkit/tiny"] = hf_hub_standin.Repo("toolkit/tiny", big_model(tmp_path / "v1", "v1"))
    assert snapshot(hub, dest)[0] == 0
    before = {path.name: path.read_bytes() for path in dest.iterdir()}
    newer = hf_hub_standin.Repo("toolkit/tiny", big_model(tmp_path / "v2", "v2"))
    hub.repos["toolkit/tiny"] = newer
    staged = dest.parent / f"{dest.name}.partial" / "model.safetensors"

    def first_block_written() -> bool:
        return staged.exists() and staged.stat().st_size >= 1 << 20

    hub.midway = {"model.safetensors": disk_faults.fill_once(small_disk, first_block_written)}
    rc, result, output = snapshot(hub, dest, revision=newer.commit)
    assert rc != 0
    assert result["msg"].startswith(
        f"toolkit/tiny@{newer.commit}: no space left on the file system of {dest} while writing model.safetensors "
        f"(after {1 << 20} bytes of it; "
    ), result["msg"]
    assert result["msg"].endswith(
        f"fix: free disk under {dest.parent} or point vllm_models_dir at a larger volume, then run again"
    )
    assert "\n" not in result["msg"]
    assert "Traceback" not in output
    assert result["attempts"] == 0  # a full disk is not the network's fault: no retry
    assert {path.name: path.read_bytes() for path in dest.iterdir()} == before
    assert leftovers(dest) == []
    hub.midway = {}
    (small_disk / "filler").unlink()  # the fix: space freed, the same run lands the newer snapshot
    rc, result, _ = snapshot(hub, dest, revision=newer.commit)
    assert rc == 0, result
    assert (dest / "model.safetensors").read_bytes() == newer.files["model.safetensors"].read_bytes()
    assert leftovers(dest) == []


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (WriteError("w.safetensors", 5, OSError(errno.ENOSPC, "No space left on device")), "no space left"),
        (WriteError("w.safetensors", 5, OSError(errno.EDQUOT, "Disk quota exceeded")), "no space left"),
        (OSError(errno.EACCES, "Permission denied", "/m/x.partial/config.json"), "cannot write config.json under"),
    ],
    ids=["full", "quota", "permission"],
)
def test_a_write_failure_is_one_line_naming_the_path_and_the_fix(error, words):
    message = write_failure("o/n@abc", "/m/x", error, 1_000_000, 3_000_000)
    assert message.startswith(f"o/n@abc: {words}")
    assert "/m/x" in message
    assert "the partial download was removed and the previous snapshot is kept; fix: " in message
    assert ("free disk under /m or point vllm_models_dir at a larger volume" in message) is (words == "no space left")
