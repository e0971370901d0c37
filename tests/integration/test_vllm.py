"""Phase 2 on the CPU lab's host (conftest.cpu_lab): the real vLLM CPU build, as a hardened systemd service,
serving the tiny model."""

import json
import re
import threading
import time
from urllib.parse import urlsplit

import pytest
import yaml

from tests.integration.conftest import CANARY, CPU_LAB, REPO, lab
from tests.standins.hf_hub import hf_hub_standin
from tests.standins.ollama import depot

HOST = f"{CPU_LAB}1"  # the CPU lab's host (conftest.cpu_lab)
HF_CANARY = "hf_canary_3b9d1e"
HF_REPO = "toolkit-tests/tiny-mixtral"
HUB_PORT = 8766
# The CPU host with simulated GPUs stays a CPU-build host (`scripts/lab gpu` makes the inventory
# call it a GPU host); the lab serves 512 tokens, and preflight plans for the same context.
SIMULATE_2_GPUS = [
    "-e",
    "llm_accelerator=cpu",
    "-e",
    "vllm_cpu_simulates_gpus=true",
    "-e",
    "vllm_max_model_len=512",
]
ITALIAN = "Ciao! Sono un piccolo modello di prova. Posso rispondere in italiano."
CHAT = """python3 - <<'EOF'
import json, urllib.request, urllib.error
headers = {"Content-Type": "application/json"}
key = open("/root/key").read().strip() if __import__("os").path.exists("/root/key") else ""
if key:
    headers["Authorization"] = "Bearer " + key
body = {"model": "mixtral", "messages": [{"role": "user", "content": "Ciao, come posso aiutarti?"}],
        "max_tokens": 30, "temperature": 0}
request = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", json.dumps(body).encode(), headers)
try:
    print(json.load(urllib.request.urlopen(request, timeout=60))["choices"][0]["message"]["content"].strip())
except urllib.error.HTTPError as error:
    print(error.code)
EOF"""


def phase2(cpu_lab, tiny_model, *args):
    return cpu_lab.playbook(
        "--tags",
        "phase2",
        "--limit",
        HOST,
        "-e",
        f"vllm_api_key={CANARY}",
        *args,
        env={"LAB_MODEL_DIR": str(tiny_model)},
    )


def invocation(host) -> str:
    return host.run("systemctl show -p InvocationID --value vllm.service").stdout.strip()


def chat(host, with_key: bool) -> str:
    if with_key:
        host.run(f"umask 077; echo {CANARY} > /root/key")
    try:
        return host.run(CHAT).stdout.strip()
    finally:
        host.run("rm -f /root/key")


def test_first_run_converges_and_serves_the_italian_prompt_in_italian(cpu_lab):
    """The CPU lab's first run (site.yml on a fresh host, both backends) installed phase 2."""
    assert cpu_lab.first.recap[HOST]["changed"] > 0
    host = cpu_lab.host(HOST)
    assert host.service("vllm.service").is_running
    assert host.service("vllm.service").is_enabled
    assert chat(host, with_key=True) == ITALIAN


def test_the_api_refuses_requests_without_the_key(cpu_lab):
    assert chat(cpu_lab.host(HOST), with_key=False) == "401"


def test_the_api_listens_on_loopback_only(cpu_lab):
    listeners = cpu_lab.host(HOST).run("ss -Hltn 'sport = :8000'").stdout.split()
    assert "127.0.0.1:8000" in listeners
    assert "0.0.0.0:8000" not in listeners


def test_the_key_is_in_a_private_file_never_on_a_command_line(cpu_lab):
    host = cpu_lab.host(HOST)
    env = host.file("/etc/vllm/vllm.env")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    assert f"VLLM_API_KEY={CANARY}" in env.content_string
    assert CANARY not in host.run("systemctl show -p ExecStart vllm.service").stdout
    pids = host.run("pgrep -u vllm").stdout.split()
    assert pids, "vLLM runs no process as the vllm user"
    for pid in pids:
        assert CANARY not in host.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout
    assert CANARY not in cpu_lab.first.output


def test_the_unit_verifies_and_is_hardened(cpu_lab):
    host = cpu_lab.host(HOST)
    assert host.run("systemd-analyze verify --recursive-errors=no /etc/systemd/system/vllm.service").rc == 0
    security = host.run("systemd-analyze security --no-pager vllm.service").stdout.splitlines()[-1]
    exposure = float(security.split("vllm.service:")[1].split()[0])
    assert exposure <= 3.3, security


