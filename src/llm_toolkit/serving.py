"""What `vllm serve` is started with on a host: its arguments and, on the CPU build, its core binding.

The serving planner (llm_toolkit.planner) decides the tensor-parallel size and the GPU arguments;
this turns the role's settings and that plan into the argument list of vllm.service's ExecStart
(the API key is never among them: it comes from the root-only environment file). Used by the vllm
role through the llm_vllm_serve filter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def cpu_threads_bind(ranks: int, cores: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `ranks` CPU workers on `cores` cores: "0|1" on 2, "0-7|8-15" on 16."""
    if ranks < 1 or cores < ranks:
        raise ValueError(f"{ranks} tensor-parallel rank(s) on {cores} core(s); expected a core per rank at least")
    per = cores // ranks
    spans = [(rank * per, rank * per + per - 1) for rank in range(ranks)]
    return "|".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)


# The `vllm serve` flags the role sets (or must never be set around it), each with the variable that
# sets it instead. vllm_extra_args may not hold them: a second `--host 0.0.0.0` after the role's checked
# one would win (argparse keeps the last), and a config file (--config) could set any of them.
OWNED_VLLM_FLAGS = {
    "--host": "vllm_host",
    "--port": "vllm_port",
    "--api-key": "vllm_api_key (it reaches vLLM through its root-only environment file)",
    "--model": "vllm_model_dir / vllm_hf_repo",
    "--served-model-name": "vllm_served_model_name",
    "--max-model-len": "vllm_max_model_len",
    "--max-num-seqs": "vllm_max_num_seqs",
    "--shutdown-timeout": "vllm_shutdown_timeout",
    "--tensor-parallel-size": "vllm_tensor_parallel_size",
    "-tp": "vllm_tensor_parallel_size",
    "--gpu-memory-utilization": "vllm_gpu_memory_utilization",
    "--dtype": "vllm_dtype",
    "--quantization": "llm_vllm_format (the planner names the kernel)",
    "-q": "llm_vllm_format (the planner names the kernel)",
    "--kv-cache-dtype": "vllm_concurrency / vllm_max_model_len (the planner chooses it)",
    "--kv-cache-memory-bytes": "vllm_cpu_kv_cache_bytes",
    "--enforce-eager": "vllm_enforce_eager",
    "--enable-prefix-caching": "nothing (the role always enables it)",
    "--config": "the role's variables (a config file could set any flag the role owns)",
}


def owned_flag_refusals(extra_args: object, variable: str = "vllm_extra_args") -> list[str]:
    """One line per flag in extra_args that the role owns: the flag and the variable to set instead.

    Catches `--flag value`, `--flag=value`, underscores for dashes (vLLM accepts both) and prefixes
    of an owned flag (argparse accepts unambiguous abbreviations such as `--ho`).
    """
    if extra_args is None:
        return []
    if isinstance(extra_args, (str, bytes)) or not isinstance(extra_args, (list, tuple)):
        return [f"{variable} is {type(extra_args).__name__}; expected a list of strings such as ['--seed', '7']"]
    refusals = []
    for arg in extra_args:
        text = str(arg).strip()
        if not text.startswith("-") or text == "-" or text.lstrip("-").replace(".", "", 1).isdigit():
            continue
        name = text.split("=", 1)[0]
        dashes = len(name) - len(name.lstrip("-"))
        name = "-" * dashes + name[dashes:].replace("_", "-").lower()
        owned = [
            flag
            for flag in OWNED_VLLM_FLAGS
            if flag == name or (dashes == 2 and len(name) > 3 and flag.startswith(name))
        ]
        for flag in owned:
            refusals.append(
                f"{variable} has {name} ({'a prefix of ' + flag if flag != name else 'set by the role'}); "
                f"expected only flags the role does not own; fix: set {OWNED_VLLM_FLAGS[flag]} instead"
            )
    return refusals


