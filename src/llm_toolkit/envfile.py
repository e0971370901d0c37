"""Encode environment files for their declared consumers: python-dotenv for the app's .env, and
systemd's EnvironmentFile= parser for the services' files (vllm.env).

The app's .env (python-dotenv, dotenv_values / load_dotenv, defaults):

Every value is written single-quoted, with backslashes and single quotes escaped (the two escapes
python-dotenv decodes inside single quotes), so quotes, `$`, `#`, spaces and any unicode come back
unchanged. What python-dotenv cannot give back is refused, naming the key and never the value:
a newline, a carriage return or NUL, and `${` (python-dotenv expands ${NAME} even in quotes, and
has no escape for it).

systemd's EnvironmentFile= (systemd_line): a value of only safe characters is written bare (so the
file stays readable and grep-able); any other value is double-quoted, with backslash, double quote,
`$` and backtick escaped (the four characters systemd unescapes inside double quotes). `%` needs no
escape there: EnvironmentFile= is not subject to unit specifiers. systemd refuses, or would cut, a
newline, a carriage return, NUL and other control characters: refused here by key, never by value.
"""

from __future__ import annotations

import re

from llm_toolkit.host.llm_ollama import model_digests, normalize_name

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DotenvError(ValueError):
    """A key or value the consumer could not read back; the message never holds the value."""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode_value(key: str, value: object) -> str:
    if not isinstance(key, str) or not KEY.match(key):
        raise DotenvError(f".env key {key!r} is not a valid name; expected letters, digits and _, not first a digit")
    text = _text(value)
    for bad, what in (("\n", "a newline"), ("\r", "a carriage return"), ("\x00", "a NUL byte")):
        if bad in text:
            raise DotenvError(f".env value of {key} holds {what}, which python-dotenv cannot read back; fix: remove it")
    if "${" in text:
        raise DotenvError(
            f".env value of {key} holds '${{', which python-dotenv would expand as a variable; fix: remove it"
        )
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Bare in an EnvironmentFile=: nothing systemd's parser treats specially (quotes, backslash, spaces, '#').
SYSTEMD_BARE = re.compile(r"^[A-Za-z0-9_.,:/@+=%-]+$")
SYSTEMD_ESCAPED = {"\\": "\\\\", '"': '\\"', "$": "\\$", "`": "\\`"}


def encode_systemd_value(key: str, value: object) -> str:
    """One value for systemd's EnvironmentFile= parser, read back byte for byte; DotenvError names the key."""
    if not isinstance(key, str) or not KEY.match(key):
        raise DotenvError(f"environment key {key!r} is not a valid name; expected letters, digits and _")
    text = _text(value)
    for char in text:
        if char == "\t":
            continue
        if ord(char) < 0x20 or ord(char) == 0x7F:
            what = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte"}.get(char, "a control character")
            raise DotenvError(
                f"value of {key} holds {what}, which systemd's EnvironmentFile= cannot carry; fix: remove it"
            )
    if SYSTEMD_BARE.match(text):
        return text
    return '"' + "".join(SYSTEMD_ESCAPED.get(char, char) for char in text) + '"'


def systemd_line(key: str, value: object) -> str:
    return f"{key}={encode_systemd_value(key, value)}"


def systemd_errors(pairs: dict) -> list[str]:
    """Why each of these values cannot go into an EnvironmentFile= (messages name keys, never values)."""
    errors = []
    for key, value in pairs.items():
        try:
            encode_systemd_value(key, value)
        except DotenvError as error:
            errors.append(str(error))
    return errors


