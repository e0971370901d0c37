"""The Ollama stand-in's registry side and the ollama_pull module, on this machine (no lab host).

Stand-in coverage: the stand-in implements Ollama's API slice (docs/test-engines.md §4);
these tests hold it to Ollama's response shapes, NDJSON pull statuses, error texts and on-disk
layout, and run the role's ollama_pull module against it. Generation needs the stand-in's engine
(vLLM CPU) and is tested in the lab (tests/integration/test_ollama.py).
"""

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from tests.standins.ollama import depot
from tests.unit import disk_faults

REPO = Path(__file__).resolve().parents[2]

TAG = "mixtral:8x7b-instruct-v0.1-q4_K_M"
VERSION = "0.32.15"
ANSIBLE = str(Path(sys.executable).parent / "ansible")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Stand-in model files: the registry only needs files with real sizes and digests."""
    model = tmp_path_factory.mktemp("model")
    (model / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (model / "config.json").write_text('{"architectures": ["MixtralForCausalLM"]}')
    (model / "tokenizer.json").write_text("{}")
    return model


@pytest.fixture(scope="module")
def depot_server(tmp_path_factory, model_dir):
    """The depot on loopback; set its bytes_per_second to slow the downloads, and set it back to 0."""
    root = tmp_path_factory.mktemp("depot")
    url = f"http://127.0.0.1:{free_port()}"
    archive = depot.write_release(root, VERSION, url, "/nonexistent-runner-venv")
    depot.write_model(root, TAG, model_dir, "mixtral")
    server = depot.start_server(root, url)
    server.root, server.url, server.archive = root, url, archive
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def registry(depot_server):
    return depot_server.root, depot_server.url, depot_server.archive


def start_standin(archive: Path, where: Path):
    install = where / "install"
    install.mkdir()
    subprocess.run(["tar", "--extract", f"--file={archive}", f"--directory={install}"], check=True)
    port = free_port()
    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(where / "models"))
    process = subprocess.Popen(
        [str(install / "bin" / "ollama"), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(base, timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    return process, base, install


@pytest.fixture
def ollama(tmp_path, registry):
    """A stand-in server unpacked from the release archive, with an empty model directory."""
    process, base, install = start_standin(registry[2], tmp_path)
    yield base, tmp_path / "models", install
    process.terminate()
    process.wait(timeout=10)


def call(base: str, path: str, body: dict | None = None, method: str | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    response = requests.request(method or ("POST" if data else "GET"), base + path, data=data, timeout=30)
    return response.status_code, response.content


def lines(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def test_the_release_archive_is_laid_out_like_ollamas_and_its_checksum_file_matches(registry):
    root, _, archive = registry
    raw = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as release:
        names = set(release.getnames())
    assert {"bin/ollama", "lib/ollama/ollama_standin.py", "lib/ollama/standin.json"} <= names
    sums = (archive.parent / "sha256sum.txt").read_text().split()
    assert sums == [hashlib.sha256(archive.read_bytes()).hexdigest(), "./ollama-linux-amd64.tar.zst"]
    manifest = json.loads((root / "v2/library/mixtral/manifests/8x7b-instruct-v0.1-q4_K_M").read_text())
    for layer in [manifest["config"], *manifest["layers"]]:
        blob = root / "v2/library/mixtral/blobs" / layer["digest"]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"].split(":")[1]
        assert blob.stat().st_size == layer["size"]


def test_version_without_a_server_reports_the_client_version_like_ollama(ollama):
    _, _, install = ollama
    result = subprocess.run(
        [str(install / "bin" / "ollama"), "--version"],
        env=dict(os.environ, OLLAMA_HOST="127.0.0.1:9"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "Warning: could not connect to a running Ollama instance",
        f"Warning: client version is {VERSION}",
    ]


def test_liveness_and_version_answer_like_ollama(ollama):
    base, _, _ = ollama
    assert call(base, "/") == (200, b"Ollama is running")
    assert call(base, "/", method="HEAD")[0] == 200
    assert json.loads(call(base, "/api/version")[1]) == {"version": VERSION}
    assert json.loads(call(base, "/api/tags")[1]) == {"models": []}


def test_a_pull_streams_ollamas_statuses_and_stores_blobs_and_manifest(ollama, model_dir):
    base, models, _ = ollama
    status, raw = call(base, "/api/pull", {"model": TAG})
    assert status == 200
    events = lines(raw)
    statuses = [event["status"] for event in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [event for event in events if event.get("digest") and event.get("total") == 3 * 1024 * 1024 + 17]
    assert layer[-1]["completed"] == layer[-1]["total"]
    assert layer[0]["status"] == "pulling " + layer[0]["digest"].split(":")[1][:12]
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert (models / "blobs" / f"sha256-{digest}").is_file()
    manifest = models / "manifests/registry.ollama.ai/library/mixtral/8x7b-instruct-v0.1-q4_K_M"
    listed = json.loads(call(base, "/api/tags")[1])["models"]
    assert [(m["name"], m["digest"]) for m in listed] == [(TAG, hashlib.sha256(manifest.read_bytes()).hexdigest())]
    assert listed[0]["details"]["family"] == "mixtral"
    assert json.loads(call(base, "/api/pull", {"model": TAG, "stream": False})[1]) == {"status": "success"}


def test_an_unknown_tag_fails_with_ollamas_error_streamed_or_not(ollama):
    base, _, _ = ollama
    status, raw = call(base, "/api/pull", {"model": "mixtral:nope"})
    assert status == 200
    assert lines(raw)[-1] == {"error": "pull model manifest: file does not exist"}
    status, raw = call(base, "/api/pull", {"model": "mixtral:nope", "stream": False})
    assert (status, json.loads(raw)) == (500, {"error": "pull model manifest: file does not exist"})


def test_a_corrupt_blob_fails_the_digest_check_and_leaves_nothing(ollama, registry):
    base, models, _ = ollama
    root, _, _ = registry
    manifest_file = root / "v2/library/mixtral/manifests/8x7b-instruct-v0.1-q4_K_M"
    manifest = json.loads(manifest_file.read_text())
    blob = root / "v2/library/mixtral/blobs" / manifest["layers"][0]["digest"]
    original = blob.read_bytes()
    blob.write_bytes(b"x" + original[1:])
    try:
        event = lines(call(base, "/api/pull", {"model": TAG})[1])[-1]
    finally:
        blob.write_bytes(original)
    assert event["error"].startswith("digest mismatch, file must be downloaded again")
    assert not [path.name for path in (models / "blobs").iterdir() if "partial" in path.name]
    assert json.loads(call(base, "/api/tags")[1]) == {"models": []}


def test_a_manifest_with_a_path_in_its_digest_is_refused(ollama, registry):
    base, models, _ = ollama
    root, _, _ = registry
    evil = root / "v2/library/evil/manifests"
    evil.mkdir(parents=True, exist_ok=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../../etc/x", "size": 1}
    (evil / "latest").write_text(json.dumps({"config": layer, "layers": [layer]}))
    event = lines(call(base, "/api/pull", {"model": "evil"})[1])[-1]
    assert event["error"].startswith("invalid digest format")
    assert not (models / "manifests/registry.ollama.ai/library/evil").exists()


def test_copy_show_delete_and_unknown_models(ollama):
    base, models, _ = ollama
    call(base, "/api/pull", {"model": TAG})
    assert call(base, "/api/copy", {"source": TAG, "destination": "mixtral"})[0] == 200
    names = {m["name"] for m in json.loads(call(base, "/api/tags")[1])["models"]}
    assert names == {TAG, "mixtral:latest"}
    assert json.loads(call(base, "/api/show", {"model": "mixtral"})[1])["details"]["family"] == "mixtral"
    assert call(base, "/api/generate", {"model": "llama3:70b", "prompt": "hi"}) == (
        404,
        b'{"error": "model \'llama3:70b\' not found"}',
    )
    assert call(base, "/api/delete", {"model": TAG}, method="DELETE")[0] == 200
    assert call(base, "/api/delete", {"model": TAG}, method="DELETE")[0] == 404
    assert len(list((models / "blobs").iterdir())) > 0  # still used by the alias
    assert call(base, "/api/delete", {"model": "mixtral"}, method="DELETE")[0] == 200
    assert list((models / "blobs").iterdir()) == []


def run_pull(args: str, *options: str, **env: str) -> tuple[int, str, dict]:
    """`ansible localhost -m ollama_pull` (the action plugin over the module): rc, output, result."""
    result = subprocess.run(
        [ANSIBLE, "localhost", "-c", "local", "-m", "ollama_pull", "-a", args, "-o", *options],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(
            os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_INVENTORY_UNPARSED_WARNING="false", **env
        ),
        check=False,
    )
    answers = [line.split(" => ", 1)[1] for line in result.stdout.splitlines() if " => " in line]
    return result.returncode, result.stdout + result.stderr, json.loads(answers[-1] if answers else "{}")


def pull_module(args: str) -> tuple[int, dict]:
    rc, _, result = run_pull(args)
    return rc, result


def test_the_pull_module_pulls_once_then_reports_no_change(ollama, tmp_path):
    base, models, _ = ollama
    progress = tmp_path / "progress.json"
    rc, first = pull_module(f"name={TAG} url={base} models_dir={models} progress_file={progress}")
    assert rc == 0, first
    assert first["changed"] is True
    assert first["progress"]["success"] is True
    assert first["digest"] == json.loads(call(base, "/api/tags")[1])["models"][0]["digest"]
    assert json.loads(progress.read_text())["percent"] == 100.0
    rc, second = pull_module(f"name={TAG} url={base} models_dir={models}")
    assert (rc, second["changed"]) == (0, False)


def test_the_pull_module_fails_at_once_on_an_unknown_tag_and_removes_partials(ollama):
    base, models, _ = ollama
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    partial = models / "blobs" / ("sha256-" + "d" * 64 + "-partial")
    partial.write_bytes(b"half")
    rc, result = pull_module(f"name=mixtral:nope url={base} models_dir={models} retries=3 backoff=0")
    assert rc != 0
    assert result["unknown_tag"] is True
    assert result["attempts"] == 1
    assert result["msg"] == "unknown tag: pull model manifest: file does not exist"
    assert result["removed_partials"] == [partial.name]
    assert not partial.exists()


def test_the_pull_module_retries_network_errors_then_reports_them(tmp_path):
    rc, result = pull_module(f"name={TAG} url=http://127.0.0.1:{free_port()} models_dir={tmp_path}")
    assert rc != 0
    assert "cannot list the models of Ollama" in result["msg"]
    # A server whose registry cannot be reached: a network error, retried, then reported.
    dead_registry = f"http://127.0.0.1:{free_port()}"
    archive = depot.write_release(tmp_path / "depot", VERSION, dead_registry, "/nonexistent-runner-venv")
    process, base, _ = start_standin(archive, tmp_path)
    try:
        rc, result = pull_module(f"name={TAG} url={base} models_dir={tmp_path}/models retries=2 backoff=0")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert rc != 0
    assert result["attempts"] == 3
    assert result["unknown_tag"] is False
    assert "Connection refused" in result["msg"]


def test_the_pull_action_watches_a_slow_pull_in_one_task_and_shows_its_progress(ollama, depot_server, tmp_path):
    base, models, _ = ollama
    jobs = tmp_path / "async"
    progress = tmp_path / "progress.json"
    progress.write_text('{"status": "success", "success": true, "total": 9}')  # an earlier pull's, not shown
    depot_server.bytes_per_second = 1_000_000  # the 3.1 MB weights take about 3 s
    try:
        rc, output, result = run_pull(
            f"name={TAG} url={base} models_dir={models} progress_file={progress} poll_interval=0.05",
            ANSIBLE_ASYNC_DIR=str(jobs),
        )
    finally:
        depot_server.bytes_per_second = 0
    assert rc == 0, output
    assert result["digest"] == json.loads(call(base, "/api/tags")[1])["models"][0]["digest"]
    assert (result["changed"], result["attempts"], result["progress"]["success"]) == (True, 1, True)
    # One line per change of the progress file (the module rewrites it about once a second).
    shown = re.findall(
        rf"^\[localhost\] {re.escape(TAG)}: (\d+\.\d)% \(\S+ \S+ of 3\.1 MB\), pulling [0-9a-f]{{12}}$", output, re.M
    )
    assert 2 <= len(shown) < result["polls"] / 5, output
    assert [float(p) for p in shown] == sorted(float(p) for p in shown)
    assert "done (9 B)" not in output
    summary = re.search(
        rf"^\[localhost\] {re.escape(TAG)}: done \(3\.1 MB\); (\d+) polls in (\d+\.\d) s$", output, re.M
    )
    assert summary, output
    assert int(summary[1]) == result["polls"] > 20  # about 3 s at 0.05 s between polls
    assert float(summary[2]) >= 2
    assert list(jobs.iterdir()) == []  # the job's results file was removed


def test_the_pull_action_stops_a_pull_that_runs_out_of_time(ollama, depot_server, tmp_path):
    base, models, _ = ollama
    jobs = tmp_path / "async"
    depot_server.bytes_per_second = 500_000  # about 6 s: longer than the 4 s allowed
    try:
        rc, output, result = run_pull(
            f"name={TAG} url={base} models_dir={models} progress_file={tmp_path}/progress.json poll_interval=0.1 "
            "pull_timeout=4",
            ANSIBLE_ASYNC_DIR=str(jobs),
        )
    finally:
        depot_server.bytes_per_second = 0
    assert rc != 0, output
    assert re.search(rf"^\[localhost\] {re.escape(TAG)}: timeout; \d+ polls in 4\.\d s$", output, re.M), output
    assert result["timed_out"] is True
    message = result["msg"]
    assert message.startswith(f"localhost: the pull of {TAG} did not finish within 4 s (ollama_pull_timeout); ")
    assert re.search(
        r"; it got to \d+\.\d% \(\S+ \S+ of 3\.1 MB\), pulling [0-9a-f]{12} "
        r"at about \S+ KB/s, which needs about \d+ s more; ",
        message,
    ), message
    assert "fix: raise ollama_pull_timeout" in message
    group = re.search(r"stopped the background pull \(process group (\d+)\)", message)
    assert group, message
    assert not Path(f"/proc/{group[1]}").exists() or Path(f"/proc/{group[1]}/stat").read_text().split()[2] == "Z"
    assert list(jobs.iterdir()) == []
    assert json.loads(call(base, "/api/tags")[1]) == {"models": []}


def test_the_pull_action_in_check_mode_only_says_it_would_pull(ollama, tmp_path):
    base, models, _ = ollama
    rc, output, result = run_pull(f"name={TAG} url={base} models_dir={models} poll_interval=0", "--check")
    assert rc == 0, output
    assert (result["changed"], "polls" in result, "digest" in result) == (True, False, False)
    assert "polls in" not in output
    assert json.loads(call(base, "/api/tags")[1]) == {"models": []}


@disk_faults.needs_root
def test_a_disk_that_fills_during_a_pull_fails_at_once_with_the_fix_and_keeps_the_models_there(
    registry, depot_server, tmp_path
):
    """Row 18: the stand-in fails the pull as Ollama does ("write <blob>-partial: no space left on device",
    no retry); the module says so in one line with the path and the fix, removes the partial download,
    and the model pulled before, and the server, are untouched."""
    root, _, archive = registry
    with disk_faults.small_disk(tmp_path / "models") as models:
        process, base, _ = start_standin(archive, tmp_path)
        try:
            rc, first = pull_module(f"name={TAG} url={base} models_dir={models}")
            assert rc == 0, first
            other = tmp_path / "other"
            other.mkdir()
            (other / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024))
            (other / "config.json").write_text('{"architectures": ["Gemma2ForCausalLM"]}')
            depot.write_model(root, "gemma2:2b", other, "gemma2")
            kept = {path.name: path.read_bytes() for path in (models / "blobs").iterdir()}
            depot_server.bytes_per_second = 1_000_000

            def partly_written() -> bool:
                return any(path.stat().st_size for path in (models / "blobs").glob("sha256-*-partial"))

            filler = disk_faults.fill_in_background(models, partly_written)
            try:
                rc, result = pull_module(f"name=gemma2:2b url={base} models_dir={models} retries=2 backoff=0")
            finally:
                depot_server.bytes_per_second = 0
                filler.join(timeout=60)
            assert rc != 0
            assert result["attempts"] == 1  # a full disk is not retried
            where = re.escape(str(models))
            assert re.fullmatch(
                rf"pull failed: write {where}/blobs/sha256-[0-9a-f]{{64}}-partial: no space left on device; the "
                rf"file system of {where} filled up during the pull; the models already there are kept; fix: free "
                rf"disk under {where} or point ollama_models_dir at a larger volume, then run again",
                result["msg"],
            ), result["msg"]
            assert result["removed_partials"], result
            assert not list((models / "blobs").glob("*-partial*"))
            # the model pulled before is whole (Ollama keeps the new model's complete blobs for the next pull)
            assert {name: (models / "blobs" / name).read_bytes() for name in kept} == kept
            listed = {model["name"] for model in json.loads(call(base, "/api/tags")[1])["models"]}
            assert listed == {TAG}
            (models / "filler").unlink()  # the fix: space freed, the same pull lands
            rc, result = pull_module(f"name=gemma2:2b url={base} models_dir={models}")
            assert rc == 0, result
        finally:
            process.terminate()
            process.wait(timeout=10)
