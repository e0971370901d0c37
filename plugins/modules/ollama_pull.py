#!/usr/bin/python
"""Ansible module: pull one model through Ollama's API (thin adapter over module_utils/llm_ollama.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ollama_pull
short_description: Pull a model into a running Ollama server, with progress, retries and cleanup
description:
  - Streams C(POST /api/pull) and writes the progress (percent and bytes) to O(progress_file) as it goes,
    so that a playbook running this module asynchronously can show it.
  - Skips the pull when the model is already present, unless O(force) is set.
  - Retries network errors, HTTP 429 and 5xx answers with exponential backoff; a tag the registry does not
    have fails at once with Ollama's own error.
  - After a failed pull, removes the partial downloads (C(blobs/sha256-*-partial*)) under O(models_dir).
options:
  name:
    description: Model tag, e.g. C(mixtral:8x7b-instruct-v0.1-q4_K_M).
    type: str
    required: true
  url:
    description: Base URL of the Ollama API.
    type: str
    default: http://127.0.0.1:11434
  models_dir:
    description: OLLAMA_MODELS of the server, where partial downloads are cleaned after a failure.
    type: path
    required: true
  progress_file:
    description: JSON file the progress is written to (atomically, about once a second).
    type: path
  retries:
    description: Further attempts after a transient failure.
    type: int
    default: 4
  backoff:
    description: Seconds before the first retry; doubled for each further one (capped at 120).
    type: float
    default: 5
  timeout:
    description: Seconds without any answer from the server before an attempt is given up.
    type: int
    default: 600
  force:
    description: Pull even when the model is present (Ollama fetches only changed layers).
    type: bool
    default: false
author: LLM toolkit team
"""

EXAMPLES = r"""
- name: Pull Mixtral
  ollama_pull:
    name: mixtral:8x7b-instruct-v0.1-q4_K_M
    models_dir: /var/lib/ollama/models
"""

RETURN = r"""
digest:
  description: The model's digest as C(/api/tags) lists it after the pull.
  returned: success
  type: str
attempts:
  description: Attempts made.
  returned: always
  type: int
progress:
  description: Final progress (status, completed, total, percent, layers, error, success).
  returned: always
  type: dict
removed_partials:
  description: Partial downloads removed after a failure.
  returned: always
  type: list
advice:
  description: What to do about a failure that is not the tag's (a full disk), with the fix.
  returned: when the disk filled up during the pull
  type: str
"""

import contextlib
import json
import os
import time
from urllib.error import HTTPError, URLError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_ollama import (
    PullProgress,
    backoff_delays,
    is_transient,
    is_unknown_tag,
    model_digests,
    no_space_advice,
    normalize_name,
    partial_files,
)
from ansible.module_utils.urls import open_url


def _write_progress(path, progress):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(progress.as_dict(), handle)
    os.replace(tmp, path)


def _present(url, timeout):
    with open_url(url.rstrip("/") + "/api/tags", timeout=timeout) as response:
        return model_digests(json.loads(response.read()))


def _attempt(module, progress):
    """One streamed pull; returns (error text or None, HTTP status or None)."""
    params = module.params
    body = json.dumps({"model": params["name"], "stream": True})
    last_write = 0.0
    try:
        response = open_url(
            params["url"].rstrip("/") + "/api/pull",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
            timeout=params["timeout"],
        )
    except HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace") if hasattr(exc, "read") else ""
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        return detail or f"HTTP {exc.code}", exc.code
    except (URLError, OSError) as exc:
        return f"cannot reach Ollama at {params['url']}: {exc}", None
    with response:
        try:
            for line in response:
                progress.feed(line)
                if progress.error:
                    break
                if time.monotonic() - last_write > 1:
                    _write_progress(params["progress_file"], progress)
                    last_write = time.monotonic()
        except (URLError, OSError) as exc:
            progress.error = f"connection to Ollama lost during the pull: {exc}"
    _write_progress(params["progress_file"], progress)
    if progress.error:
        return progress.error, None
    if not progress.success:
        return "Ollama ended the pull without reporting success", None
    return None, None


def _remove_partials(models_dir):
    blobs = os.path.join(models_dir, "blobs")
    if not os.path.isdir(blobs):
        return []
    removed = partial_files(os.listdir(blobs))
    for name in removed:
        os.unlink(os.path.join(blobs, name))
    return removed


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "url": {"type": "str", "default": "http://127.0.0.1:11434"},
            "models_dir": {"type": "path", "required": True},
            "progress_file": {"type": "path"},
            "retries": {"type": "int", "default": 4},
            "backoff": {"type": "float", "default": 5},
            "timeout": {"type": "int", "default": 600},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    name = normalize_name(params["name"])
    result = {"changed": False, "attempts": 0, "progress": PullProgress().as_dict(), "removed_partials": []}
    try:
        present = _present(params["url"], 30)
    except (HTTPError, URLError, OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot list the models of Ollama at {params['url']}: {exc}", **result)
    if name in present and not params["force"]:
        _write_progress(params["progress_file"], _done(PullProgress()))
        module.exit_json(digest=present[name], **result)
    result["changed"] = True
    if module.check_mode:
        module.exit_json(**result)
    delays = backoff_delays(params["retries"], params["backoff"])
    error = None
    for attempt in range(params["retries"] + 1):
        progress = PullProgress()
        result["attempts"] = attempt + 1
        error, status = _attempt(module, progress)
        result["progress"] = progress.as_dict()
        if error is None:
            break
        if is_unknown_tag(error) or not is_transient(error, status) or attempt == params["retries"]:
            break
        time.sleep(delays[attempt])
    if error is not None:
        result["removed_partials"] = _remove_partials(params["models_dir"])
        kind = "unknown tag" if is_unknown_tag(error) else "pull failed"
        advice = no_space_advice(error, params["models_dir"])
        if advice:
            result["advice"] = advice
        message = f"{kind}: {error}" + (f"; {advice}" if advice else "")
        module.fail_json(msg=message, error=error, unknown_tag=is_unknown_tag(error), **result)
    present = _present(params["url"], 30)
    module.exit_json(digest=present.get(name, ""), **result)


def _done(progress):
    progress.success = True
    progress.status = "already present"
    return progress


if __name__ == "__main__":
    main()