def test_a_second_run_changes_nothing_and_restarts_nothing(cpu_lab, tiny_model):
    host = cpu_lab.host(HOST)
    before = invocation(host)
    again = phase2(cpu_lab, tiny_model)
    assert again.returncode == 0, again.output[-3000:]
    assert again.recap[HOST]["changed"] == 0
    assert invocation(host) == before
    check = phase2(cpu_lab, tiny_model, "--check")
    assert check.returncode == 0, check.output[-3000:]
    assert check.recap[HOST]["changed"] == 0


def test_a_public_bind_without_a_key_is_refused_before_anything_changes(cpu_lab, tiny_model):
    host = cpu_lab.host(HOST)
    before = invocation(host)
    env_before = host.file("/etc/vllm/vllm.env").sha256sum
    run = cpu_lab.playbook("--tags", "phase2", "--limit", HOST, "-e", "vllm_host=0.0.0.0", env={"LAB_VLLM_API_KEY": ""})
    assert run.returncode != 0
    assert f"{HOST}: vllm_host=0.0.0.0 without vllm_api_key" in run.output
    assert run.recap[HOST]["changed"] == 0
    assert invocation(host) == before
    assert host.file("/etc/vllm/vllm.env").sha256sum == env_before


def test_every_socket_of_the_service_is_on_loopback(cpu_lab):
    """vLLM binds its workers' gloo sockets to the host's address unless VLLM_HOST_IP says otherwise."""
    listeners = cpu_lab.host(HOST).run("ss -Htlnp").stdout.splitlines()
    ours = [line for line in listeners if "vllm" in line.lower()]
    assert len(ours) > 1, listeners
    assert all(line.split()[3].startswith("127.0.0.1:") for line in ours), ours


def test_a_max_model_len_over_the_models_context_is_refused_before_anything_changes(cpu_lab, tiny_model):
    host = cpu_lab.host(HOST)
    before = invocation(host)
    run = phase2(cpu_lab, tiny_model, "-e", "vllm_max_model_len=4096")
    assert run.returncode != 0
    assert f"{HOST}: vllm_max_model_len=4096; expected at most 2048, the context of the model" in run.output
    assert run.recap[HOST]["changed"] == 0
    assert invocation(host) == before


def test_a_release_that_cannot_start_is_rolled_back_and_the_old_one_keeps_serving(cpu_lab, tiny_model):
    """A bad flag: the new release is tried for this boot only, fails until systemd gives up on it (its
    start limit, not the readiness budget), and the release that served before serves again; the run
    fails with the reason and the journal, and nothing of the bad release is left in systemd's units."""
    host = cpu_lab.host(HOST)
    unit_before = host.file("/etc/systemd/system/vllm.service").sha256sum
    # A budget far longer than five failed starts take: the wait must end when systemd gives up.
    broken = phase2(
        cpu_lab, tiny_model, "-e", '{"vllm_extra_args": ["--no-such-flag"]}', "-e", "vllm_ready_timeout=400"
    )
    try:
        assert broken.returncode != 0
        said = " ".join(broken.output.split())
        assert f"{HOST}: the new vLLM release (" in said, broken.output[-3000:]
        assert re.search(
            r"\) did not answer: systemd gave up on it after \d+ restarts; rolled back: the release that "
            r"served before serves again",
            said,
        ), broken.output[-3000:]
        assert "unrecognized arguments: --no-such-flag" in broken.output
        state = host.run("systemctl show -p ActiveState -p FragmentPath vllm.service").stdout
        assert "ActiveState=active" in state, state
        assert "FragmentPath=/etc/systemd/system/vllm.service" in state, state
        assert "--no-such-flag" not in host.run("systemctl show -p ExecStart vllm.service").stdout
        assert host.file("/etc/systemd/system/vllm.service").sha256sum == unit_before
        assert not host.file("/run/systemd/system.control/vllm.service").exists
        assert chat(host, with_key=True) == ITALIAN
    finally:
        restored = phase2(cpu_lab, tiny_model)
    assert restored.returncode == 0, restored.output[-3000:]


