"""vllm.service and ollama.service as the roles render them, for simulated GPU and CPU hosts: systemd's
own checks (`systemd-analyze verify`, unknown keys failing; `systemd-analyze security`, exposure 3.5 at
most), one way of opening the GPU for both units, command lines that reach the program unchanged, and
timeouts that fit each other (fault matrix rows 11 and 27; docs/security.md, section 3).

The units are rendered by Ansible itself (tests/playbooks/render_units.yml) with the roles' variables;
GPU hosts read their GPUs from the nvidia-smi stand-in. systemd-analyze checks them in a temporary root
where the programs the units start exist as stubs at exactly the paths the roles install them to.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_toolkit.serving import systemd_command
from tests.ansible_plugins import run_test_playbook as run_playbook
from tests.verify import test_gpu as gpu_verifiers

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
MAX_EXPOSURE = 3.5
ODD_NAME = 'rag 100% "$HOME" \\ ok'

GROUPS = {"video": ["x", "44", ""], "render": ["x", "105", ""]}
HOSTS = {
    "gpu": {
        "render_gpu_profile": "2x-A10G-24GB",
        "render_facts": {"processor_vcpus": 16, "getent_group": GROUPS, "architecture": "x86_64"},
    },
    "cpu": {
        "llm_accelerator": "cpu",
        "render_facts": {"processor_vcpus": 4, "getent_group": GROUPS, "architecture": "x86_64"},
    },
    # A GPU host without a render group, nvidia-smi outside PATH, a served name systemd would expand,
    # other timeouts, and an API on another address (with a key).
    "gpu-odd": {
        "render_gpu_profile": "1x-A100-80GB",
        "render_facts": {"processor_vcpus": 8, "getent_group": {"video": GROUPS["video"]}, "architecture": "x86_64"},
        "llm_nvidia_smi_path": "/opt/nvidia driver/bin/nvidia-smi",
        "vllm_served_model_name": ODD_NAME,
        "vllm_ready_timeout": 300,
        "vllm_shutdown_timeout": 240,
        "vllm_host": "10.1.2.3",
        "vllm_api_key": "unit-test-key",
        "llm_model": "mistral-7b-instruct",
    },
}
UNITS = ("vllm.service", "ollama.service")
# Where the roles install what the units start (their defaults).
VLLM_DEFAULTS = yaml.safe_load((REPO / "roles/vllm/defaults/main.yml").read_text())
OLLAMA_DEFAULTS = yaml.safe_load((REPO / "roles/ollama/defaults/main.yml").read_text())
SHARED_DEFAULTS = yaml.safe_load((REPO / "roles/llm_defaults/defaults/main.yml").read_text())
# vLLM runs from the release of its version (the CPU build's or the GPU build's).
VLLM_PROGRAMS = [
    f"{VLLM_DEFAULTS['vllm_install_dir']}/releases/{version}/bin/vllm"
    for version in re.findall(r"'(\d+[.]\d+[.]\d+)'", SHARED_DEFAULTS["vllm_version"])
]
PROGRAMS = {
    "vllm.service": VLLM_PROGRAMS,
    "ollama.service": [OLLAMA_DEFAULTS["ollama_install_dir"] + "/current/bin/ollama"],
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """{host: directory of its rendered files}, all hosts rendered in one playbook run."""
    base = tmp_path_factory.mktemp("units")
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "vllm_model_dir": "/models/mixtral",
            },
            "hosts": {name: {**values, "render_dir": str(base / name)} for name, values in HOSTS.items()},
        }
    }
    for name in HOSTS:
        (base / name).mkdir()
    (base / "inventory.yml").write_text(yaml.safe_dump(inventory))
    run_playbook("render_units.yml", "-i", str(base / "inventory.yml"))
    return {name: base / name for name in HOSTS}


def service(text: str) -> dict[str, list[str]]:
    """{key: [values]} of a unit's lines (all sections)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def unit(rendered, host: str, name: str) -> dict[str, list[str]]:
    return service((rendered[host] / name).read_text())


def system_root(tmp_path: Path, rendered_dir: Path, nvidia_smi: str = "/usr/bin/nvidia-smi") -> Path:
    """A root holding the rendered units and stubs of what they start, where the roles put it."""
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    (units / "ollama.service.d").mkdir(parents=True)
    for name in UNITS:
        shutil.copy(rendered_dir / name, units / name)
    shutil.copy(rendered_dir / "toolkit.conf", units / "ollama.service.d/toolkit.conf")
    for program in [*(path for paths in PROGRAMS.values() for path in paths), nvidia_smi]:
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, check=False)


def verify(root: Path, name: str) -> subprocess.CompletedProcess:
    return analyze("verify", "--recursive-errors=no", f"--root={root}", name)


