"""Exposure guards that extra settings cannot bypass: vllm_extra_args may not hold a flag the vllm role
owns (a second --host after the role's checked one would win), ollama_extra_environment may not hold a
key the ollama role owns (OLLAMA_HOST=0.0.0.0 past the loopback check); and preflight's reports carry
PID, user and executable of foreign processes, never their command lines, in files only the owner reads."""

import json
import re

import pytest
import yaml
from llm_toolkit.host.llm_host import port_listeners

from llm_toolkit.catalog import get_model, load_models, load_serving
from llm_toolkit.ollama import OWNED_OLLAMA_KEYS, owned_key_refusals
from llm_toolkit.planner import plan, request_for_gpus
from llm_toolkit.serving import OWNED_VLLM_FLAGS, owned_flag_refusals, serve
from tests.ansible_plugins import ansible_filter
from tests.unit.test_gpu_facts import FakeFiles
from tests.unit.test_secrets import REPO, input_checks
from tests.unit.test_serving import SETTINGS
from tests.unit.test_shared_settings import derived

WILDCARD = "0.0.0.0"  # noqa: S104 - the bind the guards refuse is the case under test


@pytest.mark.parametrize(
    ("extra", "flag", "instead"),
    [
        (["--host", WILDCARD], "--host", "vllm_host"),
        (["--seed", "7", "--host=0.0.0.0"], "--host", "vllm_host"),
        (["--HOST=0.0.0.0"], "--host", "vllm_host"),
        (["--ho", WILDCARD], "--ho", "vllm_host"),
        (["--port=80"], "--port", "vllm_port"),
        (["--api_key", "k"], "--api-key", "vllm_api_key"),
        (["--model", "/srv/m"], "--model", "vllm_model_dir"),
        (["--served-model-name=x"], "--served-model-name", "vllm_served_model_name"),
        (["-tp", "8"], "-tp", "vllm_tensor_parallel_size"),
        (["--tensor-parallel-size=8"], "--tensor-parallel-size", "vllm_tensor_parallel_size"),
        (["--gpu_memory_utilization", "0.99"], "--gpu-memory-utilization", "vllm_gpu_memory_utilization"),
        (["--config", "/srv/serve.yaml"], "--config", "the role's variables"),
    ],
)
def test_a_flag_the_vllm_role_owns_is_refused_naming_it_and_the_variable_to_set(extra, flag, instead):
    refusals = ansible_filter("llm_vllm_owned_flags")(extra)
    assert len(refusals) == 1, refusals
    assert f"vllm_extra_args has {flag} " in refusals[0]
    assert f"fix: set {instead}" in refusals[0]
    with pytest.raises(ValueError, match="vllm_extra_args has"):
        serve({**SETTINGS, "extra_args": extra}, {"tensor_parallel_size": 1, "vllm_args": []})


@pytest.mark.parametrize(
    "extra", [[], ["--seed", "7"], ["--max-num-batched-tokens=4096"], ["--swap-space", "-1"], ["--disable-log-stats"]]
)
def test_flags_the_role_does_not_own_pass(extra):
    assert owned_flag_refusals(extra) == []


def test_extra_args_must_be_a_list():
    assert "expected a list" in owned_flag_refusals("--host 0.0.0.0")[0]


def test_every_flag_the_role_sets_is_one_extra_args_may_not_set():
    gpus = [{"memory_total_mib": 81559, "compute_cap": "9.0", "name": "NVIDIA H100 80GB HBM3"}] * 4
    gpu_plan = plan(
        request_for_gpus("mixtral-8x7b-instruct", "awq", gpus, max_model_len=8192),
        get_model(load_models(), "mixtral-8x7b-instruct"),
        load_serving(),
    )
    emitted = set()
    for settings, serving_plan in (
        ({**SETTINGS, "accelerator": "gpu", "enforce_eager": True}, gpu_plan),
        ({**SETTINGS, "cores": 4}, {"tensor_parallel_size": 2, "vllm_args": []}),
    ):
        emitted |= {arg.split("=", 1)[0] for arg in serve(settings, serving_plan)["args"] if arg.startswith("-")}
    assert "--quantization" in emitted or "--tensor-parallel-size" in emitted
    assert emitted <= set(OWNED_VLLM_FLAGS), emitted - set(OWNED_VLLM_FLAGS)


