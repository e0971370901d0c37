"""Phase 1 on lab hosts: the ollama role against the test-only Ollama stand-in.

Stand-in coverage: no real Ollama binary can be had on a CI machine, so the role installs the
Ollama stand-in (tests/standins/ollama) from the lab's depot, served on the lab bridge as a
release archive with a sha256sum.txt, and pulls from the depot's registry. What is real: the
role's download, checksum, unpack, version check and switch; the hardened systemd unit and its
drop-in; Ollama's API shapes, NDJSON pull and error texts as the stand-in implements them; the
model files pulled with their sha256 checked; and every generated token, which comes from
vLLM's CPU build running the tiny test model. What is not: the Ollama binary itself, GGUF
models and GPU residency (on the simulated-GPU host the stand-in reports the model in VRAM
because nvidia-smi lists a GPU, as Ollama would).
"""

import hashlib
import json
import os
import re

from tests.integration.conftest import BROKEN_OLLAMA as BROKEN
from tests.integration.conftest import LAB_HOME
from tests.integration.conftest import NEW_OLLAMA as NEW
from tests.integration.conftest import OLD_OLLAMA as OLD
from tests.standins.ollama import depot

CPU_HOST = "itest3"
GPU_HOST = "itest1"  # simulated 4x A100 40GB
HOSTS = f"{GPU_HOST},{CPU_HOST}"
MIXTRAL = "mixtral:8x7b-instruct-v0.1-q4_K_M"

CHAT = """python3 - <<'EOF'
import json, urllib.request
body = {"model": "%s", "messages": [{"role": "user", "content": "Ciao, come posso aiutarti?"}],
        "stream": False, "options": {"temperature": 0}}
request = urllib.request.Request("http://127.0.0.1:11434/api/chat", json.dumps(body).encode())
print(json.load(urllib.request.urlopen(request, timeout=300))["message"]["content"].strip())
EOF"""


def phase1(session_lab, depot_url, *args, limit=HOSTS):
    """The ollama role alone (--tags ollama): its own input checks, not preflight's, which the main flow
    runs, and which would refuse the stand-in's made-up new release on a GPU host (no gates for it)."""
    return session_lab.playbook("--tags", "ollama", "--limit", limit, *args, env={"LAB_OLLAMA_DEPOT": depot_url})


def api(host, path: str) -> dict:
    return json.loads(host.run(f"curl -sf http://127.0.0.1:11434{path}").stdout or "{}")


def invocation(host) -> str:
    return host.run("systemctl show -p InvocationID --value ollama.service").stdout.strip()


def test_first_run_installs_pulls_and_warms_up(converged, session_lab):
    """The main command's first run (the session's `make lab` on fresh hosts) installed phase 1."""
    for name in (CPU_HOST, GPU_HOST):
        assert converged.first.recap[name]["changed"] > 0
        host = session_lab.host(name)
        assert host.service("ollama.service").is_enabled
        assert host.service("ollama.service").is_running
        assert api(host, "/api/version") == {"version": OLD}
        names = {model["name"] for model in api(host, "/api/tags")["models"]}
        assert {MIXTRAL, "gemma2:2b", "mixtral:latest"} <= names
        assert MIXTRAL in {model["name"] for model in api(host, "/api/ps")["models"]}
    assert "pull | Read the result of the pull" in converged.first.output


def test_an_italian_chat_gets_an_italian_answer_from_the_model_and_its_alias(converged, session_lab):
    host = session_lab.host(CPU_HOST)
    for model in (MIXTRAL, "mixtral"):
        answer = host.run(CHAT % model).stdout.strip()
        assert "italiano" in answer, answer


def test_the_model_is_in_gpu_memory_on_the_gpu_host_and_in_ram_on_the_cpu_host(converged, session_lab):
    gpu = api(session_lab.host(GPU_HOST), "/api/ps")["models"][0]
    cpu = api(session_lab.host(CPU_HOST), "/api/ps")["models"][0]
    assert gpu["size_vram"] == gpu["size"] > 0
    assert cpu["size_vram"] == 0


