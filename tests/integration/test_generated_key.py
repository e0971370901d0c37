"""The generated vLLM key on the session lab's CPU host (vLLM's CPU build, the tiny model), stage by
stage as an operator runs it (--tags vllm,env,smoke): with vllm_api_key empty the host makes its own
key once (root, 0600, directory 0700), vLLM requires it, the gateway and the smoke test use it (the
app's .env holds the gateway's key, not vLLM's), and
it shows on no command line and in no journal; a rerun changes nothing; -e vllm_api_key_rotate=true
makes a new one with exactly one restart, the old one is refused and no copy of it stays. Then an
operator's key that vllm.env must quote (a space, quotes, a backslash, `$`) reaches vLLM, the .env and
the verifiers unchanged, and the session's canary key is put back.

The keys never go onto a command line here either: every command the tests run on the host is run
by sudo, which logs it to the journal that the tests search. Keys move between files on the host
(install, cp) or through a pipe from the decoder of the verifiers (key_to_stdout).
"""

import io
import json
import time
from contextlib import contextmanager

import pytest
from dotenv import dotenv_values

from tests.integration.conftest import CANARY
from tests.integration.test_verify import ENV_PATH, verify
from tests.integration.test_vllm import CHAT, ITALIAN, invocation
from tests.verify.verify_helpers import key_to_stdout

HOST = "itest3"
KEY_FILE = "/etc/llm-toolkit/secrets/vllm_api_key"
# The gateway adds vLLM's key to the requests it sends vLLM (roles/llm_gateway): root-only, like vllm.env.
GATEWAY_CONFIG = "/etc/haproxy/haproxy.cfg"
# The tests' own files on the host: root-only, and left out of the searches for leftover keys.
WORK = "/root/keytest"
OLD_KEY = f"{WORK}/old-key"
SNAPSHOT = f"{WORK}/ps.txt"
# Every process's arguments, five times a second, while a playbook runs (short-lived processes
# escape a single snapshot).
SNAPSHOTTER = (
    f"systemd-run --unit=keytest-ps --collect -p StandardOutput=file:{SNAPSHOT} "
    "/bin/sh -c 'while :; do ps -eo args; sleep 0.2; done'"
)
# Files under these trees that hold one of the keys in the pattern file {patterns} (binary journal
# files included; the tests' own directory and the huge files of package caches left out).
FILES_HOLDING = (
    "find /etc /var /tmp /run /opt /home /srv /root -xdev -path {work} -prune -o -type f -size -64M -print0"
    " 2>/dev/null | xargs -0 -r grep -l -F -f {patterns} 2>/dev/null || true"
)
# An operator's key that vllm.env has to double-quote and escape, and python-dotenv to single-quote.
QUOTED = 'op key "quoted" \\ $HOME 50%'


def stages(session_lab, key: str, *args: str):
    """The vLLM, .env and smoke stages on the CPU host with this inventory key ("" generates one)."""
    return session_lab.playbook("--tags", "vllm,env,smoke", "--limit", HOST, *args, env={"LAB_VLLM_API_KEY": key})


def sh(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command[:200]}: exit {result.rc}: {result.stderr[-500:]}"
    return result.stdout


def read_key(host) -> str:
    with host.sudo():
        return host.file(KEY_FILE).content_string.strip()


def chat(host, key_source: str | None) -> str:
    """The Italian question to vLLM, with the key from the command key_source prints on the host
    (e.g. `cat FILE`), or with none."""
    if key_source:
        sh(host, f"umask 077; {key_source} > /root/key")
    try:
        return host.run(CHAT).stdout.strip()
    finally:
        host.run("rm -f /root/key")


@contextmanager
def command_lines_recorded(host):
    """Records every process's command line on the host while the block runs; yields a list that
    then holds the number of snapshots taken."""
    sh(host, f"rm -f {SNAPSHOT}; systemctl stop keytest-ps 2>/dev/null; {SNAPSHOTTER}")
    taken = []
    try:
        yield taken
    finally:
        host.run("systemctl stop keytest-ps")
        taken.append(int(sh(host, f"grep -c '^COMMAND' {SNAPSHOT} || true").strip() or 0))


