"""vllm.service's arguments, the CPU build's core binding and the vLLM role's refusals (llm_toolkit.serving),
which the role reads through filters instead of computing them in Jinja."""

import json

import pytest

from llm_toolkit.serving import api_base, context_refusal, cpu_threads_bind, plan_refusal, serve, tree_fingerprint
from tests.ansible_plugins import ansible_filter

SETTINGS = {
    "model_path": "/var/lib/vllm/models/tiny",
    "host": "127.0.0.1",
    "port": 8000,
    "served_model_name": "mixtral",
    "max_model_len": 512,
    "max_num_seqs": 16,
    "accelerator": "cpu",
    "dtype": "float32",
    "cpu_kv_cache_bytes": 67108864,
    "enforce_eager": True,
    "extra_args": [],
    "cores": 2,
}
GPU_PLAN = {"tensor_parallel_size": 2, "vllm_args": ["--tensor-parallel-size", "2", "--quantization", "awq_marlin"]}


@pytest.mark.parametrize(
    ("ranks", "cores", "expected"), [(1, 2, "0-1"), (2, 2, "0|1"), (2, 16, "0-7|8-15"), (3, 8, "0-1|2-3|4-5")]
)
def test_each_cpu_worker_gets_its_own_cores(ranks, cores, expected):
    assert cpu_threads_bind(ranks, cores) == expected


def test_more_ranks_than_cores_is_refused():
    with pytest.raises(ValueError, match="3 tensor-parallel rank"):
        cpu_threads_bind(3, 2)


def test_a_cpu_host_serves_with_the_cpu_builds_arguments_and_no_planner_arguments():
    result = serve(SETTINGS, {"tensor_parallel_size": 1, "vllm_args": []})
    assert result["args"] == [
        "/var/lib/vllm/models/tiny",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        "--served-model-name",
        "mixtral",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "16",
        "--enable-prefix-caching",
        "--dtype",
        "float32",
        "--kv-cache-memory-bytes",
        "67108864",
        "--enforce-eager",
    ]
    assert (result["tensor_parallel_size"], result["cpu_tp"], result["cpu_threads_bind"]) == (1, False, "")


def test_a_cpu_host_simulating_two_gpus_runs_one_worker_per_rank():
    result = serve(SETTINGS, GPU_PLAN)
    assert result["args"][-2:] == ["--tensor-parallel-size", "2"]
    assert "--quantization" not in result["args"]
    assert (result["cpu_tp"], result["cpu_threads_bind"]) == (True, "0|1")
    too_few = serve({**SETTINGS, "cores": 1}, GPU_PLAN)
    assert (too_few["cpu_tp"], too_few["cpu_threads_bind"]) == (True, "")


def test_a_gpu_host_takes_the_planners_arguments_then_the_operators():
    result = serve({**SETTINGS, "accelerator": "gpu", "enforce_eager": False, "extra_args": ["--seed", 7]}, GPU_PLAN)
    assert result["args"][12:] == ["--tensor-parallel-size", "2", "--quantization", "awq_marlin", "--seed", "7"]
    assert "--dtype" not in result["args"]
    assert result["cpu_tp"] is False


def test_a_refused_plan_says_why_and_the_fix():
    assert plan_refusal({"tensor_parallel_size": 2, "vllm_args": []}, None) == ""
    refused = plan_refusal({"error": "tensor-parallel size 3 ... is not valid"}, 3)
    assert refused.endswith("fix: unset vllm_tensor_parallel_size or pick one the planner accepts")
    nothing = plan_refusal({"tensor_parallel_size": None, "rejected": [{"tp": 1, "reason": "needs 30 GiB"}]}, None)
    assert nothing == "no tensor-parallel size fits: needs 30 GiB; expected a plan vLLM accepts; " + (
        "fix: run scripts/plan.py for the options"
    )


def test_max_model_len_is_checked_against_the_models_own_context():
    config = json.dumps({"max_position_embeddings": 2048})
    assert context_refusal(config, 2048, "/m") == ""
    assert context_refusal(config, 4096, "/m").startswith("vllm_max_model_len=4096; expected at most 2048")
    assert context_refusal("", 512, "/m").startswith("no readable config.json in /m")
    assert context_refusal("[1]", 512, "/m").startswith("/m/config.json is not a JSON object")
    assert context_refusal("{}", 99999, "/m") == ""  # no context in the config: nothing to check against


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),  # noqa: S104 - the wildcard bind is the case under test
        ("::", "http://[::1]:8000"),
        ("::1", "http://[::1]:8000"),
        ("10.0.0.5", "http://10.0.0.5:8000"),
    ],
)
def test_the_role_reaches_its_api_on_loopback_for_a_wildcard_and_brackets_ipv6(host, expected):
    assert api_base(host, 8000) == expected
    assert ansible_filter("llm_api_base")(host, "8000") == expected


def test_the_filters_are_the_same_functions():
    assert ansible_filter("llm_vllm_serve")(GPU_PLAN, SETTINGS) == serve(SETTINGS, GPU_PLAN)
    assert ansible_filter("llm_plan_refusal")({"error": "x"}) == plan_refusal({"error": "x"}, None)
    assert ansible_filter("llm_context_refusal")(None, 512, "/m") == context_refusal("", 512, "/m")


def test_a_directory_fingerprint_changes_with_a_file_and_not_otherwise(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"x" * 10)
    first = tree_fingerprint(str(tmp_path))
    assert len(first) == 64
    assert tree_fingerprint(str(tmp_path)) == first
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"x" * 11)
    assert tree_fingerprint(str(tmp_path)) != first
    assert tree_fingerprint(str(tmp_path / "missing")) == ""
    assert ansible_filter("llm_tree_fingerprint")(str(tmp_path)) == tree_fingerprint(str(tmp_path))