# Fault injector for a slow start: vLLM's own process sleeps before it runs, while the unit is active
# (Type=exec: started once the program is executed), so clients see "connection refused" as they do
# while vLLM loads a large model (it binds its port before loading, and listen()s only when ready).
# It is a sitecustomize module on PYTHONPATH that only vllm.service gets (a drop-in), taken out of the
# environment by the first process, so that vLLM's engine and worker processes start without it.
SLOW_START_S = 30
SLOW_START_DIR = "/run/llm-test-slow-start"
SLOW_START_DROP_IN = "/etc/systemd/system/vllm.service.d/zz-test-slow-start.conf"
SLOW_START_HOOK = """import os, sys, time
delay = os.environ.pop("LLM_TEST_SLOW_START_S", "")
if delay:
    print(f"fault injector: slow start, {delay} s before vLLM runs", file=sys.stderr, flush=True)
    time.sleep(float(delay))
"""


def install_slow_start(host, drop_in: str, seconds: int) -> None:
    """The slow-start fault injector for vllm.service: its hook in SLOW_START_DIR, its drop-in at drop_in."""
    installed = host.run(
        f"mkdir -p {SLOW_START_DIR} {drop_in.rsplit('/', 1)[0]}\n"
        f"cat > {SLOW_START_DIR}/sitecustomize.py <<'EOF'\n{SLOW_START_HOOK}EOF\n"
        f"cat > {drop_in} <<'EOF'\n[Service]\n"
        f"Environment=PYTHONPATH={SLOW_START_DIR} LLM_TEST_SLOW_START_S={seconds}\nEOF\n"
        f"chmod 0755 {SLOW_START_DIR} && chmod 0644 {SLOW_START_DIR}/sitecustomize.py {drop_in}"
        " && systemctl daemon-reload"
    )
    assert installed.rc == 0, installed.stderr


def test_a_config_change_restarts_once_and_a_slow_start_is_waited_for_without_a_restart(cpu_lab, tiny_model):
    """A serving flag changes (vllm_max_model_len): the service starts exactly once and serves again.
    Row 19 in the same restart: vLLM is slow to start, and connection refused after a (re)start means
    "still loading"; the readiness wait keeps waiting (vllm_ready_timeout), the run succeeds after one
    start, and nothing restarts the service."""
    host = cpu_lab.host(HOST)
    install_slow_start(host, SLOW_START_DROP_IN, SLOW_START_S)
    since = int(time.time())
    try:
        slow = phase2(cpu_lab, tiny_model, "-e", "vllm_max_model_len=256")  # a change: one restart
        journal = host.run(f"journalctl -u vllm.service --since @{since} -o cat --no-pager").stdout
        state = host.run("systemctl show -p ActiveState -p NRestarts vllm.service").stdout
    finally:
        host.run(f"rm -rf {SLOW_START_DROP_IN} {SLOW_START_DIR} && systemctl daemon-reload")
    try:
        assert slow.returncode == 0, slow.output[-3000:]
        assert f"fault injector: slow start, {SLOW_START_S} s before vLLM runs" in journal, journal[-2000:]
        # the wait saw the refused connections and kept asking, within its budget
        retries = [line for line in slow.output.splitlines() if line.startswith(f"FAILED - RETRYING: [{HOST}]: ")]
        assert any("probe | Wait until the API lists the served model" in line for line in retries), retries
        assert len([line for line in journal.splitlines() if line.startswith("Started vllm.service")]) == 1, journal
        assert "ActiveState=active" in state, state
        assert "NRestarts=0" in state, state
        assert "--max-model-len 256" in host.run("systemctl show -p ExecStart vllm.service").stdout
        assert chat(host, with_key=True) == ITALIAN
    finally:
        restored = phase2(cpu_lab, tiny_model)
    assert restored.returncode == 0, restored.output[-3000:]


def test_an_engine_that_exits_cleanly_is_restarted_and_serves_again(cpu_lab):
    """A clean exit (status 0) is a death too: vLLM's server can exit 0 when its engine dies, which
    Restart=on-failure would leave down. SIGTERM makes the real server shut down and exit 0."""
    host = cpu_lab.host(HOST)
    since = int(time.time())
    before = host.run("systemctl show -p MainPID -p NRestarts vllm.service").stdout
    host.run("kill -TERM $(systemctl show -p MainPID --value vllm.service)")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and chat(host, with_key=True) != ITALIAN:
        time.sleep(5)
    journal = host.run(f"journalctl -u vllm.service --since @{since} -o cat --no-pager").stdout
    assert "vllm.service: Deactivated successfully." in journal, journal[-2000:]  # it exited 0
    assert "Scheduled restart job" in journal, journal[-2000:]
    after = host.run("systemctl show -p MainPID -p NRestarts vllm.service").stdout
    assert after != before
    assert chat(host, with_key=True) == ITALIAN