def hits(host, patterns: str) -> dict:
    """Where the keys of the pattern file show on the host: process snapshots, journal, files."""
    count = f"grep -a -c -F -f {patterns}"
    return {
        "command lines": int(sh(host, f"{count} {SNAPSHOT} || true").strip() or 0),
        "journal": int(sh(host, f"journalctl -o export --no-pager | {count} || true").strip() or 0),
        "files": sh(host, FILES_HOLDING.format(work=WORK, patterns=patterns)).split(),
    }


def app_env(host) -> dict:
    with host.sudo():
        env = host.file(ENV_PATH)
        return {"mode": env.mode, "values": dotenv_values(stream=io.StringIO(env.content_string))}


def vllm_starts_since(host, since: int) -> int:
    return int(
        sh(host, f"journalctl -u vllm.service --since @{since} -o cat | grep -c '^Started vllm.service' || true")
    )


@pytest.fixture(scope="module")
def keyed_host(converged, session_lab):
    """The CPU host without a generated key yet; afterwards the session's canary key serves again
    (the following tests expect it), and the tests' files and the generated key are gone."""
    host = session_lab.host(HOST)
    sh(host, f"rm -rf {WORK} {KEY_FILE}; install -d -m 0700 {WORK}")
    state = {"restored": False}
    yield host, state
    if not state["restored"]:
        restored = stages(session_lab, CANARY)
        assert restored.returncode == 0, restored.output[-3000:]
    host.run(f"systemctl stop keytest-ps; rm -rf {WORK} {KEY_FILE} /root/key")


@pytest.fixture(scope="module")
def generated(keyed_host, session_lab):
    """The stages with an empty key, while the host records its command lines."""
    host, _ = keyed_host
    with command_lines_recorded(host) as snapshots:
        run = stages(session_lab, "")
    return host, run, snapshots[0]


def test_an_empty_key_makes_one_root_only_key_that_vllm_requires(generated):
    host, run, _ = generated
    assert run.returncode == 0, run.output[-4000:]
    stat = sh(host, f"stat -c '%U %G %a' {KEY_FILE} {KEY_FILE.rsplit('/', 1)[0]}").splitlines()
    assert stat == ["root root 600", "root root 700"]
    assert len(read_key(host)) == 43
    assert chat(host, f"cat {KEY_FILE}") == ITALIAN
    assert chat(host, None) == "401"


def test_the_apps_env_and_the_smoke_test_use_the_generated_key(generated):
    host, run, _ = generated
    env = app_env(host)
    assert env["mode"] == 0o600
    # The app talks to the gateway with the gateway's key; vLLM's key stays with vLLM and the gateway.
    assert "VLLM_API_KEY" not in env["values"]
    assert "vllm: smoke test passed: openai mixtral at http://127.0.0.1:8000 answered in" in run.output
    assert "openai mixtral at http://127.0.0.1:8080: 4 of 4 concurrent answers in Italian" in run.output


def test_the_generated_key_is_on_no_command_line_and_in_no_log_or_output(generated):
    host, run, snapshots = generated
    assert snapshots > 10, "the command lines were not recorded during the run"
    found = hits(host, KEY_FILE)
    assert found["command lines"] == 0 and found["journal"] == 0, found
    # The serving environment file and the wanted release's rendering beside it (docs/upgrades.md).
    expected = [KEY_FILE, "/etc/vllm/vllm.env", "/etc/vllm/candidate/vllm.env", GATEWAY_CONFIG]
    assert sorted(found["files"]) == sorted(expected), found["files"]
    leaked = read_key(host) in run.output
    assert not leaked, "the playbook's output shows the generated key"


def test_a_second_run_keeps_the_key_changes_nothing_and_restarts_nothing(generated, session_lab):
    host, _, _ = generated
    key, before = read_key(host), invocation(host)
    again = stages(session_lab, "")
    assert again.returncode == 0, again.output[-3000:]
    assert again.recap[HOST]["changed"] == 0, again.output[-3000:]
    assert invocation(host) == before
    kept = read_key(host) == key
    assert kept, "a rerun replaced the generated key"
    check = stages(session_lab, "", "--check")
    assert check.returncode == 0, check.output[-3000:]
    assert check.recap[HOST]["changed"] == 0, check.output[-3000:]


