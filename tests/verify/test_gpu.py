"""Host verifier: the NVIDIA driver and CUDA still meet the gates of what is deployed (the catalog's gates.yml).

A driver upgrade or rollback after provisioning can leave a backend on a driver its runtime cannot
use (Ollama falls back to the CPU without an error); this catches it. Hosts without nvidia-smi
(CPU hosts) are skipped.
"""

import pytest
from llm_toolkit.host.llm_gpu import parse_cuda_version, parse_driver_version, version_tuple

from llm_toolkit.catalog import load_gates
from tests.verify.verify_helpers import local_fact

GATES = load_gates()


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
        cuda = GATES["backends"]["vllm"]["0.33.0"]["cuda_builds"]["cu129"]
        needs[f"vLLM 0.33.0 (CUDA {cuda})"] = GATES["cuda_min_driver"][cuda]
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