# Runs on the host as root: one streamed request for many long answers (n sequences of max_tokens
# each, ignore_eos), `systemctl stop vllm` once the first chunks arrived, then the stream read to its
# end. Prints what arrived, when the last chunk came, and how long the stop took.
IN_FLIGHT = """python3 - <<'EOF'
import json, subprocess, time, urllib.request
key = next(line.split("=", 1)[1].strip().strip('"') for line in open("/etc/vllm/vllm.env")
           if line.startswith("VLLM_API_KEY="))
body = {"model": "mixtral", "messages": [{"role": "user", "content": "Come posso lavare la mia auto?"}],
        "max_tokens": %(max_tokens)d, "n": %(n)d, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}}
request = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "Authorization": "Bearer " + key})
chunks, reasons, usage, stop, error, last = 0, [], None, None, None, None
try:
    with urllib.request.urlopen(request, timeout=300) as answer:
        for line in answer:
            line = line.decode().strip()
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            chunks, last = chunks + 1, time.time()
            usage = data.get("usage") or usage
            reasons += [choice["finish_reason"] for choice in data.get("choices", []) if choice.get("finish_reason")]
            if chunks == 5:
                stop, stop_started = subprocess.Popen(["systemctl", "stop", "vllm.service"]), time.monotonic()
except Exception as exc:  # what a cut stream raises is the finding
    error = repr(exc)
ended = time.time()
stop_s = None
if stop is not None:
    stop.wait()
    stop_s = round(time.monotonic() - stop_started, 1)
print(json.dumps({"chunks": chunks, "reasons": reasons, "usage": usage, "error": error, "last_chunk": last,
                  "ended": ended, "stop_s": stop_s}))
EOF"""
# Enough work that the stop's SIGTERM, which comes after the gateway drained vLLM (ExecStop), finds
# the engine still generating (the drain step is slow while the engine holds both cores): about 15 s
# of work on the 2-core lab machine, SIGTERM after 2 to 9 s of it, the rest well inside the 30 s drain.
# A machine fast enough to finish before the SIGTERM proves nothing: the test then asks twice as much.
# A machine so slow (or busy) that the answers outlast the whole drain gets them cut by design, at the
# end of --shutdown-timeout (the stream breaks, or ends with answers missing): the test then asks half
# as much. A cut before the drain's end is the bug. Measured: 160 answers outlasted the drain on the
# 2-core machine while another lab ran beside it, so the first try asks 96.
IN_FLIGHT_N, IN_FLIGHT_TOKENS = 96, 490
IN_FLIGHT_DRAIN_S = yaml.safe_load((REPO / "roles" / "vllm" / "defaults" / "main.yml").read_text())[
    "vllm_shutdown_timeout"
]  # the lab leaves the role's default


def stop_during_answers(host, answers: int) -> tuple[dict, str, list[float]]:
    """The probe's report, vLLM's journal of the stop, and when vLLM logged its SIGTERM; vLLM started again."""
    since = int(time.time())
    try:
        result = host.run(IN_FLIGHT % {"n": answers, "max_tokens": IN_FLIGHT_TOKENS})
        assert result.rc == 0, result.stderr
        journal = host.run(f"journalctl -u vllm.service --since @{since} -o short-unix --no-pager").stdout
    finally:
        host.run("systemctl start vllm.service")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and chat(host, with_key=True) != ITALIAN:
        time.sleep(2)
    triggered = [float(line.split()[0]) for line in journal.splitlines() if "shutdown triggered" in line]
    return json.loads(result.stdout), journal, triggered


def cut(report: dict, answers: int) -> bool:
    """The stream broke, or ended with answers missing (the server closed it at the drain's end)."""
    return report["error"] is not None or len(report["reasons"]) < answers


def test_a_request_in_flight_when_vllm_stops_gets_its_whole_answer(cpu_lab):
    """`systemctl stop` (an upgrade, a restart, a reboot) lets the answers being written finish: the
    API server alone gets SIGTERM (KillMode=mixed) and drains for --shutdown-timeout. With the
    default control-group the engine got SIGTERM too and every answer in flight was cut."""
    host = cpu_lab.host(HOST)
    answers = IN_FLIGHT_N
    for _ in range(3):
        report, journal, triggered = stop_during_answers(host, answers)
        if not triggered:
            break
        if report["error"] is None and report["last_chunk"] and triggered[0] >= report["last_chunk"]:
            answers *= 2  # all written before the stop reached vLLM: ask for more
        elif cut(report, answers) and report["ended"] - triggered[0] >= IN_FLIGHT_DRAIN_S - 1:
            answers //= 2  # the drain ran its whole course and cut the rest, as it should: ask for less
        else:
            break
    # The stop reached vLLM while the answer was still being written: it proves the drain.
    assert triggered and report["last_chunk"] and triggered[0] < report["last_chunk"], (report, journal[-3000:])
    assert report["error"] is None, (report, journal[-3000:])
    assert report["reasons"] == ["length"] * answers, report
    assert report["usage"]["completion_tokens"] == answers * IN_FLIGHT_TOKENS, report
    assert "Stopped vllm.service" in journal, journal[-3000:]
    assert chat(host, with_key=True) == ITALIAN