@pytest.fixture(scope="module")
def rotated(generated, session_lab):
    """-e vllm_api_key_rotate=true, the old key kept by the test in its own root-only directory."""
    host, _, _ = generated
    sh(host, f"install -m 0600 {KEY_FILE} {OLD_KEY}")
    before, since = invocation(host), int(time.time())
    with command_lines_recorded(host) as snapshots:
        run = stages(session_lab, "", "-e", "vllm_api_key_rotate=true")
    return host, run, before, since, snapshots[0]


def test_rotation_makes_a_new_key_restarts_vllm_once_and_refuses_the_old_key(rotated):
    host, run, before, since, _ = rotated
    assert run.returncode == 0, run.output[-4000:]
    new = read_key(host)
    assert len(new) == 43
    assert sh(host, f"cmp -s {KEY_FILE} {OLD_KEY} && echo same || echo different").strip() == "different"
    assert vllm_starts_since(host, since) == 1
    assert invocation(host) != before
    assert chat(host, f"cat {KEY_FILE}") == ITALIAN
    assert chat(host, f"cat {OLD_KEY}") == "401"
    assert "vllm: smoke test passed" in run.output
    assert "4 of 4 concurrent answers in Italian" in run.output  # it sends the new key to vLLM


def test_rotation_updates_the_env_and_leaves_no_copy_of_the_old_key(rotated):
    host, run, _, _, snapshots = rotated
    assert "VLLM_API_KEY" not in app_env(host)["values"]
    assert snapshots > 10, "the command lines were not recorded during the run"
    found = hits(host, OLD_KEY)
    assert found == {"command lines": 0, "journal": 0, "files": []}, found
    assert hits(host, KEY_FILE)["command lines"] == 0
    assert sh(host, f"ls -A {KEY_FILE.rsplit('/', 1)[0]}").split() == ["gateway_api_key", "vllm_api_key"]
    with host.sudo():
        old = host.file(OLD_KEY).content_string.strip()
    leaked = old in run.output or read_key(host) in run.output
    assert not leaked, "the playbook's output shows a key"


@pytest.fixture(scope="module")
def operator_key(rotated, session_lab):
    """An operator's key that needs quoting in vllm.env, then the verifiers on the host."""
    run = stages(session_lab, QUOTED)
    return rotated[0], run, verify(session_lab)


def test_an_operators_quoted_key_reaches_vllm_the_env_and_the_verifiers_unchanged(operator_key):
    host, run, summary = operator_key
    assert run.returncode == 0, run.output[-4000:]
    assert "vllm: smoke test passed" in run.output
    # The gateway's configuration quotes it for HAProxy: requests through the gateway reach vLLM.
    assert "4 of 4 concurrent answers in Italian" in run.output
    assert chat(host, key_to_stdout()) == ITALIAN
    assert summary["rc"] == 0, summary["hosts"][HOST]["failed"]
    passed = set(summary["hosts"][HOST]["passed"])
    for check in (
        "test_backends::test_the_backend_lists_its_model[vllm]",
        "test_backends::test_the_italian_smoke_test_passes[vllm]",
        "test_secrets_and_env::test_no_secret_is_on_any_process_command_line",
    ):
        assert check in passed, sorted(passed)
    leaked = QUOTED in run.output or QUOTED in json.dumps(summary)
    assert not leaked, "the operator's key shows in the output"


def test_the_sessions_canary_key_is_put_back_and_serves(operator_key, keyed_host, session_lab):
    host, state = keyed_host
    before = invocation(host)
    restored = stages(session_lab, CANARY)
    state["restored"] = True
    assert restored.returncode == 0, restored.output[-3000:]
    assert invocation(host) != before
    assert "4 of 4 concurrent answers in Italian" in restored.output
    assert chat(host, key_to_stdout()) == ITALIAN
    assert chat(host, None) == "401"