def test_the_service_listens_on_loopback_only_and_carries_its_hardening(converged, session_lab):
    for name in (CPU_HOST, GPU_HOST):
        host = session_lab.host(name)
        listeners = host.run("ss -Htln 'sport = :11434'").stdout.split()
        assert "127.0.0.1:11434" in listeners
        assert not [item for item in listeners if item.endswith(":11434") and item != "127.0.0.1:11434"]
        unit = host.file("/etc/systemd/system/ollama.service").content_string
        assert "NoNewPrivileges=true" in unit
        assert "ExecStart=/opt/ollama/current/bin/ollama serve" in unit
        dropin = host.file("/etc/systemd/system/ollama.service.d/toolkit.conf").content_string
        for setting in ("OLLAMA_HOST=127.0.0.1:11434", "OLLAMA_NUM_PARALLEL=3", "OLLAMA_LOAD_TIMEOUT=15m"):
            assert setting in dropin
        assert host.run("systemd-analyze verify /etc/systemd/system/ollama.service").rc == 0
        assert host.file("/var/lib/ollama/models").mode == 0o700
    gpu_unit = session_lab.host(GPU_HOST).file("/etc/systemd/system/ollama.service").content_string
    assert "DeviceAllow=char-nvidia-frontend rw" in gpu_unit
    assert "ExecStartPre=/usr/bin/nvidia-smi -L" in gpu_unit
    score = session_lab.host(CPU_HOST).run("systemd-analyze security --offline=true ollama.service | tail -1").stdout
    assert float(score.split("exposure level for ollama.service:")[1].split()[0]) <= 2.5, score


def test_second_run_changes_nothing_and_restarts_nothing(converged, session_lab, depot_url):
    before = {name: invocation(session_lab.host(name)) for name in (CPU_HOST, GPU_HOST)}
    second = phase1(session_lab, depot_url)
    assert second.returncode == 0, second.output[-4000:]
    assert second.recap[CPU_HOST]["changed"] == 0
    assert second.recap[GPU_HOST]["changed"] == 0
    assert {name: invocation(session_lab.host(name)) for name in (CPU_HOST, GPU_HOST)} == before


def test_check_mode_on_the_converged_hosts_reports_no_change(converged, session_lab, depot_url):
    check = phase1(session_lab, depot_url, "--check")
    assert check.returncode == 0, check.output[-4000:]
    assert check.recap[CPU_HOST]["changed"] == 0
    assert check.recap[GPU_HOST]["changed"] == 0


def test_a_wrong_checksum_fails_and_the_old_release_keeps_serving(converged, session_lab, depot_url):
    host = session_lab.host(CPU_HOST)
    before = invocation(host)
    run = phase1(session_lab, depot_url, "-e", f"ollama_version={NEW}", "-e", f"ollama_archive_sha256={'0' * 64}")
    assert run.returncode != 0
    assert "did not match" in run.output
    assert host.file("/opt/ollama/current").linked_to == f"/opt/ollama/releases/{OLD}"
    assert not host.file(f"/opt/ollama/releases/{NEW}").exists
    assert not host.file(f"/opt/ollama/downloads/{NEW}-ollama-linux-amd64.tar.zst").exists
    assert invocation(host) == before
    assert api(host, "/api/version") == {"version": OLD}


def test_an_upgrade_switches_after_the_check_and_a_downgrade_switches_back(converged, session_lab, depot_url):
    host = session_lab.host(CPU_HOST)
    upgrade = phase1(session_lab, depot_url, "-e", f"ollama_version={NEW}", limit=CPU_HOST)
    assert upgrade.returncode == 0, upgrade.output[-4000:]
    assert api(host, "/api/version") == {"version": NEW}
    assert host.file(f"/opt/ollama/releases/{OLD}/bin/ollama").exists
    back = phase1(session_lab, depot_url, limit=CPU_HOST)
    assert back.returncode == 0, back.output[-4000:]
    assert api(host, "/api/version") == {"version": OLD}
    assert "italiano" in host.run(CHAT % "mixtral").stdout


