"""Issue 15 on the session lab's CPU host: an upgrade under load that drops no request, the previous
release kept and restored by playbooks/rollback.yml, and a rerun that changes nothing (docs/upgrades.md).

playbooks/upgrade.yml moves the host to a new revision of the tiny model while a steady stream of
Italian requests goes through the host's gateway. A new vLLM version takes the same path (the release
is the venv, the model revision, the flags and the environment together): its drill, which installs a
second vLLM build, runs on the CPU lab (tests/integration/test_vllm_version.py)."""

from __future__ import annotations

import shutil
import time

from tests.integration.conftest import CANARY
from tests.integration.gateway_load import outcome, start_load, stop_load
from tests.integration.test_vllm import CHAT, ITALIAN

HOST = "itest3"  # the session lab's CPU host
RELEASE = "0.32.0"  # the lab layer's vLLM


def run(session_lab, model_dir, *args, playbook="playbooks/site.yml"):
    tags = ("--tags", "phase2") if playbook.endswith("site.yml") else ()
    return session_lab.playbook(
        *tags, "--limit", HOST, "-e", f"vllm_api_key={CANARY}", *args,
        playbook=playbook, env={"LAB_MODEL_DIR": str(model_dir)},
    )  # fmt: skip


def serving(host) -> str:
    return host.run("systemctl show -p ExecStart --value vllm.service").stdout


def serving_model(host) -> str:
    """The model directory vLLM serves (the argument after `serve`)."""
    return serving(host).split(" serve ")[1].split()[0]


def test_an_upgrade_under_load_drops_no_request_keeps_the_previous_release_and_rolls_back(
    converged, session_lab, tiny_model, tmp_path
):
    host = session_lab.host(HOST)
    # A new revision of the model: the same files and one more (its fingerprint, so its directory, differs).
    revised = tmp_path / "revised" / tiny_model.name
    shutil.copytree(tiny_model, revised)
    (revised / "REVISION").write_text("2\n")

    assert f"/opt/vllm/releases/{RELEASE}/bin/vllm" in serving(host)
    old_model = serving_model(host)
    assert f"/{tiny_model.name}@" in old_model, old_model

    start_load(host)
    try:
        revision = run(session_lab, revised, playbook="playbooks/upgrade.yml")
        assert revision.returncode == 0, revision.output[-3000:]
        new_model = serving_model(host)
        assert new_model != old_model and f"/{tiny_model.name}@" in new_model, new_model
        time.sleep(5)  # requests after the switch, on the new revision
    finally:
        records = stop_load(host)
    failed, backends = outcome(records, "upgrade under load")
    assert len(records) >= 20, records
    assert failed == [], failed[:5]
    assert {"vllm", "ollama"} <= backends, backends  # the fallback carried the traffic during the switches

    again = run(session_lab, revised, playbook="playbooks/upgrade.yml")
    assert again.returncode == 0, again.output[-3000:]
    assert again.recap[HOST]["changed"] == 0, again.output[-3000:]

    # The serving model revision and the previous one stay (vllm_releases_kept); the venv stays one.
    assert host.run("ls /opt/vllm/releases").stdout.split() == [RELEASE, f"{RELEASE}.lock"]
    models = host.run("ls /var/lib/vllm/models").stdout.split()
    assert sorted(models) == sorted(model.rsplit("/", 1)[1] for model in (old_model, new_model)), models

    rolled_back = run(session_lab, revised, playbook="playbooks/rollback.yml")
    assert rolled_back.returncode == 0, rolled_back.output[-3000:]
    assert old_model in serving(host) and new_model not in serving(host)
    host.run(f"umask 077; echo {CANARY} > /root/key")
    try:
        assert host.run(CHAT).stdout.strip() == ITALIAN
    finally:
        host.run("rm -f /root/key")
    restored = run(session_lab, tiny_model)
    assert restored.returncode == 0, restored.output[-3000:]
