"""The units on real lab hosts, beyond their score (fault matrix rows 11 and 24; docs/security.md,
section 3): the sandbox is enforced where a systemd-nspawn host can enforce it, for the real vLLM CPU
build (vllm.service on the CPU host itest3) and for Ollama on a simulated GPU host (ollama.service on
itest1); a command line the roles' filter writes reaches the program unchanged through the host's
systemd; the NVIDIA driver hold is on the GPU hosts, checked by its verifier, and repaired by a rerun.

The sandbox probe (tests/integration/sandbox_probe.py) runs as the service's user three ways:
- outside any sandbox: the control, showing that what the sandbox forbids is otherwise allowed;
- inside the running service: in its mount namespace (nsenter on its main process) and its cgroup,
  so it meets that process's own ProtectHome, ProtectSystem, ProtectProc and IP firewall;
- as the service's own unit: the unit systemd has loaded (`systemctl cat`, drop-ins included) with
  only its commands replaced by the probe, because a process cannot enter another's seccomp filter
  (RestrictAddressFamilies).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.verify.test_gpu import BASE_DEFAULTS, BLACKLIST

PROBE = Path(__file__).with_name("sandbox_probe.py")
PROBE_PATH = "/usr/local/lib/sandbox_probe.py"
OUTSIDE = "/srv/sandbox-probe"  # world-writable, outside every unit's writable paths
DENIED_DEVICE = f"{OUTSIDE}/kmsg"  # /dev/kmsg's numbers (1:11): no unit's device policy allows it
ALLOWED_DEVICE = "/dev/null"  # every device policy allows it
SERVICES = {
    # service: (host, user, writable directory, loopback port)
    "vllm.service": ("itest3", "vllm", "/var/cache/vllm", 8000),
    "ollama.service": ("itest1", "ollama", "/var/lib/ollama", 11434),
}
GPU_HOSTS = ("itest1", "itest2")
CPU_HOST = "itest3"
HOLD_FILE = "/etc/apt/apt.conf.d/51llm-toolkit-nvidia-hold"
HOLD_TASK = "llm_base : driver_hold | Ensure unattended upgrades leave the NVIDIA driver alone on GPU hosts"
HOLD_PATTERNS = BASE_DEFAULTS["llm_base_nvidia_packages"]
HOLD_CHECK = "tests/verify/test_gpu.py::test_unattended_upgrades_leave_the_nvidia_driver_alone"


def probe_args(service: str, depot_url: str) -> str:
    _, _, writable, port = SERVICES[service]
    remote = urlsplit(depot_url)
    return f"{writable} {OUTSIDE} {remote.hostname} {remote.port} {port} {ALLOWED_DEVICE} {DENIED_DEVICE}"


def install_probe(host) -> None:
    setup = host.run(
        f"install -m 0755 -d /usr/local/lib && cat > {PROBE_PATH} <<'PROBE'\n{PROBE.read_text()}PROBE\n"
        f"chmod 0644 {PROBE_PATH} && install -m 1777 -d {OUTSIDE} && rm -f {DENIED_DEVICE} "
        f"&& mknod -m 0666 {DENIED_DEVICE} c 1 11"
    )
    assert setup.rc == 0, setup.stderr


def parse(result) -> dict:
    assert result.rc == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def outside_any_sandbox(host, service: str, depot_url: str) -> dict:
    user = SERVICES[service][1]
    return parse(
        host.run(
            f"setpriv --reuid={user} --regid={user} --init-groups "
            f"/usr/bin/python3 {PROBE_PATH} {probe_args(service, depot_url)}"
        )
    )


def inside_the_running_service(host, service: str, depot_url: str) -> dict:
    """The probe joins the running service's cgroup, enters its main process's mount namespace, and
    becomes its user."""
    user = SERVICES[service][1]
    pid = host.run(f"systemctl show -p MainPID --value {service}").stdout.strip()
    cgroup = host.run(f"systemctl show -p ControlGroup --value {service}").stdout.strip()
    assert pid not in ("", "0") and cgroup, f"{service} is not running"
    return parse(
        host.run(
            f"sh -c 'echo $$ > /sys/fs/cgroup{cgroup}/cgroup.procs && exec nsenter --target {pid} --mount "
            f"setpriv --reuid={user} --regid={user} --init-groups "
            f"/usr/bin/python3 {PROBE_PATH} {probe_args(service, depot_url)}'"
        )
    )


COMMANDS = re.compile(r"^(ExecStart|ExecStartPre|ExecStartPost|ExecStop|ExecReload|Type|Restart)=", re.M)


def without_commands(loaded: str) -> list[str]:
    """`systemctl cat` output (unit and drop-ins) without comments, commands and [Install] sections."""
    kept, section = [], ""
    for line in loaded.splitlines():
        if line.startswith("["):
            section = line
        if section != "[Install]" and not line.startswith("#") and not COMMANDS.match(line):
            kept.append(line)
    return kept


def as_the_services_own_unit(host, service: str, depot_url: str) -> dict:
    """The unit as systemd loaded it (drop-ins included), its commands replaced by the probe."""
    loaded = host.run(f"systemctl cat {service}")
    assert loaded.rc == 0, loaded.stderr
    kept = "\n".join(without_commands(loaded.stdout))
    probe = service.replace(".service", "-sandbox-probe")
    unit = (
        f"{kept}\n[Service]\nType=oneshot\nRestart=no\nStandardOutput=file:/run/{probe}.json\n"
        f"ExecStart=/usr/bin/python3 {PROBE_PATH} {probe_args(service, depot_url)}\n"
    )
    written = host.run(f"cat > /run/systemd/system/{probe}.service <<'UNIT'\n{unit}UNIT\n")
    assert written.rc == 0, written.stderr
    try:
        started = host.run(f"rm -f /run/{probe}.json && systemctl daemon-reload && systemctl start {probe}.service")
        journal = host.run(f"journalctl -u {probe}.service -o cat --no-pager").stdout
        assert started.rc == 0, started.stderr + journal
        found = json.loads(host.file(f"/run/{probe}.json").content_string)
        found["journal"] = journal
        return found
    finally:
        host.run(f"rm -f /run/systemd/system/{probe}.service /run/{probe}.json; systemctl daemon-reload")


WORDS = [
    "--served-model-name",
    'rag 100% "$HOME" \\ ok',
    "50%",
    "%n",
    "%%",
    "$X",
    "${HOME}",
    "$$",
    "it's",
    ";",
    "",
    " lead",
]
DUMP = "import json, sys; print(json.dumps(sys.argv[1:]))"


# Row 11: `%` and `$` in a command line the roles' filter writes reach the program unchanged.
def test_a_command_line_with_percent_and_dollar_reaches_the_program_unchanged(converged, session_lab):
    run = session_lab.playbook(
        "-e",
        json.dumps({"target": CPU_HOST, "program": ["/usr/bin/python3", "-c", DUMP], "words": WORDS}),
        playbook="tests/playbooks/command_line_unit.yml",
    )
    assert run.returncode == 0, run.output[-3000:]
    host = session_lab.host(CPU_HOST)
    try:
        assert json.loads(host.file("/run/command-line-test.json").content_string) == WORDS
    finally:
        host.run(
            "rm -f /etc/systemd/system/command-line-test.service /run/command-line-test.json; systemctl daemon-reload"
        )


def task_results(output: str, task: str) -> dict[str, str]:
    """{host: ok|changed|skipping|failed} of one task in a playbook run's output."""
    block = output.split(f"TASK [{task}]", 1)[1].split("\nTASK [", 1)[0]
    return {host: status for status, host in re.findall(r"^(ok|changed|skipping|failed|fatal): \[(\w+)\]", block, re.M)}