def test_a_new_release_that_cannot_serve_is_switched_back_and_the_old_one_serves(converged, session_lab, depot_url):
    """Issue 15: a new Ollama release that installs (its archive and version check pass) but cannot start
    its server is on trial until it answers: once systemd gives up on it, the current link goes back, the
    release that served before starts again, and the run fails naming both; a rerun changes nothing."""
    host = session_lab.host(CPU_HOST)
    run = phase1(session_lab, depot_url, "-e", f"ollama_version={BROKEN}", limit=CPU_HOST)
    assert run.returncode != 0
    said = " ".join(run.output.split())
    assert (
        f"{CPU_HOST}: the new Ollama release {BROKEN} failed its trial and Ollama {OLD}, the release that served"
        f" before, serves again: ollama.service did not answer on http://127.0.0.1:11434 as version {BROKEN}"
        " and systemd gave up on it after"
    ) in said, run.output[-4000:]
    assert "cannot start its server (stand-in fault injector)" in said  # the journal's reason
    assert (
        "fix: check the release (ollama_version, ollama_release_url, the journal above), or pin ollama_version"
        f" to {OLD}"
    ) in said
    assert host.file("/opt/ollama/current").linked_to == f"/opt/ollama/releases/{OLD}"
    assert api(host, "/api/version") == {"version": OLD}
    assert "italiano" in host.run(CHAT % "mixtral").stdout
    before = invocation(host)
    again = phase1(session_lab, depot_url, limit=CPU_HOST)
    assert again.returncode == 0, again.output[-4000:]
    assert again.recap[CPU_HOST]["changed"] == 0, again.output[-4000:]
    assert invocation(host) == before


def test_a_plain_run_refuses_to_switch_more_serving_hosts_than_one_batch(converged, session_lab, depot_url):
    """Issue 15: a plain run that would restart Ollama on both serving hosts at once refuses before either
    switches, and points to playbooks/upgrade.yml."""
    hosts = [session_lab.host(name) for name in (GPU_HOST, CPU_HOST)]
    before = [invocation(host) for host in hosts]
    run = phase1(session_lab, depot_url, "-e", f"ollama_version={NEW}")
    assert run.returncode != 0
    said = " ".join(run.output.split())
    assert (
        f"2 serving hosts would switch Ollama's release at once ({GPU_HOST}, {CPU_HOST}); expected at most"
        " llm_upgrade_serial=1; fix: run playbooks/upgrade.yml"
    ) in said, run.output[-4000:]
    for host, invocation_before in zip(hosts, before, strict=True):
        assert host.file("/opt/ollama/current").linked_to == f"/opt/ollama/releases/{OLD}"
        assert invocation(host) == invocation_before


def test_an_unknown_tag_fails_with_ollamas_error_and_the_catalogs_tag(converged, session_lab, depot_url):
    run = phase1(session_lab, depot_url, "-e", '{"ollama_models": ["mixtral:8x7b-instruct-v0.1-q5_0"]}', limit=CPU_HOST)
    assert run.returncode != 0
    assert f"{CPU_HOST}: Ollama could not pull mixtral:8x7b-instruct-v0.1-q5_0" in run.output
    assert "pull model manifest: file does not exist" in run.output
    assert f"fix: use {MIXTRAL}, the catalog's closest tag" in run.output
    blobs = session_lab.host(CPU_HOST).run("ls /var/lib/ollama/models/blobs").stdout
    assert "partial" not in blobs


def test_a_tag_the_catalog_knows_is_not_real_is_refused_before_any_change(converged, session_lab, depot_url):
    run = phase1(session_lab, depot_url, "-e", '{"ollama_models": ["mixtral:8x7b-instruct-q4_K_M"]}', limit=CPU_HOST)
    assert run.returncode != 0
    assert f"fix: use {MIXTRAL}" in run.output
    assert run.recap[CPU_HOST]["changed"] == 0


def test_a_full_disk_is_refused_before_the_pull_and_changes_nothing(converged, session_lab, depot_url):
    host = session_lab.host(CPU_HOST)
    assert host.run("mkdir -p /srv/small && mount -t tmpfs -o size=2m tmpfs /srv/small").rc == 0
    try:
        run = phase1(
            session_lab,
            depot_url,
            "-e",
            "ollama_models_dir=/srv/small/models",
            "-e",
            "ollama_disk_margin_gb=0",
            limit=CPU_HOST,
        )
        assert run.returncode != 0
        assert f"{CPU_HOST}: 2.1 MB free under /srv/small/models; expected 20.0 MB" in run.output
        assert run.recap[CPU_HOST]["changed"] == 0
        assert not host.file("/srv/small/models").exists
        assert (
            "OLLAMA_MODELS=/var/lib/ollama/models"
            in host.file("/etc/systemd/system/ollama.service.d/toolkit.conf").content_string
        )
    finally:
        host.run("umount /srv/small")