def exposure(root: Path, name: str) -> tuple[float, subprocess.CompletedProcess]:
    result = analyze(
        "security", "--offline=true", f"--root={root}", f"--threshold={int(MAX_EXPOSURE * 10)}", "--no-pager", name
    )
    found = re.search(rf"exposure level for {re.escape(name)}: ([0-9.]+)", result.stdout)
    assert found, result.stdout[-500:] + result.stderr[-500:]
    return float(found[1]), result


# Row 11: the rendered units verify and score 3.5 or better, on GPU and CPU hosts.
@needs_systemd_analyze
@pytest.mark.parametrize("host", ["gpu", "cpu", "gpu-odd"])
@pytest.mark.parametrize("name", UNITS)
def test_each_rendered_unit_verifies_and_scores_at_most_3_5(rendered, tmp_path, host, name):
    nvidia_smi = HOSTS[host].get("llm_nvidia_smi_path", "/usr/bin/nvidia-smi")
    root = system_root(tmp_path, rendered[host], nvidia_smi)
    verified = verify(root, name)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    score, result = exposure(root, name)
    assert score <= MAX_EXPOSURE, f"{host} {name}: exposure {score}\n{result.stdout[-3000:]}"
    assert result.returncode == 0, result.stdout[-500:] + result.stderr[-500:]


@needs_systemd_analyze
def test_verify_fails_on_an_unknown_key_and_a_missing_program(rendered, tmp_path):
    root = system_root(tmp_path, rendered["gpu"])
    path = root / "etc/systemd/system/vllm.service"
    good = path.read_text()
    path.write_text(good.replace("Restart=always", "Restartt=always"))
    assert verify(root, "vllm.service").returncode != 0
    path.write_text(good)
    assert verify(root, "vllm.service").returncode == 0
    (root / "usr/bin/nvidia-smi").unlink()  # the GPU units wait for nvidia-smi before they start
    assert verify(root, "vllm.service").returncode != 0
    assert verify(root, "ollama.service").returncode != 0


@needs_systemd_analyze
def test_the_security_threshold_fails_a_unit_that_drops_its_sandbox(rendered, tmp_path):
    root = system_root(tmp_path, rendered["gpu"])
    path = root / "etc/systemd/system/vllm.service"
    sandbox = ("ProtectProc=", "RestrictAddressFamilies=", "RemoveIPC=", "IPAddressDeny=", "IPAddressAllow=")
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith(sandbox)) + "\n")
    score, result = exposure(root, "vllm.service")
    assert score > MAX_EXPOSURE
    assert result.returncode != 0


def test_the_sandbox_directives_the_issue_asks_for_are_set_on_gpu_hosts(rendered):
    vllm, ollama = unit(rendered, "gpu", "vllm.service"), unit(rendered, "gpu", "ollama.service")
    for values in (vllm, ollama):
        assert values["ProtectProc"] == ["invisible"]
        assert values["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
        assert values["RemoveIPC"] == ["true"]
    # vLLM binds loopback and downloads nothing at run time; Ollama's server pulls models itself.
    assert (vllm["IPAddressDeny"], vllm["IPAddressAllow"]) == (["any"], ["localhost"])
    assert "IPAddressDeny" not in ollama
    # An API on another address must reach its clients.
    assert "IPAddressDeny" not in unit(rendered, "gpu-odd", "vllm.service")


GPU_KEYS = ("SupplementaryGroups", "PrivateDevices", "DevicePolicy", "DeviceAllow", "ExecStartPre")


@pytest.mark.parametrize(("host", "groups"), [("gpu", ["video render"]), ("gpu-odd", ["video"])])
def test_both_units_open_the_gpu_the_same_way_with_the_groups_the_host_has(rendered, host, groups):
    vllm, ollama = unit(rendered, host, "vllm.service"), unit(rendered, host, "ollama.service")
    assert {key: vllm.get(key) for key in GPU_KEYS} == {key: ollama.get(key) for key in GPU_KEYS}
    assert vllm["SupplementaryGroups"] == groups
    assert vllm["PrivateDevices"] == ["false"]


def test_cpu_units_have_no_gpu_access(rendered):
    for name in UNITS:
        values = unit(rendered, "cpu", name)
        assert values["PrivateDevices"] == ["true"]
        assert not {"SupplementaryGroups", "DeviceAllow", "ExecStartPre"} & set(values)


@pytest.mark.parametrize("name", UNITS)
def test_the_gpu_check_runs_the_nvidia_smi_preflight_uses(rendered, name):
    assert unit(rendered, "gpu", name)["ExecStartPre"] == ["/usr/bin/nvidia-smi -L"]
    assert unit(rendered, "gpu-odd", name)["ExecStartPre"] == ['"/opt/nvidia driver/bin/nvidia-smi" -L']
    gather = yaml.safe_load((REPO / "roles/llm_preflight/tasks/gather.yml").read_text())
    assert gather[0]["nvidia_gpu_facts"]["nvidia_smi_path"] == "{{ llm_nvidia_smi_path }}"


def test_a_percent_or_dollar_in_an_argument_reaches_vllm_unchanged(rendered):
    values = unit(rendered, "gpu-odd", "vllm.service")
    (exec_start,) = values["ExecStart"]
    assert '"rag 100%% \\"$$HOME\\" \\\\ ok"' in exec_start
    assert values["Description"] == ['vLLM OpenAI-compatible server (rag 100%% "$HOME" \\ ok)']


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["/opt/x/bin/vllm", "serve", "--port", "8000"], "/opt/x/bin/vllm serve --port 8000"),
        (["a b", "", "50%", "$X", 'say "hi"', "back\\slash"], '"a b" "" "50%%" "$$X" "say \\"hi\\"" "back\\\\slash"'),
        ([";"], '";"'),
    ],
)
def test_systemd_command_quotes_what_systemd_would_change(argv, line):
    assert systemd_command(argv) == line


