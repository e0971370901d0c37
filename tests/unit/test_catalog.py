"""The model catalog (src/llm_toolkit/catalog/models.yml) and its checks, the plan CLI, and the Ansible filter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_toolkit.catalog import (
    check_checkpoint,
    entry_from_config_json,
    estimate_weights_bytes,
    load_models,
    resolve_ollama_tag,
)
from llm_toolkit.planner import PlanError
from tests.ansible_plugins import ansible_filter

REPO = Path(__file__).resolve().parents[2]
MODELS = load_models()
PLAN = [sys.executable, str(REPO / "scripts" / "plan.py")]
ARCH_KEYS = {
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_context",
    "num_experts",
    "experts_per_token",
}


def test_the_catalog_has_every_model_the_plan_names():
    assert set(MODELS) == {
        "gemma2-2b",
        "mistral-7b-instruct",
        "llama3.1-8b-instruct",
        "mixtral-8x7b-instruct",
        "mixtral-8x22b-instruct",
    }


@pytest.mark.parametrize("key", sorted(MODELS))
def test_every_entry_is_complete(key):
    entry = MODELS[key]
    assert set(entry["architecture"]) >= ARCH_KEYS
    assert "fp16" in entry["formats"]
    for fmt, facts in entry["formats"].items():
        assert fmt in ("fp16", "awq", "gptq")
        assert isinstance(facts["gated"], bool)
        assert facts["weights_gb"] > 0
        assert "repo" in facts
    assert entry["ollama"]["tag"].count(":") == 1
    assert entry["ollama"]["download_gb"] > 0


@pytest.mark.parametrize(
    ("key", "fmt"), [(key, fmt) for key, entry in sorted(MODELS.items()) for fmt in entry["formats"]]
)
def test_catalog_weight_sizes_agree_with_the_architecture(key, fmt):
    entry = MODELS[key]
    estimate = estimate_weights_bytes(entry["architecture"], fmt, entry["formats"][fmt].get("group_size", 128)) / 1e9
    assert estimate == pytest.approx(entry["formats"][fmt]["weights_gb"], rel=0.03)


def test_mixtral_total_parameters_are_46_7_billion():
    arch = MODELS["mixtral-8x7b-instruct"]["architecture"]
    assert estimate_weights_bytes(arch, "fp16") / 2 / 1e9 == pytest.approx(46.7, abs=0.1)


def test_gated_repositories_are_flagged():
    assert MODELS["mixtral-8x7b-instruct"]["formats"]["fp16"]["gated"] is True
    assert MODELS["mixtral-8x7b-instruct"]["formats"]["awq"]["gated"] is False
    assert MODELS["gemma2-2b"]["formats"]["fp16"]["gated"] is True


def test_the_plans_ollama_tag_without_v0_1_maps_to_the_real_tag_with_a_warning():
    tag, warning = resolve_ollama_tag(MODELS, "mixtral:8x7b-instruct-q4_K_M")
    assert tag == "mixtral:8x7b-instruct-v0.1-q4_K_M"
    assert "does not exist" in warning
    assert resolve_ollama_tag(MODELS, "mixtral:8x7b-instruct-v0.1-q4_K_M") == (
        "mixtral:8x7b-instruct-v0.1-q4_K_M",
        None,
    )
    assert resolve_ollama_tag(MODELS, "gemma2:2b") == ("gemma2:2b", None)


def test_the_known_bad_mixtral_awq_repo_is_refused_with_the_good_ones():
    with pytest.raises(PlanError, match=r"refused.*empty output.*casperhansen/mixtral-instruct-awq"):
        check_checkpoint(MODELS, "mixtral-8x7b-instruct", "awq", "TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ")


def test_awq_on_the_unquantized_checkpoint_is_refused_with_the_fix():
    with pytest.raises(PlanError) as error:
        check_checkpoint(MODELS, "mixtral-8x7b-instruct", "awq", "mistralai/Mixtral-8x7B-Instruct-v0.1")
    message = str(error.value)
    assert "Cannot find the config file for awq" in message
    assert "fix: use casperhansen/mixtral-instruct-awq with --format awq" in message


def test_a_quantized_checkpoint_with_the_wrong_format_is_refused():
    with pytest.raises(PlanError, match="is the awq checkpoint of mixtral-8x7b-instruct, not fp16; fix: --format awq"):
        check_checkpoint(MODELS, "mixtral-8x7b-instruct", "fp16", "casperhansen/mixtral-instruct-awq")


def test_repositories_outside_the_catalog_are_accepted_with_a_note():
    assert check_checkpoint(MODELS, "mixtral-8x7b-instruct", "awq", "casperhansen/mixtral-instruct-awq") is None
    assert "not in the catalog" in check_checkpoint(MODELS, "mixtral-8x7b-instruct", "awq", "me/my-awq")


def write_checkpoint(directory: Path, config: dict, weight_files: dict[str, int]) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    for name, size in weight_files.items():
        with open(directory / name, "wb") as handle:
            handle.truncate(size)
    return directory / "config.json"


MIXTRAL_CONFIG = {
    "model_type": "mixtral",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
}


def test_a_local_config_json_is_planned_with_the_size_of_its_weight_files(tmp_path):
    config = write_checkpoint(
        tmp_path / "my-mixtral-awq",
        {**MIXTRAL_CONFIG, "quantization_config": {"quant_method": "awq", "group_size": 128, "bits": 4}},
        {"model-00001-of-00002.safetensors": 12_000_000_000, "model-00002-of-00002.safetensors": 12_500_000_000},
    )
    key, entry, fmt = entry_from_config_json(config, ["gemma2"])
    assert (key, fmt) == ("my-mixtral-awq", "awq")
    assert entry["formats"]["awq"]["weights_gb"] == 24.5
    assert entry["architecture"]["head_dim"] == 128
    assert entry["architecture"]["num_experts"] == 8
    assert entry["float16_unsupported"] is False


def test_a_local_config_json_without_weights_gets_an_estimate(tmp_path):
    config = write_checkpoint(
        tmp_path / "gemma",
        {
            "model_type": "gemma2",
            "num_hidden_layers": 26,
            "hidden_size": 2304,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "intermediate_size": 9216,
            "vocab_size": 256000,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": True,
        },
        {},
    )
    _, entry, fmt = entry_from_config_json(config, ["gemma2"])
    assert fmt == "fp16"
    assert entry["formats"]["fp16"]["estimated"] is True
    assert entry["formats"]["fp16"]["weights_gb"] == pytest.approx(5.2, rel=0.03)
    assert entry["float16_unsupported"] is True


def test_a_config_json_that_is_not_a_model_config_is_bad_input(tmp_path):
    config = write_checkpoint(tmp_path / "x", {"hello": 1}, {})
    with pytest.raises(PlanError, match="no 'num_hidden_layers'"):
        entry_from_config_json(config, [])


def plan_cli(*args):
    return subprocess.run([*PLAN, *args], capture_output=True, text=True, check=False)


def test_cli_json_has_the_contract_keys_and_exit_0_when_a_plan_exists():
    result = plan_cli(
        "--model",
        "mixtral-8x7b-instruct",
        "--format",
        "awq",
        "--gpus",
        "2",
        "--gpu-mem-mib",
        "23028",
        "--compute-cap",
        "8.6",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["tensor_parallel_size"] == 2
    assert output["fits"] is True
    assert set(output["per_gpu_mib"]) >= {"weights", "kv_cache", "overhead", "available"}
    assert output["rejected"] == [{"tp": 1, "reason": output["rejected"][0]["reason"]}]
    assert "--tensor-parallel-size=2" in output["vllm_args"]


def test_cli_exits_1_with_null_tp_when_nothing_fits():
    result = plan_cli(
        "--model", "mixtral-8x7b-instruct", "--format", "awq", "--gpus", "1", "--gpu-mem-mib", "23034", "--json"
    )
    assert result.returncode == 1
    output = json.loads(result.stdout)
    assert output["tensor_parallel_size"] is None
    assert output["fits"] is False
    assert output["suggestions"]


def test_cli_table_shows_the_choice_the_budget_and_the_rejections():
    result = plan_cli(
        "--model",
        "mixtral-8x7b-instruct",
        "--format",
        "fp16",
        "--gpus",
        "4",
        "--gpu-mem-mib",
        "40960",
        "--compute-cap",
        "8.0",
    )
    assert result.returncode == 0
    assert "plan     tensor-parallel size 4" in result.stdout
    assert "rejected TP 3: 32 attention heads are not divisible by 3" in result.stdout
    assert "vllm     --tensor-parallel-size=4" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "mixtral", "--gpus", "1", "--gpu-mem-mib", "1"], "expected one of: gemma2-2b, llama3.1-8b"),
        (["--model", "gemma2-2b", "--gpus", "-1", "--gpu-mem-mib", "1"], "--gpus -1 is not positive"),
        (
            ["--model", "gemma2-2b", "--gpus", "1", "--gpu-mem-mib", "1", "--gpu-memory-utilization", "2"],
            "outside (0, 1]",
        ),
        (
            ["--model", "gemma2-2b", "--gpus", "1", "--gpu-mem-mib", "1", "--max-model-len", "10000"],
            "above the 8192-token context",
        ),
        (["--model", "gemma2-2b", "--gpus", "1"], "the following arguments are required: --gpu-mem-mib"),
        (
            [
                "--model",
                "mixtral-8x7b-instruct",
                "--format",
                "awq",
                "--repo",
                "mistralai/Mixtral-8x7B-Instruct-v0.1",
                "--gpus",
                "2",
                "--gpu-mem-mib",
                "23028",
            ],
            "Cannot find the config file for awq",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, fragment):
    result = plan_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("plan: error: ")
    assert fragment in result.stderr


def test_cli_plans_a_local_config_json(tmp_path):
    config = write_checkpoint(tmp_path / "mixtral-local", MIXTRAL_CONFIG, {"model.safetensors": 93_400_000_000})
    result = plan_cli(
        "--config-json", str(config), "--gpus", "2", "--gpu-mem-mib", "81920", "--compute-cap", "9.0", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tensor_parallel_size"] == 2
    wrong = plan_cli("--config-json", str(config), "--format", "awq", "--gpus", "2", "--gpu-mem-mib", "81920")
    assert wrong.returncode == 2
    assert "describes a fp16 checkpoint" in wrong.stderr


def test_the_filter_plans_from_gpu_facts():
    gpus = [{"memory_total_mib": 23028, "compute_cap": "8.6"}] * 2
    result = ansible_filter("llm_serving_plan")(gpus, "mixtral-8x7b-instruct", "awq")
    assert result["tensor_parallel_size"] == 2
    mixed = [{"memory_total_mib": 81920, "compute_cap": "8.0"}, {"memory_total_mib": 23028, "compute_cap": "7.5"}]
    planned = ansible_filter("llm_serving_plan")(mixed, "mistral-7b-instruct", "awq")
    assert (planned["gpu_mem_mib"], planned["compute_cap"]) == (23028, "7.5")
    assert ansible_filter("llm_catalog_model")("gemma2-2b")["ollama"]["tag"] == "gemma2:2b"


def test_the_filter_takes_an_operators_tp_and_can_return_its_refusal():
    plan_filter = ansible_filter("llm_serving_plan")
    gpus = [{"memory_total_mib": 23028, "compute_cap": "8.6"}] * 4
    assert plan_filter(gpus, "mixtral-8x7b-instruct", "awq", tensor_parallel_size=4)["tensor_parallel_size"] == 4
    refused = plan_filter(gpus, "mixtral-8x7b-instruct", "awq", tensor_parallel_size=3, errors="return")
    assert refused["error"].startswith(
        "tensor-parallel size 3 for mixtral-8x7b-instruct (awq) on 4 GPU(s) is not valid"
    )
    assert (
        "'no-such-model' is not in the catalog" in plan_filter(gpus, "no-such-model", "awq", errors="return")["error"]
    )


def ansible_debug(expression: str) -> subprocess.CompletedProcess:
    """Evaluate a Jinja expression with ad-hoc ansible, using the repository's ansible.cfg."""
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible")),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "ansible.builtin.debug",
            "-a",
            f"msg={expression}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        check=False,
    )


def test_ansible_finds_the_filters_through_ansible_cfg():
    gpus = '[{"memory_total_mib": 23028, "compute_cap": "8.6"}, {"memory_total_mib": 23028, "compute_cap": "8.6"}]'
    result = ansible_debug(
        f"{{{{ ({gpus} | llm_serving_plan('mixtral-8x7b-instruct', 'awq')).tensor_parallel_size }}}}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "msg: 2" in result.stdout
    bad = ansible_debug("{{ [{'memory_total_mib': 1, 'compute_cap': '8.0'}] | llm_serving_plan('nope') }}")
    assert bad.returncode != 0
    assert "--model 'nope' is not in the catalog" in bad.stdout + bad.stderr
