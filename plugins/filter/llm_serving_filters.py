"""Filters over the model catalog and the serving planner (llm_toolkit.planner).

{{ gpus | llm_serving_plan('mixtral-8x7b-instruct', 'awq') }}
    gpus: a list with one dict per GPU holding memory_total_mib and compute_cap, as the
    GPU facts give them; the plan is the dict scripts/plan.py --json prints.
{{ 'mixtral-8x7b-instruct' | llm_catalog_model }}      the catalog entry
{{ 'models' | llm_catalog }}                           a whole catalog file: models, serving or gates
{{ 'mixtral:8x7b-instruct-q4_K_M' | llm_ollama_tag }}  the real tag (warns when it maps)
{{ '/models/tiny' | llm_tree_fingerprint }}             paths, sizes and times of a controller directory, hashed
{{ host | llm_api_base(port) }}                        where the host reaches an API it binds (wildcard: loopback)
{{ plan | llm_vllm_serve(settings) }}                 vllm.service's arguments and CPU core binding
{{ [program, arg, ...] | llm_systemd_command }}        a unit's command line that passes exactly these words
{{ plan | llm_plan_refusal(vllm_tensor_parallel_size) }}   why the planner refused, and the fix ("" when it planned)
{{ config_text | llm_context_refusal(max_model_len, dir) }} why max_model_len does not fit the model ("" when it does)
{{ vllm_extra_args | llm_vllm_owned_flags }}             one line per flag the role owns (--host, --port, ...): []
{{ unit_text | llm_vllm_unit_paths }}                    the venv and model directory a vllm.service runs
{{ found | llm_removable_paths(keep, kept) }}            releases or revisions no longer kept (llm_toolkit.releases)
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.utils.display import Display

from llm_toolkit.catalog import (
    check_checkpoint,
    get_model,
    load_gates,
    load_models,
    load_serving,
    resolve_ollama_tag,
)
from llm_toolkit.planner import PlanError, plan, plan_with_tensor_parallel, request_for_gpus
from llm_toolkit.releases import removable, unit_paths
from llm_toolkit.serving import (
    api_base,
    context_refusal,
    owned_flag_refusals,
    plan_refusal,
    serve,
    systemd_command,
    tree_fingerprint,
)

DOCUMENTATION = """
name: llm_serving_filters
short_description: Model catalog lookups and the vLLM serving planner
"""


def serving_plan(
    gpus,
    model,
    fmt="fp16",
    max_model_len=None,
    gpu_memory_utilization=None,
    concurrency=None,
    kv_cache_dtype=None,
    repo=None,
    tensor_parallel_size=None,
    errors="strict",
    fallback_warm=False,
):
    """Plan for the host's GPUs; a mixed set is planned on its smallest and oldest GPU.

    tensor_parallel_size: an operator's choice, accepted only when vLLM would accept it and it fits.
    errors: "strict" raises on a request the planner refuses; "return" gives {"error": message} instead,
    for a role's input check to report in its own words.
    fallback_warm: leave room on the GPUs for Ollama's copy of the model (llm_fallback_warm).
    """
    if not isinstance(gpus, list) or not gpus:
        raise AnsibleFilterError(f"llm_serving_plan: expected a non-empty list of GPUs, got {gpus!r}")
    try:
        models = load_models()
        entry = get_model(models, model)
        if repo:
            check_checkpoint(models, model, fmt, repo)
        request = request_for_gpus(
            model,
            fmt,
            gpus,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            concurrency=concurrency,
            kv_cache_dtype=kv_cache_dtype,
            fallback_warm=fallback_warm,
        )
        if tensor_parallel_size not in (None, ""):
            return plan_with_tensor_parallel(request, entry, load_serving(), int(tensor_parallel_size))
        return plan(request, entry, load_serving())
    except (PlanError, KeyError, ValueError) as error:
        if errors == "return":
            return {"error": str(error)}
        raise AnsibleFilterError(f"llm_serving_plan: {error}") from None


def catalog_model(key):
    try:
        return get_model(load_models(), key)
    except PlanError as error:
        raise AnsibleFilterError(f"llm_catalog_model: {error}") from None


CATALOG_FILES = {"models": load_models, "serving": load_serving, "gates": load_gates}


def catalog(name):
    if name not in CATALOG_FILES:
        raise AnsibleFilterError(f"llm_catalog: {name!r}; expected one of {', '.join(CATALOG_FILES)}")
    return CATALOG_FILES[name]()


def ollama_tag(tag):
    real, warning = resolve_ollama_tag(load_models(), tag)
    if warning:
        Display().warning(warning)
    return real


def vllm_serve(serving_plan, settings):
    try:
        return serve(dict(settings), dict(serving_plan))
    except (KeyError, TypeError, ValueError) as error:
        raise AnsibleFilterError(f"llm_vllm_serve: {error}") from None


def command_line(argv):
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)):
        raise AnsibleFilterError(f"llm_systemd_command: {argv!r:.60}; expected a list of words")
    try:
        return systemd_command(list(argv))
    except ValueError as error:
        raise AnsibleFilterError(f"llm_systemd_command: {error}") from None


def refusal(serving_plan, tensor_parallel=None):
    return plan_refusal(dict(serving_plan), tensor_parallel)


def context(config_text, max_model_len, where):
    return context_refusal(str(config_text or ""), max_model_len, str(where))


class FilterModule:
    def filters(self):
        return {
            "llm_serving_plan": serving_plan,
            "llm_catalog_model": catalog_model,
            "llm_catalog": catalog,
            "llm_ollama_tag": ollama_tag,
            "llm_vllm_serve": vllm_serve,
            "llm_systemd_command": command_line,
            "llm_api_base": api_base,
            "llm_tree_fingerprint": tree_fingerprint,
            "llm_vllm_owned_flags": owned_flag_refusals,
            "llm_vllm_unit_paths": lambda text: unit_paths(str(text or "")),
            "llm_removable_paths": lambda found, keep, kept: removable(list(found or []), list(keep or []), kept),
            "llm_plan_refusal": lambda serving_plan, tensor_parallel=None: plan_refusal(
                dict(serving_plan), tensor_parallel
            ),
            "llm_context_refusal": lambda text, max_model_len, where: context_refusal(
                str(text or ""), max_model_len, where
            ),
        }