def test_systemd_command_refuses_a_line_break():
    with pytest.raises(ValueError, match="line break"):
        systemd_command(["--served-model-name", "a\nb"])


def env_file(rendered, host: str) -> dict[str, str]:
    lines = (rendered[host] / "vllm.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize("host", ["gpu", "cpu", "gpu-odd"])
def test_vllm_waits_for_its_engine_inside_the_roles_readiness_wait(rendered, host):
    wait = json.loads((rendered[host] / "vllm-ready.json").read_text())
    ready_timeout = HOSTS[host].get("vllm_ready_timeout", VLLM_DEFAULTS["vllm_ready_timeout"])
    engine = int(env_file(rendered, host)["VLLM_ENGINE_READY_TIMEOUT_S"])
    assert wait["retries"] * wait["delay"] >= ready_timeout
    # The API server starts (imports, tokenizer) before it waits for the engine; a minute is left for that.
    assert engine == ready_timeout - 60


@pytest.mark.parametrize("host", ["gpu", "cpu", "gpu-odd"])
def test_systemd_waits_longer_than_vllm_drains(rendered, host):
    values = unit(rendered, host, "vllm.service")
    drain = int(re.search(r" --shutdown-timeout (\d+)", values["ExecStart"][0])[1])
    assert drain == HOSTS[host].get("vllm_shutdown_timeout", VLLM_DEFAULTS["vllm_shutdown_timeout"])
    worker_shutdown = 5  # VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS, vLLM's default (not set by the role)
    assert "VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS" not in env_file(rendered, host)
    assert int(values["TimeoutStopSec"][0]) > drain + worker_shutdown


# Row 27 (static part): GPU units start after the driver's modules and persistence daemon.
@pytest.mark.parametrize("name", UNITS)
def test_gpu_units_start_after_the_driver(rendered, name):
    after = unit(rendered, "gpu", name)["After"][0].split()
    assert {"systemd-modules-load.service", "nvidia-persistenced.service"} <= set(after)
    assert "nvidia-persistenced.service" not in unit(rendered, "cpu", name)["After"][0].split()


class SimulatedHost:
    """The parts of a testinfra host the driver-hold verifier uses; apt-config is this machine's own,
    reading `apt_config` (a rendered drop-in) as APT_CONFIG."""

    def __init__(self, variables: dict, apt_config: Path):
        self.variables, self.apt_config = variables, apt_config
        self.ansible = self

    def get_variables(self) -> dict:
        return self.variables

    def run(self, command: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "APT_CONFIG": str(self.apt_config)}
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, env=env, check=False)
        result.rc = result.returncode
        return result


needs_apt_config = pytest.mark.skipif(shutil.which("apt-config") is None, reason="apt-config is not installed")


# Row 24 (the driver-hold part): the drop-in llm_base renders holds the driver, and the verifier says so.
@needs_apt_config
def test_the_driver_hold_verifier_passes_on_the_rendered_drop_in_and_fails_without_it(rendered, tmp_path):
    check = gpu_verifiers.test_unattended_upgrades_leave_the_nvidia_driver_alone
    drop_in = rendered["gpu"] / "nvidia-hold.conf"
    check(SimulatedHost({"llm_accelerator": "gpu"}, drop_in))
    partial = tmp_path / "partial.conf"
    partial.write_text(drop_in.read_text().replace('"libnvidia-";', ""))
    with pytest.raises(AssertionError, match=r"lacks \['libnvidia-'\]"):
        check(SimulatedHost({"llm_accelerator": "gpu"}, partial))
    with pytest.raises(AssertionError, match="lacks"):
        check(SimulatedHost({"llm_accelerator": "gpu"}, Path("/dev/null")))
    with pytest.raises(pytest.skip.Exception):
        check(SimulatedHost({"llm_accelerator": "cpu"}, Path("/dev/null")))


def test_the_driver_hold_lists_the_driver_cuda_and_their_libraries(rendered):
    text = (rendered["gpu"] / "nvidia-hold.conf").read_text()
    assert "Unattended-Upgrade::Package-Blacklist {" in text
    for pattern in ("nvidia-", "libnvidia-", "cuda-"):
        assert f'    "{pattern}";' in text
