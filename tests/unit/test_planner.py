"""The serving planner (plugins/module_utils/llm_planner.py): valid TP, VRAM fit, dtype, vLLM arguments."""

import math

import pytest

from llm_toolkit.catalog import load_models, load_serving
from llm_toolkit.planner import (
    PlanError,
    PlanRequest,
    kv_bytes_per_token_per_gpu,
    plan,
    plan_with_tensor_parallel,
    tp_invalid_reason,
)

MODELS = load_models()
SERVING = load_serving()
MIB = 2**20
GB24, GB40, GB48, GB80 = 23034, 40960, 46068, 81920  # MiB as nvidia-smi reports L4, A100-40, L40S, A100-80


def make_plan(model, fmt, gpus, mem, cc="8.9", **options):
    return plan(PlanRequest(model, fmt, gpus, mem, cc, **options), MODELS[model], SERVING)


# Expected TP for Mixtral 8x7B at the defaults (8192 tokens x 4 sequences, utilization 0.9), worked by hand:
# AWQ weights 24.7 GB = 23,556 MiB; fp16 93.4 GB = 89,074 MiB; KV 4,096 MiB at TP 1, halved per TP doubling;
# overhead 2,048 MiB (+512 with TP > 1). None: nothing fits.
MIXTRAL_MATRIX = [
    # format, memory, {gpus: expected tp}
    ("awq", GB24, {1: None, 2: 2, 4: 2, 8: 2}),
    ("awq", GB40, {1: 1, 2: 1, 4: 1, 8: 1}),
    ("awq", GB48, {1: 1, 2: 1, 4: 1, 8: 1}),
    ("awq", GB80, {1: 1, 2: 1, 4: 1, 8: 1}),
    ("fp16", GB24, {1: None, 2: None, 4: None, 8: 8}),
    ("fp16", GB40, {1: None, 2: None, 4: 4, 8: 4}),
    ("fp16", GB48, {1: None, 2: None, 4: 4, 8: 4}),
    ("fp16", GB80, {1: None, 2: 2, 4: 2, 8: 2}),
]


@pytest.mark.parametrize(
    ("fmt", "memory", "gpus", "expected"),
    [(fmt, memory, gpus, tp) for fmt, memory, table in MIXTRAL_MATRIX for gpus, tp in table.items()],
)
def test_mixtral_8x7b_gets_the_smallest_tp_that_fits(fmt, memory, gpus, expected):
    result = make_plan("mixtral-8x7b-instruct", fmt, gpus, memory)
    assert result["tensor_parallel_size"] == expected
    assert result["fits"] is (expected is not None)
    if expected:
        assert result["per_gpu_mib"]["needed"] <= result["per_gpu_mib"]["available"]
        assert f"--tensor-parallel-size={expected}" in result["vllm_args"]
        assert [row["tp"] for row in result["rejected"]] == list(range(1, expected)) or expected == 1
    else:
        assert result["vllm_args"] == []
        assert result["suggestions"]


