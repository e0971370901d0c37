"""Plan a vLLM deployment: the smallest valid tensor-parallel size that fits, and why.

    scripts/plan.py --model KEY --format fp16|awq|gptq --gpus N --gpu-mem-mib M
                    [--compute-cap X.Y] [--max-model-len L] [--gpu-memory-utilization F]
                    [--concurrency S] [--kv-cache-dtype auto|fp8] [--repo REPO] [--fallback-warm] [--json]
    scripts/plan.py --config-json PATH/config.json --gpus N --gpu-mem-mib M [...]

Exit codes: 0 a plan exists; 1 nothing fits (the output says what would); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_toolkit.catalog import (
    check_checkpoint,
    entry_from_config_json,
    get_model,
    load_models,
    load_serving,
)
from llm_toolkit.cli import OneLineParser
from llm_toolkit.planner import FORMATS, KV_CACHE_DTYPES, PlanError, PlanRequest, plan


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(
        prog="scripts/plan.py",
        name="plan",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 a plan exists; 1 nothing fits; 2 bad input.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="catalog key (src/llm_toolkit/catalog/models.yml), e.g. mixtral-8x7b-instruct")
    source.add_argument("--config-json", type=Path, help="plan for a local checkpoint from its config.json")
    parser.add_argument("--format", choices=FORMATS, help="weights format (default: fp16, or the checkpoint's)")
    parser.add_argument("--gpus", required=True, help="GPUs on the host")
    parser.add_argument("--gpu-mem-mib", required=True, help="memory of one GPU in MiB (nvidia-smi memory.total)")
    parser.add_argument("--compute-cap", help="compute capability X.Y (nvidia-smi compute_cap); gates kernels")
    parser.add_argument("--max-model-len", help="tokens per request, prompt plus answer (default 8192)")
    parser.add_argument("--gpu-memory-utilization", help="fraction of each GPU vLLM may use, in (0, 1] (default 0.9)")
    parser.add_argument("--concurrency", help="full-length sequences the KV cache must hold at once (default 4)")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, help="KV cache precision (default auto)")
    parser.add_argument("--repo", help="the checkpoint to serve; refused when it cannot serve the format")
    parser.add_argument(
        "--fallback-warm",
        action="store_true",
        help="leave GPU memory for Ollama's copy of the model to stay loaded beside vLLM (lowers the utilization)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser.parse_args(argv)


def render_table(result: dict) -> str:
    tp = result["tensor_parallel_size"]
    budget = result["per_gpu_mib"]
    lines = [
        f"model    {result['model']} ({result['format']}{', ' + result['repo'] if result['repo'] else ''})",
        f"GPUs     {result['gpus']} x {result['gpu_mem_mib']} MiB"
        + (f", compute capability {result['compute_cap']}" if result["compute_cap"] else ""),
        f"plan     {'tensor-parallel size ' + str(tp) if tp else 'NOTHING FITS'}"
        f"  (max_model_len {result['max_model_len']}, concurrency {result['concurrency']},"
        f" utilization {result['gpu_memory_utilization']})",
        f"per GPU  weights {budget['weights']} + KV cache {budget['kv_cache']} + overhead {budget['overhead']}"
        f" = {budget['needed']} of {budget['available']} MiB available",
    ]
    lines += [f"rejected TP {row['tp']}: {row['reason']}" for row in result["rejected"]]
    lines += [f"note     {note}" for note in result["notes"]]
    if result["vllm_args"]:
        lines.append("vllm     " + " ".join(result["vllm_args"]))
    lines += [f"instead  {suggestion}" for suggestion in result["suggestions"]]
    return "\n".join(lines) + "\n"


def build(args: argparse.Namespace) -> dict:
    serving = load_serving()
    notes = []
    if args.config_json:
        key, entry, detected = entry_from_config_json(args.config_json, serving["float16_unsupported_model_types"])
        if args.format and args.format != detected:
            raise PlanError(
                f"--format {args.format}: {args.config_json} describes a {detected} checkpoint; "
                f"fix: --format {detected}"
            )
        fmt = detected
    else:
        key, fmt = args.model, args.format or "fp16"
        models = load_models()
        entry = get_model(models, key)
        if args.repo:
            note = check_checkpoint(models, key, fmt, args.repo)
            notes += [note] if note else []
            entry = {
                **entry,
                "formats": {**entry["formats"], fmt: {**entry["formats"].get(fmt, {}), "repo": args.repo}},
            }
    request = PlanRequest(
        model=key,
        fmt=fmt,
        gpus=args.gpus,
        gpu_mem_mib=args.gpu_mem_mib,
        compute_cap=args.compute_cap,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        concurrency=args.concurrency,
        kv_cache_dtype=args.kv_cache_dtype,
        fallback_warm=args.fallback_warm,
    )
    result = plan(request, entry, serving)
    result["notes"] = notes + result["notes"]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = build(args)
    except PlanError as error:
        print(f"plan: error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else render_table(result))
    return 0 if result["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
