"""Host verifier: the NVIDIA driver and CUDA still meet the gates of what is deployed (the catalog's gates.yml).

A driver upgrade or rollback after provisioning can leave a backend on a driver its runtime cannot
use (Ollama falls back to the CPU without an error); this catches it. Hosts without nvidia-smi
(CPU hosts) are skipped.
"""

import pytest
import yaml
from llm_toolkit.host.llm_gpu import parse_cuda_version, parse_driver_version, version_tuple

from llm_toolkit.catalog import load_gates
from tests.verify.verify_helpers import REPO, apt_list, local_fact, setting

GATES = load_gates()
BASE_DEFAULTS = yaml.safe_load((REPO / "roles" / "llm_base" / "defaults" / "main.yml").read_text())
BLACKLIST = "Unattended-Upgrade::Package-Blacklist"


def required_drivers(host) -> dict[str, str]:
    """{what: minimum driver} for the baseline CUDA and each deployed GPU backend."""
    needs = {f"CUDA {GATES['baseline_cuda']} (baseline)": GATES["cuda_min_driver"][GATES["baseline_cuda"]]}
    ollama = local_fact(host, "llm_ollama")
    if ollama and ollama.get("accelerator") == "gpu":
        gate = GATES["backends"]["ollama"].get(ollama.get("version"), {})
        if gate:
            needs[f"Ollama {ollama['version']}"] = gate["min_driver"]
    vllm = local_fact(host, "llm_vllm")
    if vllm and vllm.get("accelerator") == "gpu":
        build = setting(host, "vllm_cuda_build")
        cuda = GATES["backends"]["vllm"].get(vllm.get("version"), {}).get("cuda_builds", {}).get(build)
        if cuda:
            needs[f"vLLM {vllm['version']} ({build}, CUDA {cuda})"] = GATES["cuda_min_driver"][cuda]
    return needs


def test_driver_and_cuda_still_meet_the_gates(host):
    if host.run("command -v nvidia-smi").rc != 0:
        pytest.skip("no nvidia-smi on this host: no NVIDIA GPU to check")
    table = host.run("nvidia-smi")
    assert table.rc == 0, f"nvidia-smi fails (exit {table.rc}): {(table.stdout + table.stderr).strip()[:200]}"
    driver, cuda = parse_driver_version(table.stdout), parse_cuda_version(table.stdout)
    assert driver and cuda, f"nvidia-smi shows no driver or CUDA version: {table.stdout[:200]}"
    assert version_tuple(cuda) >= version_tuple(GATES["baseline_cuda"]), (
        f"CUDA {cuda}; expected {GATES['baseline_cuda']} or newer"
    )
    too_old = {
        what: need for what, need in required_drivers(host).items() if version_tuple(driver) < version_tuple(need)
    }
    assert not too_old, f"driver {driver} is older than {too_old}"


def test_unattended_upgrades_leave_the_nvidia_driver_alone(host):
    """A silent driver upgrade under the loaded kernel module breaks every CUDA program until a reboot."""
    if setting(host, "llm_accelerator") != "gpu":
        pytest.skip("not a GPU host (llm_accelerator: cpu): no driver to hold")
    inventory = host.ansible.get_variables()
    if not inventory.get("llm_base_hold_nvidia_driver", BASE_DEFAULTS["llm_base_hold_nvidia_driver"]):
        pytest.skip("llm_base_hold_nvidia_driver is false in the inventory")
    wanted = inventory.get("llm_base_nvidia_packages", BASE_DEFAULTS["llm_base_nvidia_packages"])
    dump = host.run(f"apt-config dump {BLACKLIST}")
    assert dump.rc == 0, f"apt-config fails (exit {dump.rc}): {dump.stderr.strip()[:200]}"
    missing = [pattern for pattern in wanted if pattern not in apt_list(dump.stdout, BLACKLIST)]
    assert not missing, f"{BLACKLIST} lacks {missing}: unattended-upgrades may upgrade the driver; rerun --tags base"