# Fault injector for a disk that fills during a pull: once a blob of the pull has bytes on disk,
# another writer on the host takes all the space left on the small file system the models are on.
FILL_ONCE_PARTIAL = (
    'nohup timeout 300 sh -c \'until find /srv/small/models/blobs -name "sha256-*-partial" -size +0 '
    "| grep -q .; do sleep 0.05; done; dd if=/dev/zero of=/srv/small/filler bs=64k' >/dev/null 2>&1 & "
    "echo $! > /run/llm-test-filler.pid"
)
MODEL_FILES = "cd /srv/small/models && find . -type f | sort | xargs sha256sum"


def test_a_disk_that_fills_during_a_pull_fails_with_the_fix_and_the_models_keep_serving(
    converged, session_lab, depot_server, depot_url, tmp_path
):
    """Row 18: the disk fills mid-pull (after the free-disk check passed): the run stops in one line
    naming the host, the blob, "no space left" and the fix; the partial download is removed; the models
    already there, and the service, are untouched and still answer."""
    host = session_lab.host(CPU_HOST)
    other = tmp_path / "fillup"
    other.mkdir()
    (other / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024))
    (other / "config.json").write_text('{"architectures": ["Gemma2ForCausalLM"]}')
    depot.write_model(LAB_HOME / "depots" / f"{session_lab.name}-tests", "fillup:1b", other, "gemma2")
    small = ["-e", "ollama_models_dir=/srv/small/models", "-e", "ollama_disk_margin_gb=0"]
    with_fillup = ["-e", json.dumps({"ollama_models": [MIXTRAL, "gemma2:2b", "fillup:1b"]})]
    assert host.run("mkdir -p /srv/small && mount -t tmpfs -o size=64m tmpfs /srv/small").rc == 0
    try:
        moved = phase1(session_lab, depot_url, *small, limit=CPU_HOST)  # the models on the small disk
        assert moved.returncode == 0, moved.output[-3000:]
        before = invocation(host)
        kept = host.run(MODEL_FILES).stdout
        assert host.run(FILL_ONCE_PARTIAL).rc == 0
        depot_server.bytes_per_second = 150_000  # the 3 MB weights take about 20 s: the disk fills meanwhile
        try:
            run = phase1(session_lab, depot_url, *small, *with_fillup, limit=CPU_HOST)
        finally:
            depot_server.bytes_per_second = 0
        assert run.returncode != 0
        assert re.search(
            rf"{CPU_HOST}: Ollama could not pull fillup:1b: write /srv/small/models/blobs/sha256-[0-9a-f]{{64}}"
            r"-partial: no space left on device \(partial downloads removed\); the file system of /srv/small/models "
            r"filled up during the pull; the models already there are kept; fix: free disk under /srv/small/models "
            r"or point ollama_models_dir at a larger volume, then run again",
            run.output,
        ), run.output[-3000:]
        assert host.run("ls /srv/small/models/blobs | grep -c partial").stdout.strip() == "0"
        # the models already there are whole (complete blobs of the new model may stay, as Ollama keeps them)
        assert set(kept.splitlines()) <= set(host.run(MODEL_FILES).stdout.splitlines())
        names = {model["name"] for model in api(host, "/api/tags")["models"]}
        assert {MIXTRAL, "gemma2:2b"} <= names
        assert "fillup:1b" not in names
        assert invocation(host) == before
        assert "italiano" in host.run(CHAT % MIXTRAL).stdout
    finally:
        host.run("kill $(cat /run/llm-test-filler.pid) 2>/dev/null; rm -f /srv/small/filler /run/llm-test-filler.pid")
        restored = phase1(session_lab, depot_url, limit=CPU_HOST)
        host.run("umount /srv/small || umount --lazy /srv/small")
    assert restored.returncode == 0, restored.output[-3000:]


def test_a_public_bind_without_a_front_end_is_refused_before_any_change(converged, session_lab, depot_url):
    run = phase1(session_lab, depot_url, "-e", "ollama_host=0.0.0.0", limit=CPU_HOST)
    assert run.returncode != 0
    assert f"{CPU_HOST}: ollama_host=0.0.0.0 without ollama_auth_front_end" in run.output
    assert run.recap[CPU_HOST]["changed"] == 0
    assert "127.0.0.1:11434" in session_lab.host(CPU_HOST).run("ss -Htln 'sport = :11434'").stdout