@pytest.fixture(scope="module")
def hub(cpu_lab, tiny_model):
    """The Hugging Face Hub stand-in on the lab bridge, serving the tiny model as a gated repository."""
    address = urlsplit(depot.lab_url(cpu_lab.name, HUB_PORT))
    server = hf_hub_standin.start(
        (address.hostname, address.port), [hf_hub_standin.Repo(HF_REPO, tiny_model, HF_CANARY)]
    )
    server.url = f"http://{address.hostname}:{address.port}"
    yield server
    server.shutdown()
    server.server_close()


def test_a_pinned_hugging_face_snapshot_is_downloaded_retried_and_served(cpu_lab, tiny_model, hub):
    """Stand-in coverage: tests/standins/hf_hub answers for the Hub (no Hub on CI machines)."""
    host = cpu_lab.host(HOST)
    source = {
        "vllm_model_source": "huggingface",
        "vllm_hf_repo": HF_REPO,
        "vllm_hf_revision": hub.repos[HF_REPO].commit,
        "vllm_hf_endpoint": hub.url,
    }
    hub.faults = [429, 503]
    try:
        run = phase2(cpu_lab, tiny_model, "-e", json.dumps({**source, "vllm_hf_token": HF_CANARY}))
        assert run.returncode == 0, run.output[-3000:]
        assert hub.faults == []
        assert HF_CANARY not in run.output
        assert (
            f"/var/lib/vllm/models/{HF_REPO.replace('/', '--')}@{hub.repos[HF_REPO].commit}"
            in host.run("systemctl show -p ExecStart vllm.service").stdout
        )
        assert chat(host, with_key=True) == ITALIAN
        snapshot = f"/var/lib/vllm/models/{HF_REPO.replace('/', '--')}@{hub.repos[HF_REPO].commit}"
        marker = json.loads(host.file(f"{snapshot}/.hf_snapshot.json").content)
        assert marker["commit"] == hub.repos[HF_REPO].commit
        for pid in host.run("pgrep -u vllm").stdout.split():
            assert HF_CANARY not in host.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline; cat /proc/{pid}/environ").stdout
        assert HF_CANARY not in host.file("/etc/vllm/vllm.env").content_string

        before = invocation(host)
        asked = len(hub.requests)
        rerun = phase2(cpu_lab, tiny_model, "-e", json.dumps(source))  # the snapshot on disk needs no Hub
        assert rerun.returncode == 0, rerun.output[-3000:]
        assert rerun.recap[HOST]["changed"] == 0
        assert len(hub.requests) == asked

        newer = {**source, "vllm_hf_revision": "0" * 40}  # a commit not on disk, without the token
        refused = phase2(cpu_lab, tiny_model, "-e", json.dumps(newer))
        assert refused.returncode != 0
        assert f"{HOST}: Hugging Face download failed: {HF_REPO}@" in refused.output
        assert "401 Unauthorized (no token was sent)" in refused.output
        assert refused.recap[HOST]["changed"] == 0
        branch = phase2(cpu_lab, tiny_model, "-e", json.dumps({**source, "vllm_hf_revision": "main"}))
        assert branch.returncode != 0
        assert f"{HOST}: vllm_hf_repo={HF_REPO}, vllm_hf_revision=main; expected an owner/name" in branch.output
        assert "fix: pin the commit shown on the model page" in branch.output
        assert branch.recap[HOST]["changed"] == 0
        assert invocation(host) == before
    finally:
        restored = phase2(cpu_lab, tiny_model)
    assert restored.returncode == 0, restored.output[-3000:]


