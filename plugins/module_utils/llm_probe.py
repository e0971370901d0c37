"""One readiness probe of a served model: does the API list it (or, with no model named, answer at all,
and with which version), and has systemd given up on the unit?

A service that keeps failing to start (a flag vLLM refuses, a model it cannot load) ends in
ActiveState=failed once it hits its start limit (StartLimitBurst=). A wait that asks only the API
would sit out its whole budget (vllm_ready_timeout, 15 minutes by default) for a service that will
never answer; the probe reports the unit's state so that the wait stops at once.

Pure Python, standard library only (shipped to hosts in the llm_service_probe module).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

UNIT_PROPERTIES = ("ActiveState", "SubState", "Result", "NRestarts")


def listed_models(url: str, api_key: str, timeout_s: float) -> dict:
    """GET url (an OpenAI-compatible /v1/models, or a version endpoint such as Ollama's /api/version): the
    HTTP status (0: no answer), the model ids, the version the body names ("" for none), the error."""
    if not url.startswith(("http://", "https://")):
        return {"status": 0, "models": [], "version": "", "error": f"{url!r} is not an http(s) URL"}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            body = json.loads(response.read() or b"{}")
            models = [entry.get("id") for entry in body.get("data", []) if isinstance(entry, dict)]
            version = body.get("version")
            version = version if isinstance(version, str) else ""
            return {"status": response.status, "models": models, "version": version, "error": ""}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "models": [], "version": "", "error": f"HTTP {error.code}"}
    except (OSError, ValueError, AttributeError) as error:  # refused while loading, reset, not JSON
        return {"status": 0, "models": [], "version": "", "error": str(error) or type(error).__name__}


def parse_unit_properties(text: str) -> dict:
    """`systemctl show -p ...` output as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def unit_state(unit: str, run=subprocess.run) -> dict:
    """ActiveState, SubState, Result and NRestarts of a systemd unit; {} where systemctl cannot tell."""
    command = ["systemctl", "show", *[f"--property={name}" for name in UNIT_PROPERTIES], unit]
    try:
        shown = run(command, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_unit_properties(shown.stdout) if shown.returncode == 0 else {}


def gave_up(state: dict) -> bool:
    """Whether systemd stopped (re)starting the unit: failed, not activating again (auto-restart)."""
    return state.get("ActiveState") == "failed"


def probe(url: str, api_key: str, model: str, unit: str, timeout_s: float, run=subprocess.run) -> dict:
    """One probe: the API's answer, whether it lists model (an empty model: whether it answered 200), and
    the unit's state."""
    answer = listed_models(url, api_key, timeout_s)
    state = unit_state(unit, run) if unit else {}
    return {
        **answer,
        "listed": answer["status"] == 200 and (not model or model in answer["models"]),
        "unit": state,
        "unit_gave_up": gave_up(state),
    }
