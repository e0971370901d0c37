"""Serving planner: the smallest valid tensor-parallel size that fits, proven and explained.

Pure Python (standard library only): the catalog entry and the serving facts come in as
dicts (src/llm_toolkit/catalog/models.yml, src/llm_toolkit/catalog/serving.yml), the plan goes out as a dict. Used by
scripts/plan.py, the llm_serving_plan filter, preflight and the vLLM role.

Sizing, per GPU, for tensor-parallel size t (docs/models-and-sizing.md §4, §5):
    weights   = weight files / t              (MoE: all experts are resident, so total parameters)
    kv_cache  = 2 x layers x max(kv_heads / t, 1) x head_dim x kv_bytes x max_model_len x concurrency
    overhead  = runtime_overhead_mib.base (+ .tensor_parallel when t > 1)
    fits when weights + kv_cache + overhead <= floor(gpu_mem_mib x gpu_memory_utilization)

A warm fallback (fallback_warm: Ollama keeps the model's Ollama tag loaded beside vLLM) needs
    fallback  = the tag's download size + its 16-bit KV cache for fallback_warm.tokens
                (Ollama's context x its parallel requests) + fallback_warm.overhead_mib
free on the host's GPUs: the GPUs vLLM leaves unused plus, on each of its t GPUs, what
gpu_memory_utilization leaves. The planner lowers gpu_memory_utilization (in steps of 0.01) per t
until the fallback fits, and says so in the plan's notes (docs/models-and-sizing.md, section 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 2**20
FORMATS = ("fp16", "awq", "gptq")
KV_CACHE_DTYPES = ("auto", "fp8")
MIN_USEFUL_MODEL_LEN = 1024
MAX_SUGGESTED_GPUS = 16


class PlanError(ValueError):
    """Bad input: the message names the argument, the value, what is allowed and the fix."""


@dataclass(frozen=True)
class PlanRequest:
    model: str
    fmt: str
    gpus: int
    gpu_mem_mib: int
    compute_cap: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    concurrency: int | None = None
    kv_cache_dtype: str | None = None
    fallback_warm: bool = False


def parse_compute_cap(value: str | None) -> tuple[int, int] | None:
    """'8.9' -> (8, 9); None stays None (the GPU is unknown, compute-capability gates are skipped)."""
    if value is None:
        return None
    text = str(value).strip()
    major, dot, minor = text.partition(".")
    if not (major.isdigit() and dot and minor.isdigit()):
        raise PlanError(
            f"--compute-cap {value!r} is not a compute capability; expected X.Y such as 8.9 (L4) or 7.5 (T4)"
        )
    return int(major), int(minor)


def lowest_compute_cap(gpus: list[dict]) -> str | None:
    """The oldest compute capability among a host's GPUs ('8.6'), or None when none is known."""
    caps = [str(gpu["compute_cap"]) for gpu in gpus if gpu.get("compute_cap")]
    return min(caps, key=parse_compute_cap, default=None)


def request_for_gpus(model: str, fmt: str, gpus: list[dict], **options) -> PlanRequest:
    """A plan request for a host's GPUs (dicts with memory_total_mib and compute_cap): a mixed
    set is planned on its smallest and oldest GPU."""
    return PlanRequest(
        model=model,
        fmt=fmt,
        gpus=len(gpus),
        gpu_mem_mib=min(int(gpu["memory_total_mib"]) for gpu in gpus),
        compute_cap=lowest_compute_cap(gpus),
        **options,
    )