# Row 24: the hold is written on GPU hosts only, once; second run and --check leave it alone.
def test_the_driver_hold_is_made_once_on_gpu_hosts_only(converged, session_lab):
    assert task_results(converged.first.output, HOLD_TASK) == {
        "itest1": "changed",
        "itest2": "changed",
        CPU_HOST: "skipping",
    }
    for run in (converged.second, converged.check):
        assert task_results(run.output, HOLD_TASK) == {"itest1": "ok", "itest2": "ok", CPU_HOST: "skipping"}
    for name in GPU_HOSTS:
        host = session_lab.host(name)
        assert host.file(HOLD_FILE).exists
        listed = host.run(f"apt-config dump {BLACKLIST}").stdout
        for pattern in HOLD_PATTERNS:
            assert f'{BLACKLIST}:: "{pattern}";' in listed, listed
    assert not session_lab.host(CPU_HOST).file(HOLD_FILE).exists


# Row 24: the verifier passes on the converged GPU hosts, fails without the hold, and a rerun repairs it.
def test_the_driver_hold_verifier_fails_without_the_drop_in_and_a_rerun_repairs_it(converged, session_lab):
    passed = session_lab.verify()
    assert passed.returncode == 0, passed.stdout[-3000:]
    for name in GPU_HOSTS:
        assert f"PASSED {HOLD_CHECK}[ansible://{name}]" in passed.stdout
    broken = session_lab.host("itest2")
    assert broken.run(f"rm {HOLD_FILE}").rc == 0
    try:
        result = session_lab.verify()
        assert result.returncode != 0
        assert f"FAILED {HOLD_CHECK}[ansible://itest2]" in result.stdout
        assert f"PASSED {HOLD_CHECK}[ansible://itest1]" in result.stdout
        assert f"{BLACKLIST} lacks {HOLD_PATTERNS}" in result.stdout
    finally:
        repair = session_lab.playbook("--tags", "base")
    assert repair.returncode == 0, repair.output[-3000:]
    assert task_results(repair.output, HOLD_TASK)["itest2"] == "changed"
    assert broken.file(HOLD_FILE).exists
    assert session_lab.verify().returncode == 0