def serve(settings: dict, plan: dict) -> dict:
    """{args, tensor_parallel_size, cpu_tp, cpu_threads_bind} for vllm.service.

    settings: model_path, host, port, served_model_name, max_model_len, max_num_seqs, accelerator
    (gpu or cpu), dtype, cpu_kv_cache_bytes, enforce_eager, shutdown_timeout (seconds vLLM lets requests
    in flight finish when stopped; 0 aborts them), extra_args and cores (the host's CPUs).
    plan: what the planner returned (tensor_parallel_size, vllm_args); on CPU hosts that do not
    simulate GPUs, {"tensor_parallel_size": 1, "vllm_args": []}.
    """
    cpu = settings["accelerator"] == "cpu"
    tensor_parallel = int(plan.get("tensor_parallel_size") or 1)
    args = [str(settings["model_path"]), "--host", str(settings["host"]), "--port", str(settings["port"])]
    args += ["--served-model-name", str(settings["served_model_name"])]
    args += ["--max-model-len", str(settings["max_model_len"]), "--max-num-seqs", str(settings["max_num_seqs"])]
    args.append("--enable-prefix-caching")
    if cpu:
        args += ["--dtype", str(settings["dtype"]), "--kv-cache-memory-bytes", str(settings["cpu_kv_cache_bytes"])]
    if settings["enforce_eager"]:
        args.append("--enforce-eager")
    if int(settings.get("shutdown_timeout") or 0) > 0:
        args += ["--shutdown-timeout", str(int(settings["shutdown_timeout"]))]
    cpu_tp = cpu and tensor_parallel > 1
    cores = int(settings["cores"])
    if cpu_tp:
        args += ["--tensor-parallel-size", str(tensor_parallel)]
    if not cpu:
        args += [str(arg) for arg in plan.get("vllm_args") or []]
    refused = owned_flag_refusals(settings.get("extra_args"))
    if refused:
        raise ValueError("; ".join(refused))
    args += [str(arg) for arg in settings.get("extra_args") or []]
    return {
        "args": args,
        "tensor_parallel_size": tensor_parallel,
        "cpu_tp": cpu_tp,
        # Fewer cores than ranks leaves it empty: the role's input check stops before that is used.
        "cpu_threads_bind": cpu_threads_bind(tensor_parallel, cores) if cpu_tp and cores >= tensor_parallel else "",
    }


# Words systemd takes as they are in a command line: anything else is double-quoted and escaped.
_SYSTEMD_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:=,+-@")


def systemd_command(argv: list) -> str:
    """argv as a systemd ExecStart= line that hands the program exactly these words.

    systemd expands `%` specifiers and `$` variables in command lines and unescapes backslashes and
    quotes inside double quotes (systemd.service(5), "Command lines"): `%` becomes `%%`, `$` becomes
    `$$`, and a word with anything but plain characters is double-quoted with `\\` and `\"` escaped.
    A newline cannot be passed on a command line and is refused.
    """
    words = []
    for arg in argv:
        word = str(arg)
        if "\n" in word or "\r" in word:
            raise ValueError(f"a command-line word holds a line break: {word[:40]!r}; expected one line")
        escaped = word.replace("%", "%%").replace("$", "$$")
        if word and set(word) <= _SYSTEMD_PLAIN:
            words.append(escaped)
        else:
            words.append('"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(words)


def plan_refusal(plan: dict, operator_tensor_parallel: object) -> str:
    """Why the planner refused to plan ("" when it gave a plan), with what to do about it, in one line."""
    if "error" not in plan and plan.get("tensor_parallel_size") is not None:
        return ""
    if "error" in plan:
        reason = plan["error"]
    else:
        reasons = [entry.get("reason", "") for entry in plan.get("rejected") or []]
        reason = f"no tensor-parallel size fits: {reasons[-1] if reasons else 'no GPU to plan for'}"
    fix = (
        "unset vllm_tensor_parallel_size or pick one the planner accepts"
        if operator_tensor_parallel not in (None, "")
        else "run scripts/plan.py for the options"
    )
    return f"{reason}; expected a plan vLLM accepts; fix: {fix}"


def context_refusal(config_text: str, max_model_len: int, where: str) -> str:
    """Why max_model_len cannot be served from this model directory ("" when it can), in one line.

    config_text: the model's config.json ("" when it could not be read); where: the directory, for the message.
    """
    if not config_text:
        return (
            f"no readable config.json in {where}; expected a Hugging Face model directory; "
            "fix: set vllm_model_dir to the directory that holds config.json"
        )
    try:
        context = int(json.loads(config_text).get("max_position_embeddings") or 0)
    except (ValueError, AttributeError, TypeError):
        return f"{where}/config.json is not a JSON object; expected a model's config.json; fix: check the model files"
    if context and int(max_model_len) > context:
        return (
            f"vllm_max_model_len={max_model_len}; expected at most {context}, the context of the model in {where} "
            "(max_position_embeddings in its config.json); fix: lower vllm_max_model_len"
        )
    return ""


def api_base(host: str, port: int) -> str:
    """Where the host itself reaches an API bound to host:port: a wildcard bind on loopback, IPv6 in brackets."""
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - matching the wildcard
    return f"http://{f'[{address}]' if ':' in address else address}:{int(port)}"


def tree_fingerprint(path: str) -> str:
    """A fingerprint of a directory on the controller: every file's relative path, size and mtime.

    The vllm role copies a controller's model directory only when this changed since the last copy,
    instead of checksumming tens of GB on every run. "" when the directory does not exist.
    """
    root = Path(path)
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    for file in sorted(item for item in root.rglob("*") if item.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