def decode_systemd_value(encoded: str) -> str:
    """The value systemd reads from what systemd_line wrote after KEY= (for readers of such files)."""
    if not encoded.startswith('"'):
        return encoded.strip()
    out, escaped = [], False
    for char in encoded[1:]:
        if escaped:
            out.append(char if char in SYSTEMD_ESCAPED else "\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            break
        else:
            out.append(char)
    return "".join(out)


def encode_line(key: str, value: object) -> str:
    return f"{key}={encode_value(key, value)}"


def render(pairs: dict, header: str = "") -> str:
    """The whole file: an optional comment header, then KEY='value' lines in the given order."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    lines += [encode_line(key, value) for key, value in pairs.items()]
    return "\n".join(lines) + "\n"


def listed_models(api: str, answer: object) -> list[str]:
    """Model names in a backend's model list: GET /v1/models (openai) or GET /api/tags (ollama, as full tags)."""
    if not isinstance(answer, dict):
        return []
    if api == "openai":
        return [entry.get("id") for entry in answer.get("data") or [] if isinstance(entry, dict)]
    return list(model_digests(answer))


def ready_backends(records: list[dict], answers: list[dict], preference: list[str]) -> list[dict]:
    """The records whose backend answered its model list (HTTP 200) with its model, in the preferred order.

    answers: one {status, json} per record, in the same order. Ollama lists a model asked for without
    a tag as <name>:latest.
    """
    ready = {}
    for record, answer in zip(records, answers, strict=True):
        names = listed_models(record["api"], answer.get("json"))
        wanted = record["model"] if record["api"] == "openai" else normalize_name(record["model"])
        if answer.get("status") == 200 and wanted in names:
            ready[record["backend"]] = record
    return [ready[name] for name in preference if name in ready]


def app_env_pairs(
    ready: list[dict], vllm_api_key: str, timeout_s: int, extra: dict, gateway: dict | None = None
) -> dict:
    """The app's settings: where to send its requests (LLM_BASE_URL, LLM_API_KEY, LLM_MODEL), the first
    ready backend and the next as its fallback, and where each backend is.

    With a gateway (its `url` and client `key`), LLM_BASE_URL is the gateway, which fails over by itself,
    and no backend's own key is written; without one, LLM_BASE_URL is the first ready backend's
    OpenAI-compatible API and vLLM's key is the app's."""
    if not ready:
        raise DotenvError("no backend is ready; expected at least one for the app")
    first = ready[0]
    pairs = {
        "LLM_BACKEND": first["backend"],
        "LLM_FALLBACK": ready[1]["backend"] if len(ready) > 1 else "",
        "LLM_BACKENDS": ",".join(record["backend"] for record in ready),
        "LLM_TIMEOUT_S": str(timeout_s),
        "LLM_MODEL": first["model"],
    }
    if gateway:
        pairs |= {"LLM_BASE_URL": gateway["url"].rstrip("/") + "/v1", "LLM_API_KEY": gateway["key"]}
    else:
        key = (vllm_api_key or "") if first["backend"] == "vllm" else ""
        pairs |= {"LLM_BASE_URL": first["openai_base_url"], "LLM_API_KEY": key}
    for record in ready:
        if record["backend"] == "vllm":
            pairs |= {"VLLM_BASE_URL": record["openai_base_url"], "VLLM_MODEL": record["model"]}
            if not gateway:
                pairs["VLLM_API_KEY"] = vllm_api_key or ""
        else:
            pairs |= {
                "OLLAMA_BASE_URL": record["base_url"],
                "OLLAMA_OPENAI_BASE_URL": record["openai_base_url"],
                "OLLAMA_MODEL": record["model"],
            }
    return pairs | dict(extra or {})


def fleet_app_env_pairs(gateway: dict, model: str, timeout_s: int, extra: dict) -> dict:
    """The settings of an app on an llm_apps host: the fleet gateway (its `url`, client `key` and, when a
    private CA signed its certificate, the CA's file on the app's host, `ca_file`), which picks a host
    and fails over by itself; no backend of any host is named."""
    pairs = {
        "LLM_BASE_URL": gateway["url"].rstrip("/") + "/v1",
        "LLM_API_KEY": gateway["key"],
        "LLM_MODEL": model,
        "LLM_TIMEOUT_S": str(timeout_s),
    }
    if gateway.get("ca_file"):
        pairs["LLM_CA_FILE"] = gateway["ca_file"]
    return pairs | dict(extra or {})