@pytest.mark.parametrize(
    ("key", "instead"),
    [("OLLAMA_HOST", "ollama_host"), ("ollama_host", "ollama_host"), ("OLLAMA_MODELS", "ollama_models_dir")],
)
def test_a_key_the_ollama_role_owns_is_refused_naming_it_and_the_variable_to_set(key, instead):
    refusals = ansible_filter("llm_ollama_owned_keys")({key: "0.0.0.0:11434", "OLLAMA_SCHED_SPREAD": "1"})
    assert len(refusals) == 1, refusals
    assert f"ollama_extra_environment has {key.upper()} (set by the role)" in refusals[0]
    assert f"fix: set {instead}" in refusals[0]


def test_keys_the_ollama_role_does_not_own_pass():
    assert owned_key_refusals({"OLLAMA_SCHED_SPREAD": "1", "OLLAMA_DEBUG": "1"}) == []
    assert "expected a mapping" in owned_key_refusals(["OLLAMA_HOST=0.0.0.0"])[0]


def test_every_key_the_ollama_role_sets_is_one_extra_environment_may_not_set():
    text = yaml.safe_load((REPO / "roles/ollama/vars/main.yml").read_text())["__ollama_environment"]
    keys = set(re.findall(r"'([A-Z_]+)':", text))
    assert "OLLAMA_HOST" in keys
    assert keys <= set(OWNED_OLLAMA_KEYS), keys - set(OWNED_OLLAMA_KEYS)


def test_the_role_keys_win_over_extra_environment_even_without_the_check(tmp_path):
    result = derived(tmp_path, {"ollama_extra_environment": {"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_DEBUG": "1"}})
    assert result["ollama_environment"]["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert result["ollama_environment"]["OLLAMA_DEBUG"] == "1"


def test_the_vllm_role_stops_on_a_second_host_flag_in_one_line_naming_host_flag_and_variable():
    result = input_checks("vllm", {"vllm_extra_args": ["--seed", "7", "--host=0.0.0.0"]})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "localhost: vllm_extra_args has --host (set by the role); expected only flags the role does not own; "
        "fix: set vllm_host instead"
    ) in output
    assert "Traceback" not in output


def test_the_ollama_role_stops_on_ollama_host_in_extra_environment():
    result = input_checks("ollama", {"ollama_extra_environment": {"OLLAMA_HOST": "0.0.0.0:11434"}})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "localhost: ollama_extra_environment has OLLAMA_HOST (set by the role)" in output
    assert "fix: set ollama_host and ollama_port" in output


# --- preflight's reports ------------------------------------------------------------------------

TCP = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_a_port_squatter_is_reported_by_pid_user_and_executable_never_its_arguments():
    files = FakeFiles(
        files={
            "/proc/net/tcp": TCP
            + "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 777\n",
            "/proc/31/cmdline": "python3\0-m\0http.server\0--password\0hunter2-other-user\0",
            "/proc/31/status": "Name:\tpython3\nUid:\t0\t0\t0\t0\n",
            "/proc/31/comm": "python3\n",
            "/proc/31/cgroup": "0::/user.slice/session-4.scope\n",
        },
        dirs={"/proc": ["31"], "/proc/31/fd": ["5"]},
        links={"/proc/31/fd/5": "socket:[777]", "/proc/31/exe": "/usr/bin/python3.11"},
    )
    listeners = port_listeners(files, 8000)
    assert "hunter2-other-user" not in json.dumps(listeners), listeners
    assert listeners == [{"pid": 31, "user": "root", "executable": "/usr/bin/python3.11", "unit": "session-4.scope"}]


def test_preflight_reports_are_written_for_their_owner_only():
    report = yaml.safe_load((REPO / "roles/llm_preflight/tasks/report.yml").read_text())
    writes = [task["ansible.builtin.copy"] for task in report if "ansible.builtin.copy" in task]
    assert writes and all(write["mode"] == "0600" for write in writes), writes