def test_memory_arithmetic_matches_the_formula():
    budget = make_plan("mixtral-8x7b-instruct", "awq", 2, GB24)["per_gpu_mib"]
    assert budget == {
        "weights": math.ceil(24.7e9 / MIB / 2),
        "kv_cache": 2 * 32 * (8 // 2) * 128 * 2 * 8192 * 4 // MIB,
        "overhead": 2048 + 512,
        "available": math.floor(GB24 * 0.9),
        "needed": math.ceil(24.7e9 / MIB / 2) + 2048 + 2560,
        "headroom": math.floor(GB24 * 0.9) - (math.ceil(24.7e9 / MIB / 2) + 2048 + 2560),
    }


def test_moe_is_sized_on_total_parameters_not_active_ones():
    result = make_plan("mixtral-8x7b-instruct", "fp16", 2, GB80)
    total = 46.7e9 * 2 / MIB
    assert result["per_gpu_mib"]["weights"] == math.ceil(total / 2)
    assert result["per_gpu_mib"]["weights"] > 12.9e9 * 2 / MIB
    assert any("MoE" in note for note in result["notes"])


@pytest.mark.parametrize("gpus", [3, 6])
def test_three_and_six_gpus_are_invalid_tp_sizes_for_32_head_models(gpus):
    result = make_plan("mixtral-8x7b-instruct", "fp16", gpus, GB24)
    reasons = {row["tp"]: row["reason"] for row in result["rejected"]}
    assert reasons[3] == "32 attention heads are not divisible by 3"
    if gpus == 6:
        assert reasons[6] == "32 attention heads are not divisible by 6"
        assert reasons[5] == "32 attention heads are not divisible by 5"
    assert result["tensor_parallel_size"] is None
    assert any("8 GPUs" in suggestion for suggestion in result["suggestions"])


def test_three_gpus_use_two_when_two_fit():
    result = make_plan("mixtral-8x7b-instruct", "awq", 3, GB24)
    assert result["tensor_parallel_size"] == 2
    assert any("1 of 3 GPUs unused" in note for note in result["notes"])


def test_mixtral_8x22b_48_heads_rejects_tp_3_and_6_for_its_8_kv_heads():
    result = make_plan("mixtral-8x22b-instruct", "fp16", 6, GB80, cc="8.0")
    assert result["tensor_parallel_size"] == 4
    assert {"tp": 3, "reason": "8 KV heads are not divisible by 3"} in result["rejected"]
    nothing = make_plan("mixtral-8x22b-instruct", "fp16", 6, GB48, cc="8.9")
    reasons = {row["tp"]: row["reason"] for row in nothing["rejected"]}
    assert reasons[5] == "48 attention heads are not divisible by 5"
    assert reasons[6] == "8 KV heads are not divisible by 6"
    assert nothing["tensor_parallel_size"] is None


@pytest.mark.parametrize(
    ("model", "fmt", "valid"),
    [
        ("mixtral-8x7b-instruct", "fp16", {1, 2, 4, 8, 16, 32}),
        ("mistral-7b-instruct", "fp16", {1, 2, 4, 8, 16, 32}),
        ("llama3.1-8b-instruct", "fp16", {1, 2, 4, 8, 16, 32}),
        # the heads allow {1,2,4,8,16,24,48} (docs/models-and-sizing.md §5); a 32768 vocabulary rules out 24 and 48
        ("mixtral-8x22b-instruct", "fp16", {1, 2, 4, 8, 16}),
        ("gemma2-2b", "fp16", {1, 2, 4, 8}),
        # AWQ: 14336 / 128 = 112 groups, not divisible by 32
        ("mixtral-8x7b-instruct", "awq", {1, 2, 4, 8, 16}),
    ],
)
def test_valid_tensor_parallel_sizes_follow_vllms_rules(model, fmt, valid):
    entry = MODELS[model]
    found = {
        tp
        for tp in range(1, 65)
        if tp_invalid_reason(entry["architecture"], entry["formats"][fmt], fmt, tp, 64) is None
    }
    assert found == valid


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    arch = MODELS["gemma2-2b"]["architecture"]
    assert kv_bytes_per_token_per_gpu(arch, 1, 2) == 2 * 26 * 4 * 256 * 2
    assert kv_bytes_per_token_per_gpu(arch, 8, 2) == 2 * 26 * 1 * 256 * 2


def test_tp_above_the_gpu_count_is_never_planned():
    assert tp_invalid_reason(MODELS["mistral-7b-instruct"]["architecture"], {}, "fp16", 4, 2) == (
        "needs 4 GPUs, the host has 2"
    )


def test_v100_refuses_awq_for_every_tp():
    result = make_plan("mixtral-8x7b-instruct", "awq", 2, 32768, cc="7.0")
    assert result["tensor_parallel_size"] is None
    assert [row["reason"] for row in result["rejected"]] == [
        "compute capability 7.0 is below 7.5, which the AWQ kernels need"
    ] * 2
    assert result["suggestions"] == ["a GPU of compute capability 7.5 or newer"]


def test_fit_boundary_on_both_sides():
    weights = math.ceil(14.5e9 / MIB)
    kv = 2 * 32 * 8 * 128 * 2 * 8192 * 4 // MIB
    needed = weights + kv + 2048
    exact = make_plan("mistral-7b-instruct", "fp16", 1, needed, gpu_memory_utilization=1)
    assert exact["tensor_parallel_size"] == 1
    assert exact["per_gpu_mib"]["headroom"] == 0
    short = make_plan("mistral-7b-instruct", "fp16", 1, needed - 1, gpu_memory_utilization=1)
    assert short["tensor_parallel_size"] is None
    assert short["rejected"] == [
        {
            "tp": 1,
            "reason": f"needs {needed} MiB per GPU (weights {weights} + KV cache {kv} + overhead 2048), "
            f"only {needed - 1} MiB available ({needed - 1} MiB x 1.0)",
        }
    ]


def test_nothing_fits_suggests_a_shorter_context_that_really_fits():
    result = make_plan("llama3.1-8b-instruct", "fp16", 1, GB24, max_model_len=131072)
    assert result["fits"] is False
    shorter = next(s for s in result["suggestions"] if s.startswith("--max-model-len"))
    length = int(shorter.split()[1])
    assert make_plan("llama3.1-8b-instruct", "fp16", 1, GB24, max_model_len=length)["fits"]
    assert not make_plan("llama3.1-8b-instruct", "fp16", 1, GB24, max_model_len=length + 256)["fits"]


def test_nothing_fits_in_fp16_suggests_the_quantized_format_and_more_hosts():
    result = make_plan("mixtral-8x7b-instruct", "fp16", 2, GB24)
    assert "--format awq (4-bit) fits with TP 2 on these GPUs" in result["suggestions"]
    assert any("--pipeline-parallel-size" in s for s in result["suggestions"])


@pytest.mark.parametrize(
    ("cc", "dtype", "weights_factor"),
    [("8.9", "bfloat16", 1), ("8.0", "bfloat16", 1), ("7.5", "float32", 2)],
)
def test_gemma2_never_runs_float16(cc, dtype, weights_factor):
    result = make_plan("gemma2-2b", "fp16", 1, GB80, cc=cc)
    assert result["dtype"] == dtype
    assert f"--dtype={dtype}" in result["vllm_args"]
    assert result["per_gpu_mib"]["weights"] == math.ceil(5.2e9 * weights_factor / MIB)
    kv_bytes = 4 if dtype == "float32" else 2
    assert result["per_gpu_mib"]["kv_cache"] == 2 * 26 * 4 * 256 * kv_bytes * 8192 * 4 // MIB


def test_fp16_models_use_float16_on_gpus_without_bfloat16():
    assert make_plan("mistral-7b-instruct", "fp16", 1, GB40, cc="7.5")["dtype"] == "float16"


@pytest.mark.parametrize(("cc", "quantization"), [("8.6", "--quantization=awq_marlin"), ("7.5", None)])
def test_awq_checkpoints_never_get_the_slow_awq_flag(cc, quantization):
    result = make_plan("mixtral-8x7b-instruct", "awq", 2, GB24, cc=cc)
    assert "--quantization=awq" not in result["vllm_args"]
    flags = [arg for arg in result["vllm_args"] if arg.startswith("--quantization")]
    assert flags == ([quantization] if quantization else [])


def test_unquantized_checkpoints_never_get_a_quantization_flag():
    for cc in ("7.5", "8.0", "9.0"):
        result = make_plan("mixtral-8x7b-instruct", "fp16", 8, GB80, cc=cc)
        assert not any(arg.startswith("--quantization") for arg in result["vllm_args"])


def test_fp8_kv_cache_halves_the_cache_and_needs_ampere():
    auto = make_plan("llama3.1-8b-instruct", "fp16", 1, GB80, max_model_len=32768)
    fp8 = make_plan("llama3.1-8b-instruct", "fp16", 1, GB80, max_model_len=32768, kv_cache_dtype="fp8")
    assert fp8["per_gpu_mib"]["kv_cache"] * 2 == auto["per_gpu_mib"]["kv_cache"]
    assert "--kv-cache-dtype=fp8" in fp8["vllm_args"]
    turing = make_plan("llama3.1-8b-instruct", "fp16", 1, GB80, cc="7.5", kv_cache_dtype="fp8")
    assert turing["fits"] is False
    assert turing["suggestions"] == ["--kv-cache-dtype auto runs on this GPU"]


def test_unknown_gpu_skips_compute_capability_gates_and_lets_vllm_pick_the_dtype():
    result = make_plan("mixtral-8x7b-instruct", "awq", 2, GB24, cc=None)
    assert result["dtype"] == "auto"
    assert result["tensor_parallel_size"] == 2
    assert not any(arg.startswith("--quantization") for arg in result["vllm_args"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpus": 0}, "--gpus 0 is not positive; expected the GPUs of one host, 1 to 16"),
        ({"gpus": 100000000}, "--gpus 100000000 is above 16, the most the planner accepts"),
        ({"gpus": 17}, "--gpus 17 is above 16"),
        ({"gpu_mem_mib": 10**7}, "--gpu-mem-mib 10000000 is above 1048576"),
        ({"concurrency": 100000}, "--concurrency 100000 is above 4096"),
        ({"gpu_memory_utilization": "nan"}, "--gpu-memory-utilization nan is outside (0, 1]"),
        ({"gpus": "two"}, "--gpus 'two' is not a whole number"),
        ({"gpu_mem_mib": -5}, "--gpu-mem-mib -5 is not positive"),
        ({"gpu_memory_utilization": 0}, "--gpu-memory-utilization 0.0 is outside (0, 1]"),
        ({"gpu_memory_utilization": 1.01}, "--gpu-memory-utilization 1.01 is outside (0, 1]"),
        ({"gpu_memory_utilization": "most"}, "--gpu-memory-utilization 'most' is not a number"),
        ({"concurrency": 0}, "--concurrency 0 is not positive"),
        ({"max_model_len": 40000}, "--max-model-len 40000 is above the 32768-token context of mixtral-8x7b-instruct"),
        ({"compute_cap": "ampere"}, "--compute-cap 'ampere' is not a compute capability"),
        ({"kv_cache_dtype": "int4"}, "--kv-cache-dtype 'int4' is unknown"),
        ({"fmt": "gguf"}, "--format 'gguf' is unknown"),
    ],
)
def test_bad_input_names_the_argument_and_the_allowed_range(options, message):
    request = {"model": "mixtral-8x7b-instruct", "fmt": "awq", "gpus": 2, "gpu_mem_mib": GB24, "compute_cap": "8.9"}
    with pytest.raises(PlanError) as error:
        plan(PlanRequest(**{**request, **options}), MODELS["mixtral-8x7b-instruct"], SERVING)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_max_model_len_defaults_to_8192_within_the_models_context():
    assert make_plan("mixtral-8x7b-instruct", "awq", 1, GB80)["max_model_len"] == 8192
    assert make_plan("gemma2-2b", "fp16", 1, GB80)["max_model_len"] == 8192


def test_an_operators_tensor_parallel_size_is_used_only_when_valid_and_fitting():
    request = PlanRequest("mixtral-8x7b-instruct", "awq", 4, 40960, "8.0", max_model_len=8192)
    entry = MODELS["mixtral-8x7b-instruct"]
    chosen = plan(request, entry, SERVING)["tensor_parallel_size"]
    assert plan_with_tensor_parallel(request, entry, SERVING, chosen) == plan(request, entry, SERVING)
    forced = plan_with_tensor_parallel(request, entry, SERVING, 4)
    assert forced["tensor_parallel_size"] == 4
    assert "--tensor-parallel-size=4" in forced["vllm_args"]
    assert forced["per_gpu_mib"]["needed"] <= forced["per_gpu_mib"]["available"]
    assert f"the planner would pick {chosen}" in forced["notes"][-1]
    with pytest.raises(PlanError, match=r"tensor-parallel size 3 .* is not valid: 32 attention heads"):
        plan_with_tensor_parallel(request, entry, SERVING, 3)
    with pytest.raises(PlanError, match="needs 8 GPUs, the host has 4"):
        plan_with_tensor_parallel(request, entry, SERVING, 8)
    with pytest.raises(PlanError, match="positive integer"):
        plan_with_tensor_parallel(request, entry, SERVING, 0)
    small = PlanRequest("mixtral-8x7b-instruct", "awq", 2, 23034, "8.9", max_model_len=8192)
    with pytest.raises(PlanError, match=r"tensor-parallel size 1 .* does not fit: needs"):
        plan_with_tensor_parallel(small, entry, SERVING, 1)


# --- a warm fallback: Ollama's copy of the model stays loaded beside vLLM (llm_fallback_warm) -------
# Mixtral 8x7B's Ollama tag: 26.4 GB = 25,178 MiB of weights + its KV cache at 16 bits for 24,576
# tokens (128 KiB a token: 3,072 MiB) + 1,024 MiB overhead = 29,274 MiB on the host's GPUs together.
FALLBACK_MIB = 25178 + 3072 + 1024
GB141 = 143771  # MiB, an H200


def free_beside_vllm(result) -> int:
    """GPU memory vLLM leaves on the host: its unused GPUs whole, and each of its own less what it takes."""
    unused = result["gpus"] - result["tensor_parallel_size"]
    taken = math.floor(result["gpu_mem_mib"] * result["gpu_memory_utilization"])
    return unused * result["gpu_mem_mib"] + result["tensor_parallel_size"] * (result["gpu_mem_mib"] - taken)


@pytest.mark.parametrize(
    ("gpus", "mem", "utilization"),
    [(1, GB80, 0.64), (1, GB141, 0.79), (2, GB24, None), (1, GB40, None), (2, GB80, 0.9), (4, GB40, 0.9)],
)
def test_a_warm_fallback_lowers_the_utilization_until_ollama_fits_beside_vllm(gpus, mem, utilization):
    result = make_plan("mixtral-8x7b-instruct", "awq", gpus, mem, fallback_warm=True)
    if utilization is None:
        assert not result["fits"], result
        return
    assert result["fits"]
    assert result["fallback_warm_mib"] == FALLBACK_MIB
    assert result["gpu_memory_utilization"] == utilization
    assert f"--gpu-memory-utilization={utilization}" in result["vllm_args"]
    assert free_beside_vllm(result) >= FALLBACK_MIB
    # the highest utilization that leaves it room: one step (0.01) more would not
    if result["tensor_parallel_size"] == gpus:
        assert free_beside_vllm({**result, "gpu_memory_utilization": utilization + 0.01}) < FALLBACK_MIB
    assert result["per_gpu_mib"]["headroom"] >= 0


def test_the_plan_says_why_the_utilization_is_lower():
    result = make_plan("mixtral-8x7b-instruct", "awq", 1, GB80, fallback_warm=True)
    note = next(note for note in result["notes"] if note.startswith("warm fallback"))
    assert "Ollama's mixtral:8x7b-instruct-v0.1-q4_K_M stays loaded beside vLLM, 29274 MiB" in note
    assert "(weights 25178 + KV cache 3072 for 24576 tokens + overhead 1024)" in note
    assert note.endswith("gpu_memory_utilization lowered from 0.9 to 0.64")
    spare = make_plan("mixtral-8x7b-instruct", "awq", 2, GB80, fallback_warm=True)
    assert any("fits on the 1 GPU(s) vLLM leaves unused; utilization unchanged" in note for note in spare["notes"])


def test_without_the_warm_fallback_nothing_changes():
    cold = make_plan("mixtral-8x7b-instruct", "awq", 1, GB80)
    assert cold["gpu_memory_utilization"] == 0.9 and cold["fallback_warm_mib"] is None
    assert not any(note.startswith("warm fallback") for note in cold["notes"])


def test_a_warm_fallback_that_cannot_fit_is_refused_with_the_reason_and_the_way_out():
    result = make_plan("mixtral-8x7b-instruct", "awq", 2, GB24, fallback_warm=True)
    assert not result["fits"] and result["vllm_args"] == []
    assert "leaving 29274 MiB for the warm fallback" in result["rejected"][-1]["reason"]
    assert "without the warm fallback (llm_fallback_warm: false; it then loads cold) TP 2 fits" in result["suggestions"]
    assert any("no tensor-parallel size leaves it room" in note for note in result["notes"])
    # an operator's tensor-parallel size is refused the same way
    with pytest.raises(PlanError, match=r"does not fit: needs .* leaving 29274 MiB for the warm fallback"):
        plan_with_tensor_parallel(
            PlanRequest("mixtral-8x7b-instruct", "awq", 2, GB24, "8.9", fallback_warm=True),
            MODELS["mixtral-8x7b-instruct"],
            SERVING,
            2,
        )


def test_an_operators_utilization_is_the_ceiling_the_fallback_lowers():
    result = make_plan("mixtral-8x7b-instruct", "awq", 1, GB80, gpu_memory_utilization=0.5, fallback_warm=True)
    assert result["gpu_memory_utilization"] == 0.5
    result = make_plan("mixtral-8x7b-instruct", "awq", 1, GB80, gpu_memory_utilization=0.95, fallback_warm=True)
    assert result["gpu_memory_utilization"] == 0.64


def test_an_operators_tensor_parallel_size_gets_its_own_utilization_beside_the_fallback():
    request = PlanRequest("mixtral-8x7b-instruct", "awq", 2, GB80, "8.9", fallback_warm=True)
    result = plan_with_tensor_parallel(request, MODELS["mixtral-8x7b-instruct"], SERVING, 2)
    assert result["tensor_parallel_size"] == 2
    assert free_beside_vllm(result) >= FALLBACK_MIB
    assert f"--gpu-memory-utilization={result['gpu_memory_utilization']}" in result["vllm_args"]


def test_a_model_without_an_ollama_tag_has_no_fallback_to_keep_warm():
    entry = {**MODELS["mixtral-8x7b-instruct"], "ollama": None}
    with pytest.raises(PlanError, match=r"has no Ollama tag in the catalog.*llm_fallback_warm: false"):
        plan(PlanRequest("mixtral-8x7b-instruct", "awq", 1, GB80, "8.9", fallback_warm=True), entry, SERVING)


def test_the_plan_command_and_the_roles_filter_leave_room_for_a_warm_fallback(capsys):
    from llm_toolkit.plan import main  # noqa: PLC0415
    from tests.ansible_plugins import ansible_filter  # noqa: PLC0415

    args = ["--model", "mixtral-8x7b-instruct", "--format", "awq", "--gpus", "1", "--gpu-mem-mib", str(GB80)]
    assert main([*args, "--fallback-warm"]) == 0
    assert "note     warm fallback: Ollama's" in capsys.readouterr().out
    two_small = ["--model", "mixtral-8x7b-instruct", "--format", "awq", "--gpus", "2", "--gpu-mem-mib", str(GB24)]
    assert main([*two_small, "--fallback-warm"]) == 1
    assert "instead  without the warm fallback" in capsys.readouterr().out
    gpus = [{"memory_total_mib": GB80, "compute_cap": "9.0"}]
    serving_plan = ansible_filter("llm_serving_plan")
    assert serving_plan(gpus, "mixtral-8x7b-instruct", "awq", fallback_warm=True)["gpu_memory_utilization"] == 0.64
    assert serving_plan(gpus, "mixtral-8x7b-instruct", "awq")["gpu_memory_utilization"] == 0.9