def test_a_simulated_two_gpu_host_gets_tp2_from_the_planner_and_runs_two_cpu_workers(cpu_lab, tiny_model):
    """The multi-GPU path on the CPU build: the planner's TP for two simulated 6 GB GPUs, two real CPU workers."""
    host = cpu_lab.host(HOST)
    lab(cpu_lab.name, "gpu", HOST, "2x-A2000-6GB")
    try:
        before = invocation(host)
        refused = phase2(cpu_lab, tiny_model, *SIMULATE_2_GPUS, "-e", "vllm_tensor_parallel_size=3")
        assert refused.returncode != 0
        assert (
            f"{HOST}: tensor-parallel size 3 for mistral-7b-instruct (awq) on 2 GPU(s) is not valid" in refused.output
        )
        assert refused.recap[HOST]["changed"] == 0
        assert invocation(host) == before
        run = phase2(cpu_lab, tiny_model, *SIMULATE_2_GPUS)
        assert run.returncode == 0, run.output[-3000:]
        assert "--tensor-parallel-size 2" in host.run("systemctl show -p ExecStart vllm.service").stdout
        assert "VLLM_CPU_OMP_THREADS_BIND=0|1" in host.file("/etc/vllm/vllm.env").content_string
        workers = host.run("ps -u vllm -o comm=").stdout.split()
        assert len([name for name in workers if name.startswith("VLLM::Worker_TP")]) == 2, workers
        assert chat(host, with_key=True) == ITALIAN
    finally:
        lab(cpu_lab.name, "gpu", HOST, "none")
        restored = phase2(cpu_lab, tiny_model)
    assert restored.returncode == 0, restored.output[-3000:]
    assert "--tensor-parallel-size" not in host.run("systemctl show -p ExecStart vllm.service").stdout


def boot_id(host) -> str:
    """The host's boot id, or "" while it cannot be reached (rebooting)."""
    try:
        return host.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    except Exception:  # testinfra's ansible backend raises while the host is down
        return ""


def test_a_reboot_in_the_middle_of_an_upgrade_comes_back_on_the_serving_release(cpu_lab, tiny_model):
    """Issue 15: the host reboots while a new release (a changed serving flag) is being tried. The trial
    unit lived in /run, so the host comes back serving the release that served before, never with no
    service; the next run finds it serving what the inventory wants and restarts nothing."""
    host = cpu_lab.host(HOST)
    # The slow-start fault injector, in /run this time: the reboot takes it away with the trial unit.
    drop_in = "/run/systemd/system/vllm.service.d/zz-test-slow-start.conf"
    install_slow_start(host, drop_in, 120)
    before_boot, since = boot_id(host), int(time.time())
    upgrade: list = []
    running = threading.Thread(
        target=lambda: upgrade.append(phase2(cpu_lab, tiny_model, "-e", "vllm_max_model_len=256"))
    )
    running.start()
    try:
        deadline = time.monotonic() + 300
        while (
            "fault injector: slow start" not in host.run(f"journalctl -u vllm.service --since @{since} -o cat").stdout
        ):
            assert time.monotonic() < deadline and running.is_alive(), "the new release was never tried"
            time.sleep(2)
        assert "--max-model-len 256" in host.run("systemctl show -p ExecStart vllm.service").stdout
        assert host.run("systemd-run --on-active=1 /bin/systemctl reboot").rc == 0
        deadline = time.monotonic() + 180
        while boot_id(host) in ("", before_boot):
            assert time.monotonic() < deadline, "the host did not come back from its reboot"
            time.sleep(2)
        host.run("systemctl is-system-running --wait")
        deadline = time.monotonic() + 300
        while chat(host, with_key=True) != ITALIAN:
            assert time.monotonic() < deadline, host.run("journalctl -b -u vllm.service -o cat | tail -30").stdout
            time.sleep(3)
    finally:
        running.join(timeout=900)
    assert upgrade and upgrade[0].returncode != 0, "the run kept a release that was not running"
    said = " ".join(upgrade[0].output.split())
    # The run either lost the host during the reboot, or saw it back on the old release and refused to keep it.
    assert "UNREACHABLE!" in said or (
        f"{HOST}: the new vLLM release (" in said and ") was not running when it was checked" in said
    ), upgrade[0].output[-3000:]
    assert not host.file(drop_in).exists
    assert not host.file("/run/systemd/system.control/vllm.service").exists
    assert "--max-model-len 512" in host.run("systemctl show -p ExecStart vllm.service").stdout  # the lab's
    assert host.service("vllm.service").is_running
    before = invocation(host)
    rerun = phase2(cpu_lab, tiny_model)
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert invocation(host) == before