@pytest.fixture(scope="module")
def probes(converged, session_lab, depot_url) -> dict[str, dict[str, dict]]:
    """{service: {"outside": ..., "running": ..., "unit": ...}}: what the probe met each way."""
    found = {}
    for service, (name, *_) in SERVICES.items():
        host = session_lab.host(name)
        install_probe(host)
        try:
            found[service] = {
                "outside": outside_any_sandbox(host, service, depot_url),
                "running": inside_the_running_service(host, service, depot_url),
                "unit": as_the_services_own_unit(host, service, depot_url),
                # What this host's systemd can enforce: cgroup controllers (memory, CPU, tasks), and
                # cgroup BPF programs (IP firewall, device policy).
                "controllers": host.run("cat /sys/fs/cgroup/cgroup.controllers").stdout.split(),
                "bpf": parse(host.run(f"/usr/bin/python3 {PROBE_PATH} --bpf"))["bpf"],
            }
        finally:
            host.run(f"rm -rf {OUTSIDE} {PROBE_PATH}")
    print(json.dumps(found, indent=1))  # what the lab enforces (docs/security.md, section 3), with -rP
    return found


# Row 11: what the sandbox forbids is allowed outside it (else the probes below would prove nothing).
@pytest.mark.parametrize("service", SERVICES)
def test_without_the_sandbox_the_service_user_could_do_all_of_it(probes, service):
    outside = probes[service]["outside"]
    assert outside["list /home"] == "ok", outside
    assert outside["write outside"] == "ok", outside
    assert outside["pid 1 visible"] is True, outside
    assert outside["connect remote"] == "ok", outside
    assert outside["denied device"] == "ok", outside
    assert outside["AF_PACKET"] == "EPERM", outside  # no CAP_NET_RAW; the sandbox answers otherwise