def _cc_text(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


# Upper bounds of the planner's inputs: beyond them a value is a typo, not a host. GPUs per host:
# 8 on an HGX/DGX board, 16 on the largest single systems; memory per GPU: 1 TiB, several times
# the largest GPU sold (docs/models-and-sizing.md, section 7); concurrency: 4096 full-length sequences, far
# above vLLM's default batch of 256 sequences.
MAX_GPUS = 16
MAX_GPU_MEM_MIB = 1024 * 1024
MAX_CONCURRENCY = 4096


def _positive_int(name: str, value, allowed: str, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PlanError(f"{name} {value!r} is not a whole number; expected {allowed}")
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise PlanError(f"{name} {value!r} is not a whole number; expected {allowed}")
    number = int(text)
    if number <= 0:
        raise PlanError(f"{name} {number} is not positive; expected {allowed}")
    if maximum is not None and number > maximum:
        raise PlanError(f"{name} {number} is above {maximum}, the most the planner accepts; expected {allowed}")
    return number


def _utilization(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"--gpu-memory-utilization {value!r} is not a number; expected a fraction in (0, 1]") from None
    if not 0 < number <= 1:
        raise PlanError(f"--gpu-memory-utilization {number} is outside (0, 1]; expected e.g. 0.9")
    return number


@dataclass(frozen=True)
class _Inputs:
    """Validated request, with the serving defaults filled in."""

    model: str
    fmt: str
    gpus: int
    gpu_mem_mib: int
    compute_cap: tuple[int, int] | None
    max_model_len: int
    utilization: float
    concurrency: int
    kv_cache_dtype: str
    fallback_mib: int = 0


def fallback_need(entry: dict, model: str, serving: dict) -> dict:
    """GPU memory (MiB, all GPUs together) the model's Ollama tag needs to stay loaded beside vLLM:
    weights, its KV cache (16-bit, Ollama's default) for serving.yml's fallback_warm.tokens, overhead."""
    ollama = entry.get("ollama") or {}
    if not ollama.get("download_gb"):
        raise PlanError(
            f"--fallback-warm: model {model} has no Ollama tag in the catalog, so there is no fallback to keep "
            "warm; expected a model with an ollama entry; fix: leave the fallback cold (llm_fallback_warm: false)"
        )
    facts = serving["fallback_warm"]
    need = {
        "weights": math.ceil(ollama["download_gb"] * 1e9 / MIB),
        "kv_cache": math.ceil(kv_bytes_per_token_per_gpu(entry["architecture"], 1, 2) * facts["tokens"] / MIB),
        "overhead": facts["overhead_mib"],
    }
    return {**need, "total": sum(need.values())}


def validate(request: PlanRequest, entry: dict, serving: dict) -> _Inputs:
    defaults = serving["defaults"]
    arch = entry["architecture"]
    if request.fmt not in FORMATS:
        raise PlanError(f"--format {request.fmt!r} is unknown; expected one of: {', '.join(FORMATS)}")
    if request.fmt not in entry["formats"]:
        raise PlanError(
            f"--format {request.fmt}: model {request.model} has no {request.fmt} checkpoint in the catalog; "
            f"expected one of: {', '.join(entry['formats'])}"
        )
    gpus = _positive_int("--gpus", request.gpus, f"the GPUs of one host, 1 to {MAX_GPUS}", MAX_GPUS)
    memory = _positive_int(
        "--gpu-mem-mib",
        request.gpu_mem_mib,
        f"the memory of one GPU in MiB, e.g. 23034 for an L4 (at most {MAX_GPU_MEM_MIB})",
        MAX_GPU_MEM_MIB,
    )
    concurrency = _positive_int(
        "--concurrency",
        defaults["concurrency"] if request.concurrency is None else request.concurrency,
        f"1 to {MAX_CONCURRENCY} full-length sequences",
        MAX_CONCURRENCY,
    )
    context = arch["max_context"]
    max_len = _positive_int(
        "--max-model-len",
        min(defaults["max_model_len"], context) if request.max_model_len is None else request.max_model_len,
        f"1 to {context} tokens for {request.model}",
    )
    if max_len > context:
        raise PlanError(
            f"--max-model-len {max_len} is above the {context}-token context of {request.model}; "
            f"expected 1 to {context}"
        )
    utilization = _utilization(
        defaults["gpu_memory_utilization"] if request.gpu_memory_utilization is None else request.gpu_memory_utilization
    )
    kv_dtype = request.kv_cache_dtype or defaults["kv_cache_dtype"]
    if kv_dtype not in KV_CACHE_DTYPES:
        raise PlanError(f"--kv-cache-dtype {kv_dtype!r} is unknown; expected one of: {', '.join(KV_CACHE_DTYPES)}")
    if not isinstance(request.fallback_warm, bool):
        raise PlanError(f"--fallback-warm {request.fallback_warm!r} is not true or false")
    fallback = fallback_need(entry, request.model, serving)["total"] if request.fallback_warm else 0
    return _Inputs(
        request.model,
        request.fmt,
        gpus,
        memory,
        parse_compute_cap(request.compute_cap),
        max_len,
        utilization,
        concurrency,
        kv_dtype,
        fallback,
    )


def beside_fallback(inputs: _Inputs, tp: int) -> tuple[_Inputs, str | None]:
    """The inputs for tensor-parallel size tp with the utilization that leaves the warm fallback room
    (unchanged without one), or a reason why no utilization does."""
    if not inputs.fallback_mib:
        return inputs, None
    short = inputs.fallback_mib - (inputs.gpus - tp) * inputs.gpu_mem_mib
    if short <= 0:
        return inputs, None
    highest = math.floor((1 - short / (tp * inputs.gpu_mem_mib)) * 100) / 100
    if highest <= 0:
        free = (inputs.gpus - tp) * inputs.gpu_mem_mib
        return inputs, (
            f"no room for the warm fallback ({inputs.fallback_mib} MiB) even with vLLM at no memory: "
            f"{free} MiB on unused GPUs + {tp} x {inputs.gpu_mem_mib} MiB"
        )
    return _replace(inputs, utilization=min(inputs.utilization, highest)), None


def choose_dtype(entry: dict, fmt: str, cc: tuple[int, int] | None, serving: dict) -> tuple[str | None, str]:
    """(dtype, why) for vLLM's --dtype; dtype None means the format cannot run here at all."""
    bf16 = cc is None or cc >= parse_compute_cap(serving["bf16_min_compute_capability"])
    refuses_fp16 = bool(entry.get("float16_unsupported"))
    if cc is None:
        return "auto", "GPU unknown: vLLM picks the dtype"
    if fmt == "fp16":
        if bf16:
            return "bfloat16", f"compute capability {_cc_text(cc)} has bfloat16"
        if refuses_fp16:
            return "float32", "vLLM refuses float16 for this model and the GPU has no bfloat16: weights and KV double"
        return "float16", f"compute capability {_cc_text(cc)} has no bfloat16"
    if refuses_fp16:
        if bf16:
            return "bfloat16", "vLLM refuses float16 for this model; the Marlin kernels run bfloat16"
        return None, f"vLLM refuses float16 for this model and the {fmt.upper()} kernels here only run float16"
    return "float16", f"{fmt.upper()} kernels run float16 activations"


def kv_bytes_per_token_per_gpu(arch: dict, tp: int, kv_bytes: int) -> int:
    kv_heads_per_gpu = max(arch["num_kv_heads"] // tp, 1)
    return 2 * arch["num_layers"] * kv_heads_per_gpu * arch["head_dim"] * kv_bytes


def tp_invalid_reason(arch: dict, fmt_entry: dict, fmt: str, tp: int, gpus: int) -> str | None:
    """Why vLLM would refuse this tensor-parallel size for the model, or None when it is valid."""
    heads, kv_heads, vocab = arch["num_attention_heads"], arch["num_kv_heads"], arch["vocab_size"]
    if tp > gpus:
        return f"needs {tp} GPUs, the host has {gpus}"
    if heads % tp:
        return f"{heads} attention heads are not divisible by {tp}"
    if kv_heads >= tp and kv_heads % tp:
        return f"{kv_heads} KV heads are not divisible by {tp}"
    if kv_heads < tp and tp % kv_heads:
        return f"{tp} is not a multiple of the {kv_heads} KV heads (they can only be replicated whole)"
    if vocab % tp:
        return f"vocabulary of {vocab} is not divisible by {tp}"
    if fmt in ("awq", "gptq"):
        group = fmt_entry.get("group_size", 128)
        groups = arch["intermediate_size"] // group
        if arch["intermediate_size"] % group or groups % tp:
            return (
                f"{fmt.upper()}: intermediate size {arch['intermediate_size']} / group size {group} = {groups} groups "
                f"are not divisible by {tp}"
            )
    return None


def compute_cap_reason(fmt: str, kv_cache_dtype: str, cc: tuple[int, int] | None, serving: dict) -> str | None:
    """Why this GPU cannot run the format (or the fp8 KV cache) at all, or None."""
    if cc is None:
        return None
    need = parse_compute_cap(serving["formats"][fmt]["min_compute_capability"])
    if cc < need:
        kernel = serving["formats"][fmt]["kernel"]
        return f"compute capability {_cc_text(cc)} is below {_cc_text(need)}, which {kernel} need"
    fp8_need = parse_compute_cap(serving["kv_cache_fp8_min_compute_capability"])
    if kv_cache_dtype == "fp8" and cc < fp8_need:
        return f"compute capability {_cc_text(cc)} is below {_cc_text(fp8_need)}, which an fp8 KV cache needs"
    return None


def _kv_bytes(kv_cache_dtype: str, dtype: str | None) -> int:
    """Bytes per KV-cache value: fp8 is one; otherwise the model dtype's size."""
    if kv_cache_dtype == "fp8":
        return 1
    return 4 if dtype == "float32" else 2


def _weights_total_mib(entry: dict, fmt: str, dtype: str | None) -> float:
    """All weights in MiB; float32 (a model that refuses float16 on a GPU without bfloat16) doubles them."""
    weights = entry["formats"][fmt]["weights_gb"] * 1e9 / MIB
    return weights * 2 if dtype == "float32" else weights


def memory_budget(entry: dict, inputs: _Inputs, tp: int, dtype: str, serving: dict) -> dict:
    """Per-GPU MiB for a tensor-parallel size (see the module docstring)."""
    weights_total = _weights_total_mib(entry, inputs.fmt, dtype)
    per_token = kv_bytes_per_token_per_gpu(entry["architecture"], tp, _kv_bytes(inputs.kv_cache_dtype, dtype))
    overhead = serving["runtime_overhead_mib"]
    budget = {
        "weights": math.ceil(weights_total / tp),
        "kv_cache": math.ceil(per_token * inputs.max_model_len * inputs.concurrency / MIB),
        "overhead": overhead["base"] + (overhead["tensor_parallel"] if tp > 1 else 0),
        "available": math.floor(inputs.gpu_mem_mib * inputs.utilization),
    }
    budget["needed"] = budget["weights"] + budget["kv_cache"] + budget["overhead"]
    budget["headroom"] = budget["available"] - budget["needed"]
    return budget


def _no_fit_reason(budget: dict, inputs: _Inputs) -> str:
    beside = f", leaving {inputs.fallback_mib} MiB for the warm fallback" if inputs.fallback_mib else ""
    return (
        f"needs {budget['needed']} MiB per GPU (weights {budget['weights']} + KV cache {budget['kv_cache']} + "
        f"overhead {budget['overhead']}), only {budget['available']} MiB available "
        f"({inputs.gpu_mem_mib} MiB x {inputs.utilization}{beside})"
    )


def vllm_args(inputs: _Inputs, tp: int, dtype: str, cc: tuple[int, int] | None, serving: dict) -> list[str]:
    """vLLM arguments that follow from the plan. Never --quantization awq: for AWQ/GPTQ checkpoints
    vLLM detects the method itself; where Marlin runs (CC >= 8.0) it is named so nothing forces the slow kernel."""
    args = [
        f"--tensor-parallel-size={tp}",
        f"--max-model-len={inputs.max_model_len}",
        f"--gpu-memory-utilization={inputs.utilization}",
        f"--dtype={dtype}",
    ]
    fmt_facts = serving["formats"][inputs.fmt]
    marlin = fmt_facts.get("marlin_min_compute_capability")
    if marlin and cc is not None and cc >= parse_compute_cap(marlin):
        args.append(f"--quantization={fmt_facts['marlin_quantization']}")
    if inputs.kv_cache_dtype == "fp8":
        args.append("--kv-cache-dtype=fp8")
    return args


def _evaluate(entry: dict, inputs: _Inputs, serving: dict) -> dict:
    """Core of plan(): the chosen TP (or None), the budget looked at, and every rejection."""
    arch = entry["architecture"]
    fmt_entry = entry["formats"][inputs.fmt]
    cc = inputs.compute_cap
    dtype, dtype_reason = choose_dtype(entry, inputs.fmt, cc, serving)
    blocker = compute_cap_reason(inputs.fmt, inputs.kv_cache_dtype, cc, serving) or (None if dtype else dtype_reason)
    rejected, chosen, budget, last_valid, chosen_inputs = [], None, None, None, inputs
    for tp in range(1, inputs.gpus + 1):
        reason = blocker or tp_invalid_reason(arch, fmt_entry, inputs.fmt, tp, inputs.gpus)
        if reason is None:
            last_valid = tp
            tp_inputs, reason = beside_fallback(inputs, tp)
        if reason is None:
            budget = memory_budget(entry, tp_inputs, tp, dtype, serving)
            if budget["headroom"] >= 0:
                chosen, chosen_inputs = tp, tp_inputs
                break
            reason = _no_fit_reason(budget, tp_inputs)
        rejected.append({"tp": tp, "reason": reason})
    if budget is None:
        budget = memory_budget(entry, inputs, 1, dtype or "float16", serving)
    return {
        "chosen": chosen,
        "budget": budget,
        "rejected": rejected,
        "dtype": dtype,
        "dtype_reason": dtype_reason,
        "blocker": blocker,
        "last_valid": last_valid,
        "inputs": chosen_inputs,
    }


def plan(request: PlanRequest, entry: dict, serving: dict) -> dict:
    """The serving plan for one model on one host's GPUs (see the module docstring)."""
    inputs = validate(request, entry, serving)
    result = _evaluate(entry, inputs, serving)
    chosen, dtype = result["chosen"], result["dtype"]
    fmt_entry = entry["formats"][inputs.fmt]
    notes = [f"dtype {dtype}: {result['dtype_reason']}"] if dtype else []
    if inputs.fallback_mib:
        notes.append(_fallback_note(entry, inputs, result["inputs"], chosen, serving))
        inputs = result["inputs"]
    arch = entry["architecture"]
    if arch.get("num_experts", 1) > 1:
        notes.append(
            f"MoE: all {arch['num_experts']} experts stay in GPU memory, so weights are sized on total parameters"
        )
    if chosen and chosen < inputs.gpus:
        notes.append(f"{inputs.gpus - chosen} of {inputs.gpus} GPUs unused by this model: room for another replica")
    if fmt_entry.get("estimated"):
        notes.append("weights size is an estimate from the architecture, not from the published files")
    return {
        "model": inputs.model,
        "format": inputs.fmt,
        "repo": fmt_entry.get("repo"),
        "gated": bool(fmt_entry.get("gated")),
        "fits": chosen is not None,
        "tensor_parallel_size": chosen,
        "gpus": inputs.gpus,
        "gpu_mem_mib": inputs.gpu_mem_mib,
        "compute_cap": _cc_text(inputs.compute_cap) if inputs.compute_cap else None,
        "dtype": dtype,
        "max_model_len": inputs.max_model_len,
        "concurrency": inputs.concurrency,
        "gpu_memory_utilization": inputs.utilization,
        "kv_cache_dtype": inputs.kv_cache_dtype,
        "fallback_warm_mib": inputs.fallback_mib or None,
        "per_gpu_mib": result["budget"],
        "rejected": result["rejected"],
        "vllm_args": vllm_args(inputs, chosen, dtype, inputs.compute_cap, serving) if chosen else [],
        "suggestions": [] if chosen else suggestions(entry, inputs, serving, result),
        "notes": notes,
    }


def _fallback_note(entry: dict, inputs: _Inputs, planned: _Inputs, chosen: int | None, serving: dict) -> str:
    parts = fallback_need(entry, inputs.model, serving)
    need = (
        f"warm fallback: Ollama's {entry['ollama']['tag']} stays loaded beside vLLM, {parts['total']} MiB "
        f"(weights {parts['weights']} + KV cache {parts['kv_cache']} for {serving['fallback_warm']['tokens']} "
        f"tokens + overhead {parts['overhead']})"
    )
    if not chosen:
        return f"{need}: no tensor-parallel size leaves it room (see rejected)"
    if planned.utilization < inputs.utilization:
        return f"{need}: gpu_memory_utilization lowered from {inputs.utilization} to {planned.utilization}"
    return f"{need}: it fits on the {inputs.gpus - chosen} GPU(s) vLLM leaves unused; utilization unchanged"


def plan_with_tensor_parallel(request: PlanRequest, entry: dict, serving: dict, tp: int) -> dict:
    """The plan with an operator's tensor-parallel size, when vLLM accepts it and it fits; PlanError otherwise."""
    chosen = plan(request, entry, serving)
    if tp == chosen["tensor_parallel_size"]:
        return chosen
    inputs = validate(request, entry, serving)
    result = _evaluate(entry, inputs, serving)
    where = f"tensor-parallel size {tp} for {inputs.model} ({inputs.fmt}) on {inputs.gpus} GPU(s)"
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise PlanError(f"tensor-parallel size {tp!r} is not a positive integer")
    reason = result["blocker"] or tp_invalid_reason(
        entry["architecture"], entry["formats"][inputs.fmt], inputs.fmt, tp, inputs.gpus
    )
    if reason:
        raise PlanError(f"{where} is not valid: {reason}; the planner's choice is {chosen['tensor_parallel_size']}")
    inputs, room = beside_fallback(inputs, tp)
    if room:
        raise PlanError(f"{where} does not fit: {room}")
    budget = memory_budget(entry, inputs, tp, result["dtype"], serving)
    if budget["headroom"] < 0:
        raise PlanError(f"{where} does not fit: {_no_fit_reason(budget, inputs)}")
    note = f"tensor-parallel size {tp} set by the operator (the planner would pick {chosen['tensor_parallel_size']})"
    return {
        **chosen,
        "fits": True,
        "tensor_parallel_size": tp,
        "gpu_memory_utilization": inputs.utilization,
        "per_gpu_mib": budget,
        "vllm_args": vllm_args(inputs, tp, result["dtype"], inputs.compute_cap, serving),
        "suggestions": [],
        "notes": [*chosen["notes"], note],
    }


def _fits_with(entry: dict, inputs: _Inputs, serving: dict, **changes) -> int | None:
    return _evaluate(entry, _replace(inputs, **changes), serving)["chosen"]


def _replace(inputs: _Inputs, **changes) -> _Inputs:
    return _Inputs(**{**inputs.__dict__, **changes})


def suggestions(entry: dict, inputs: _Inputs, serving: dict, result: dict) -> list[str]:
    """What would fit when nothing does: shorter context, a quantized format, more GPUs, more nodes."""
    if result["blocker"]:
        return [_unblock(entry, inputs, serving, result["blocker"])]
    found = _context_suggestions(entry, inputs, serving, result)
    if inputs.fmt == "fp16":
        found += _quantized_suggestion(entry, inputs, serving)
    if inputs.fallback_mib:
        tp = _fits_with(entry, inputs, serving, fallback_mib=0)
        if tp:
            found.append(f"without the warm fallback (llm_fallback_warm: false; it then loads cold) TP {tp} fits")
    return found + _scale_suggestions(entry, inputs, serving, result["dtype"])


def _unblock(entry: dict, inputs: _Inputs, serving: dict, blocker: str) -> str:
    if "fp8 KV cache" in blocker:
        return "--kv-cache-dtype auto runs on this GPU"
    for fmt in entry["formats"]:
        runs = compute_cap_reason(fmt, inputs.kv_cache_dtype, inputs.compute_cap, serving) is None
        if fmt != inputs.fmt and runs and choose_dtype(entry, fmt, inputs.compute_cap, serving)[0]:
            return f"--format {fmt} runs on this GPU"
    return f"a GPU of compute capability {serving['formats'][inputs.fmt]['min_compute_capability']} or newer"


def _context_suggestions(entry: dict, inputs: _Inputs, serving: dict, result: dict) -> list[str]:
    """The longest context that fits on the largest valid TP, and whether an fp8 KV cache fits."""
    tp = result["last_valid"]
    if not tp:
        return []
    found = []
    inputs, room = beside_fallback(inputs, tp)
    if room:
        return []
    budget = memory_budget(entry, inputs, tp, result["dtype"], serving)
    kv_bytes = _kv_bytes(inputs.kv_cache_dtype, result["dtype"])
    per_token = kv_bytes_per_token_per_gpu(entry["architecture"], tp, kv_bytes) * inputs.concurrency
    room = (budget["available"] - budget["weights"] - budget["overhead"]) * MIB
    longest = (room // per_token) // 256 * 256 if room > 0 else 0
    if longest >= MIN_USEFUL_MODEL_LEN:
        found.append(f"--max-model-len {longest} fits with TP {tp} (at --concurrency {inputs.concurrency})")
    if inputs.kv_cache_dtype != "fp8" and _fits_with(entry, inputs, serving, kv_cache_dtype="fp8"):
        found.append("--kv-cache-dtype fp8 halves the KV cache and fits")
    return found


def _quantized_suggestion(entry: dict, inputs: _Inputs, serving: dict) -> list[str]:
    for fmt in ("awq", "gptq"):
        tp = _fits_with(entry, inputs, serving, fmt=fmt) if fmt in entry["formats"] else None
        if tp:
            return [f"--format {fmt} (4-bit) fits with TP {tp} on these GPUs"]
    return []


def _scale_suggestions(entry: dict, inputs: _Inputs, serving: dict, dtype: str | None) -> list[str]:
    """More GPUs of the same kind in one host, or pipeline parallelism across hosts."""
    found = []
    for count in range(inputs.gpus + 1, MAX_SUGGESTED_GPUS + 1):
        tp = _fits_with(entry, inputs, serving, gpus=count)
        if tp:
            found.append(f"{count} GPUs of {inputs.gpu_mem_mib} MiB fit with TP {tp}")
            break
    kv_bytes = _kv_bytes(inputs.kv_cache_dtype, dtype)
    kv_total = (
        kv_bytes_per_token_per_gpu(entry["architecture"], 1, kv_bytes) * inputs.max_model_len * inputs.concurrency
    )
    usable_per_gpu = math.floor(inputs.gpu_mem_mib * inputs.utilization) - serving["runtime_overhead_mib"]["base"]
    if usable_per_gpu > 0:
        needed = _weights_total_mib(entry, inputs.fmt, dtype) + kv_total / MIB
        nodes = max(2, math.ceil(needed / (usable_per_gpu * inputs.gpus)))
        found.append(
            f"pipeline parallelism across about {nodes} hosts like this one (--pipeline-parallel-size {nodes})"
        )
    return found
