"""The gateway's settings, checked before anything changes: one refusal per bad value.

settings_errors(settings, host) takes the llm_gateway_* settings of one host (the keys of
SETTING_NAMES, with vllm_port, ollama_port, vllm_enabled and ollama_enabled) and returns one line
per refusal: the host, the variable and its value, what was expected and the fix. A secret
(the client key, the TLS private key) is named, never shown. Used by preflight through the
llm_gateway_settings_errors filter; runs on the controller (it needs the cryptography package,
which ansible-core itself depends on).

Decisions (docs/security.md, section 7):
- The gateway never runs without authentication: an empty llm_gateway_api_key means "generate one
  on the host", so the only way to have no key is to empty llm_gateway_api_key_file as well, and
  that is refused. A key the inventory gives is a Bearer token (RFC 6750 b64token characters) of at
  least MIN_KEY_LENGTH characters, so it can be compared in the gateway's configuration as it is.
- A bind address other than loopback needs TLS (certificate and key, both) and a key.
- Every value is rendered into haproxy.cfg, so each is held to a character set that HAProxy's
  configuration parser takes literally (no spaces, quotes, '#', '\\', '$' or control characters).
"""

from __future__ import annotations

import datetime
import ipaddress
import re

BACKENDS = ("vllm", "ollama")
LOOPBACK_NAMES = ("localhost",)
MIN_PORT, MAX_PORT = 1024, 65535
MIN_KEY_LENGTH = 16
# RFC 6750, section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# An exact URL path: '/' then unreserved characters and '/' (RFC 3986 section 2.3), nothing HAProxy's
# configuration parser reads as a separator, comment, quote, escape or variable.
URL_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
FILE_PATH = re.compile(r"/[A-Za-z0-9._+@%:/-]*")