def test_pruning_is_opt_in_and_removes_what_is_no_longer_wanted(converged, session_lab, depot_url):
    host = session_lab.host(CPU_HOST)
    keep_only = ["-e", f'{{"ollama_models": ["{MIXTRAL}"]}}']
    kept = phase1(session_lab, depot_url, *keep_only, limit=CPU_HOST)
    assert kept.returncode == 0, kept.output[-3000:]
    assert "gemma2:2b" in {model["name"] for model in api(host, "/api/tags")["models"]}
    pruned = phase1(session_lab, depot_url, *keep_only, "-e", "ollama_prune_models=true", limit=CPU_HOST)
    assert pruned.returncode == 0, pruned.output[-3000:]
    names = {model["name"] for model in api(host, "/api/tags")["models"]}
    assert names == {MIXTRAL, "mixtral:latest"}
    restored = phase1(session_lab, depot_url, limit=CPU_HOST)
    assert restored.returncode == 0, restored.output[-3000:]
    assert "gemma2:2b" in {model["name"] for model in api(host, "/api/tags")["models"]}


def test_a_long_pull_reports_its_progress_in_percent_and_bytes(
    converged, session_lab, depot_server, depot_url, tiny_model
):
    host = session_lab.host(CPU_HOST)
    host.run('curl -sf -X DELETE http://127.0.0.1:11434/api/delete -d \'{"model": "gemma2:2b"}\'')
    # Every lab tag is the tiny model: drop its weights blob too, so that the pull downloads it again.
    weights = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    assert host.run(f"rm /var/lib/ollama/models/blobs/sha256-{weights}").rc == 0
    # The 4.2 MB model now takes about 28 s, polled every 0.01 s: hundreds of polls in one task,
    # where the role's old loop (a task per poll, including itself again) died after about 250.
    depot_server.bytes_per_second = 150_000
    try:
        run = phase1(session_lab, depot_url, "-e", "ollama_pull_poll_interval=0.01", limit=CPU_HOST)
    finally:
        depot_server.bytes_per_second = 0
    assert run.returncode == 0, run.output[-3000:]
    progress = r"\[itest3\] gemma2:2b: \d+\.\d% \(\d+\.\d MB of 4\.2 MB\), pulling [0-9a-f]{12}$"
    lines = re.findall(progress, run.output, re.M)
    assert lines, run.output[-3000:]
    summary = re.search(r"^\[itest3\] gemma2:2b: done \(4\.2 MB\); (\d+) polls in (\d+\.\d) s$", run.output, re.M)
    assert summary, run.output[-3000:]
    polls, seconds = int(summary[1]), float(summary[2])
    print(f"{polls} polls in {seconds} s: {1000 * seconds / polls:.1f} ms per poll over ssh, 10 ms pause included")
    assert polls > 300
    assert len(lines) < polls / 10  # a line only when the progress changed
    assert "gemma2:2b" in {model["name"] for model in api(host, "/api/tags")["models"]}
    assert host.run("ls -A /root/.ansible_async").stdout.strip() == ""  # the job's results file was removed


def test_a_gpu_host_whose_model_loads_on_the_cpu_fails_the_warm_up(converged, session_lab, depot_url):
    hide_gpus = ["-e", '{"ollama_extra_environment": {"CUDA_VISIBLE_DEVICES": "-1"}}']
    run = phase1(session_lab, depot_url, *hide_gpus, limit=GPU_HOST)
    assert run.returncode != 0
    assert f"{GPU_HOST}: {MIXTRAL} loaded on the CPU (size_vram 0 in /api/ps); expected it in GPU memory" in run.output
    # The alias moves to a new first model only after its warm-up passed (roles/ollama/tasks/switch.yml).
    assert "switch | Point the alias at the first model" not in run.output
    repaired = phase1(session_lab, depot_url, limit=GPU_HOST)
    assert repaired.returncode == 0, repaired.output[-3000:]
    assert api(session_lab.host(GPU_HOST), "/api/ps")["models"][0]["size_vram"] > 0