# Row 11: ProtectHome, ProtectSystem=strict with ReadWritePaths, ProtectProc=invisible, enforced on the
# running service and on its unit.
@pytest.mark.parametrize("way", ["running", "unit"])
@pytest.mark.parametrize("service", SERVICES)
def test_the_sandbox_hides_home_and_other_users_processes_and_allows_writes_only_where_the_unit_says(
    probes, service, way
):
    found = probes[service][way]
    uid = probes[service]["outside"]["uid"]
    assert found["uid"] == uid, found
    assert found["list /home"] == "EACCES", found
    assert found["write service dir"] == "ok", found
    assert found["write outside"] == "EROFS", found
    assert found["write /etc"] == "EROFS", found
    assert found["pid 1 visible"] is False, found
    assert found["process owners"] == [uid], found


# Row 11: RestrictAddressFamilies (a seccomp filter), NoNewPrivileges and the empty capability bounding
# set: per process, so proven by the unit, which a probe can run under.
@pytest.mark.parametrize("service", SERVICES)
def test_the_unit_refuses_packet_sockets_and_privileges_and_allows_tcp(probes, service):
    found = probes[service]["unit"]
    assert probes[service]["outside"]["status"]["NoNewPrivs"] == "0", probes[service]["outside"]
    assert found["status"] == {"NoNewPrivs": "1", "CapBnd": "0000000000000000"}, found
    assert found["AF_PACKET"] == "EAFNOSUPPORT", found
    assert found["AF_INET"] == "ok", found
    assert found["connect loopback"] == "ok", found


# Row 11: IPAddressDeny=any with IPAddressAllow=localhost (vLLM only: Ollama downloads models itself).
# Row 11: PrivateDevices=true on the CPU host: a /dev of its own, without the host's devices (its
# device policy needs cgroup BPF, below).
@pytest.mark.parametrize("way", ["running", "unit"])
def test_vllm_on_the_cpu_host_sees_a_private_dev(probes, way):
    outside, found = probes["vllm.service"]["outside"]["/dev"], probes["vllm.service"][way]["/dev"]
    assert "console" in outside, outside
    assert "console" not in found, found
    assert {"null", "zero", "urandom"} <= set(found), found


def needs_cgroup_bpf(probes, service: str, directives: str) -> None:
    """IPAddressDeny=/IPAddressAllow= and DevicePolicy=/DeviceAllow= are cgroup BPF programs on the
    unified hierarchy: where bpf() is refused (a systemd-nspawn lab host, EPERM), systemd starts the
    unit without them, and they are proven by their score alone (docs/security.md, section 3)."""
    if probes[service]["bpf"] == "EPERM":
        pytest.skip(
            f"{SERVICES[service][0]} refuses bpf() (EPERM): systemd cannot attach {directives}; "
            f"the probe inside {service} met {probes[service]['running']}"
        )


@pytest.mark.parametrize("way", ["running", "unit"])
def test_vllm_reaches_loopback_and_no_other_address(probes, way):
    needs_cgroup_bpf(probes, "vllm.service", "IPAddressDeny=")
    found = probes["vllm.service"][way]
    assert found["connect loopback"] == "ok", found
    assert found["connect remote"] == "EPERM", found
    assert probes["ollama.service"][way]["connect remote"] == "ok", probes["ollama.service"][way]


# Row 11: the device policy (DevicePolicy=closed, and PrivateDevices on the CPU host).
@pytest.mark.parametrize("way", ["running", "unit"])
@pytest.mark.parametrize("service", SERVICES)
def test_the_unit_opens_only_the_devices_it_allows(probes, service, way):
    needs_cgroup_bpf(probes, service, "DevicePolicy=")
    found = probes[service][way]
    assert found["allowed device"] == "ok", found
    assert found["denied device"] != "ok", found