# The settings' keys and the inventory variables they come from (messages name the variable).
SETTING_NAMES = {
    "host": "llm_gateway_host",
    "port": "llm_gateway_port",
    "api_key": "llm_gateway_api_key",
    "api_key_file": "llm_gateway_api_key_file",
    "backends": "llm_gateway_backends",
    "allowed_paths": "llm_gateway_allowed_paths",
    "metrics_host": "llm_gateway_metrics_host",
    "metrics_port": "llm_gateway_metrics_port",
    "tls_certificate": "llm_gateway_tls_certificate",
    "tls_private_key": "llm_gateway_tls_private_key",
    "tls_ca": "llm_gateway_tls_ca",
}


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; a wildcard (0.0.0.0, ::) is not loopback."""
    if str(address).lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return False


def _address_problem(address) -> str | None:
    text = str(address) if isinstance(address, str) else ""
    if not text:
        return "is empty" if isinstance(address, str) else f"is a {type(address).__name__}"
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    return None if HOSTNAME.fullmatch(text) else "is neither an IP address nor a host name"


def _port(value) -> int | None:
    """The port as a number, or None when it is not a whole number (a bool is not one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class _Errors(list):
    def __init__(self, host: str):
        super().__init__()
        self.host = host

    def add(self, what: str, expected: str, fix: str) -> None:
        self.append(f"{self.host}: {what}; expected {expected}; fix: {fix}")


def settings_errors(settings: dict, host: str) -> list[str]:
    """Every refusal of the gateway's settings on this host ([] when they are good)."""
    errors = _Errors(str(host))
    _check_addresses(errors, settings)
    _check_ports(errors, settings)
    _check_key(errors, settings)
    _check_backends(errors, settings)
    _check_paths(errors, settings)
    _check_tls(errors, settings)
    return list(errors)


def _check_addresses(errors: _Errors, settings: dict) -> None:
    for key in ("host", "metrics_host"):
        value = settings.get(key)
        problem = _address_problem(value)
        if problem:
            errors.add(
                f"{SETTING_NAMES[key]}={value!r} {problem}",
                "an IP address or a host name to bind (127.0.0.1 keeps it on this host)",
                f"set {SETTING_NAMES[key]} to an address of this host",
            )


def _check_ports(errors: _Errors, settings: dict) -> None:
    taken = {"vllm_port": _port(settings.get("vllm_port")), "ollama_port": _port(settings.get("ollama_port"))}
    for key, other in (("port", "metrics_port"), ("metrics_port", None)):
        name, value = SETTING_NAMES[key], settings.get(key)
        number = _port(value)
        if number is None or not MIN_PORT <= number <= MAX_PORT:
            errors.add(
                f"{name}={value!r}",
                f"a port from {MIN_PORT} to {MAX_PORT} (the gateway runs unprivileged)",
                f"choose a port in that range (default {8080 if key == 'port' else 8081})",
            )
            continue
        clashes = [backend for backend, port in taken.items() if port == number]
        if other and _port(settings.get(other)) == number:
            clashes.append(SETTING_NAMES[other])
        for clash in clashes:
            errors.add(
                f"{name}={number} is also {clash}",
                "a port of its own (the backends keep theirs: vllm_port, ollama_port; the metrics listener its own)",
                f"choose another port for {name}",
            )


def _check_key(errors: _Errors, settings: dict) -> None:
    key, key_file = settings.get("api_key"), settings.get("api_key_file")
    if key in (None, ""):
        if not isinstance(key_file, str) or not key_file:
            errors.add(
                "llm_gateway_api_key and llm_gateway_api_key_file are both empty (no client key at all)",
                "a key: the gateway never runs without authentication",
                "set llm_gateway_api_key (in a vault), or leave llm_gateway_api_key_file at its default so "
                "that a key is generated on the host",
            )
        elif not FILE_PATH.fullmatch(key_file) or "/../" in f"{key_file}/":
            errors.add(
                f"llm_gateway_api_key_file={key_file!r}",
                "an absolute path of plain characters",
                "keep the default ({{ llm_secrets_dir }}/gateway_api_key) or choose such a path",
            )
        return
    if not isinstance(key, str) or not BEARER_TOKEN.fullmatch(key) or len(key) < MIN_KEY_LENGTH:
        # The key itself is never shown: its length and kind only.
        shown = f"a {type(key).__name__}" if not isinstance(key, str) else f"{len(key)} characters, not shown"
        errors.add(
            f"llm_gateway_api_key ({shown}) is not a Bearer token of at least {MIN_KEY_LENGTH} characters",
            "letters, digits and - . _ ~ + / (then '=' padding), as RFC 6750 allows in a Bearer token",
            "use a random key, e.g. `openssl rand -hex 32`, or leave it empty so that one is generated",
        )


def is_enabled(value) -> bool:
    """An Ansible boolean as a host's variables give it (true, yes, True, 1, ...)."""
    return value is True or str(value).strip().lower() in ("true", "yes", "on", "1")


def _describe_pem(text: str) -> str:
    """What a PEM value looks like, without any of its secret or encoded content."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "PRIVATE KEY" in text:
        return "holds a PRIVATE KEY block, not shown"
    if first.startswith("-----BEGIN ") or (first.startswith("/") and "\n" not in text.strip() and len(first) < 200):
        return repr(first)
    return f"{len(text)} characters"


# The list settings: what each holds, and an example.
LISTS = {
    "backends": ("a list of backends in order, primary first, from vllm and ollama", "[vllm, ollama]"),
    "allowed_paths": ("a list of exact URL paths", "[/v1/chat/completions, /v1/completions, /v1/models]"),
}


def _list_setting(errors: _Errors, settings: dict, key: str) -> list | None:
    """The setting's list, or None after refusing it (not a list, or empty)."""
    name, value = SETTING_NAMES[key], settings.get(key)
    expected, example = LISTS[key]
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        problem = f"is a {type(value).__name__}, not a list"
    elif not value:
        problem = "is empty"
    else:
        return list(value)
    errors.add(f"{name}={value!r} {problem}", expected, f"e.g. {name}: {example}")
    return None


def _refuse_repeats(errors: _Errors, key: str, value: list, expected: str) -> None:
    repeated = sorted({str(item) for item in value if value.count(item) > 1})
    if repeated:
        errors.add(
            f"{SETTING_NAMES[key]} lists {', '.join(repeated)} more than once", expected, "remove the repeated entries"
        )


def _check_backends(errors: _Errors, settings: dict) -> None:
    value = _list_setting(errors, settings, "backends")
    if value is None:
        return
    for name in value:
        if name not in BACKENDS:
            errors.add(
                f"llm_gateway_backends has {name!r}, an unknown backend",
                f"one of {', '.join(BACKENDS)}",
                "remove it or correct its spelling",
            )
    _refuse_repeats(errors, "backends", value, "each backend once, in the order they are tried")
    known = [name for name in value if name in BACKENDS]
    if known and not any(is_enabled(settings.get(f"{name}_enabled", True)) for name in known):
        errors.add(
            f"llm_gateway_backends={value!r}, but every one of them is disabled on this host",
            "at least one enabled backend behind the gateway",
            "enable a backend (vllm_enabled, ollama_enabled) or set llm_gateway_enabled: false",
        )


def _check_paths(errors: _Errors, settings: dict) -> None:
    value = _list_setting(errors, settings, "allowed_paths")
    if value is None:
        return
    for path in value:
        text = path if isinstance(path, str) else ""
        segments = text.split("/")
        if not URL_PATH.fullmatch(text) or ".." in segments or "." in segments or "//" in text:
            errors.add(
                f"llm_gateway_allowed_paths has {path!r}, which is not an exact URL path",
                "a path starting with '/', of letters, digits and - . _ ~ /, without '..' or '.' segments, "
                "'//', a query ('?') or a fragment ('#')",
                "write the path alone, e.g. /v1/chat/completions",
            )
    _refuse_repeats(errors, "allowed_paths", value, "each path once")


def _check_tls(errors: _Errors, settings: dict) -> None:
    certificate, private_key = settings.get("tls_certificate") or "", settings.get("tls_private_key") or ""
    host = settings.get("host")
    ca = settings.get("tls_ca") or ""
    if ca not in ("", "private"):
        errors.add(
            f"llm_gateway_tls_ca={ca}",
            "private (the controller's CA issues the certificates) or empty",
            "set llm_gateway_tls_ca: private, or leave it empty and give a certificate and key",
        )
        return
    if ca == "private" and (certificate or private_key):
        errors.add(
            "llm_gateway_tls_ca=private and a certificate or key of its own",
            "one source of the certificate",
            "empty llm_gateway_tls_certificate and llm_gateway_tls_private_key, or llm_gateway_tls_ca",
        )
        return
    if not certificate and not private_key:
        if ca != "private" and not _address_problem(host) and not is_loopback(host):
            errors.add(
                f"llm_gateway_host={host} is not loopback, and there is no TLS certificate and key",
                "TLS on any address other than loopback (clients send the key over the network)",
                "set llm_gateway_tls_ca: private, or llm_gateway_tls_certificate and llm_gateway_tls_private_key"
                " (PEM), or bind 127.0.0.1",
            )
        return
    if not certificate or not private_key:
        given, missing = (
            ("llm_gateway_tls_certificate", "llm_gateway_tls_private_key")
            if certificate
            else ("llm_gateway_tls_private_key", "llm_gateway_tls_certificate")
        )
        errors.add(
            f"{given} is set but {missing} is empty",
            "both, or neither",
            f"set {missing} too (its PEM text, e.g. from a lookup('file', ...) in a vault), or empty {given}",
        )
        return
    _check_pair(errors, str(certificate), str(private_key))


def _check_pair(errors: _Errors, certificate: str, private_key: str) -> None:
    from cryptography import x509  # noqa: PLC0415 - controller only (ansible-core's dependency)
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    pem_fix = "give the PEM text itself, e.g. \"{{ lookup('file', 'tls/host.pem') }}\", not a path"
    chain = None
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode())
    except (ValueError, TypeError):
        errors.add(
            f"llm_gateway_tls_certificate ({_describe_pem(certificate)}) is not a PEM certificate",
            "one or more -----BEGIN CERTIFICATE----- blocks, the host's certificate first",
            pem_fix,
        )
    key = None
    try:
        key = serialization.load_pem_private_key(private_key.encode(), password=None)
    except TypeError:
        errors.add(
            "llm_gateway_tls_private_key (not shown) is encrypted with a passphrase",
            "an unencrypted PEM private key (the gateway starts unattended; the file is root-only)",
            "decrypt it, e.g. `openssl pkey -in key.pem -out plain.pem`, and keep that in a vault",
        )
    except (ValueError, UnsupportedAlgorithm):
        errors.add(
            f"llm_gateway_tls_private_key ({len(private_key)} characters, not shown) is not a PEM private key",
            "a -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY) block",
            pem_fix.replace("host.pem", "host.key"),
        )
    if not chain:
        return
    leaf = chain[0]
    subject = leaf.subject.rfc4514_string() or "(no subject)"
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        errors.add(
            f"llm_gateway_tls_certificate ({subject}) expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            "a certificate valid now",
            "renew the certificate and set the new one",
        )
    elif leaf.not_valid_before_utc > now:
        errors.add(
            f"llm_gateway_tls_certificate ({subject}) is valid only from "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "a certificate valid now",
            "check the controller's and the issuer's clocks, or use a certificate valid today",
        )
    if key is not None:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        encoding = serialization.Encoding.DER
        if leaf.public_key().public_bytes(encoding, spki) != key.public_key().public_bytes(encoding, spki):
            errors.add(
                f"llm_gateway_tls_certificate ({subject}) does not match llm_gateway_tls_private_key (not shown)",
                "the private key of the certificate's public key",
                "set the key the certificate was issued for (first certificate in the PEM = the host's own)",
            )
