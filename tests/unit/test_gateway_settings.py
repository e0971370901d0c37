"""The gateway's settings are refused before anything changes (issue 14, "Bad input"): a bind beyond
loopback without TLS or key, an unknown backend, a port collision, an allowlist entry that is not a
path, a certificate that does not match its key (or is unparsable, expired, half given). One line per
refusal naming the host, the variable, what was expected and the fix; a private key is never shown.

Certificates are made here with cryptography (the package ansible-core depends on)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llm_toolkit.gateway import settings_errors
from tests.ansible_plugins import ansible_filter
from tests.unit.test_secrets import input_checks

HOST = "gpu7"
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
KEY_MARKER = "-----BEGIN PRIVATE KEY-----"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


def cert_pem(key, not_before=NOW - DAY, not_after=NOW + 90 * DAY, name: str = "gpu7.example.net") -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


KEY = new_key()
TLS = {"tls_certificate": cert_pem(KEY), "tls_private_key": key_pem(KEY)}

GOOD = {
    "host": "127.0.0.1",
    "port": 8080,
    "api_key": "",
    "api_key_file": "/etc/llm-toolkit/secrets/gateway_api_key",
    "backends": ["vllm", "ollama"],
    "allowed_paths": ["/v1/chat/completions", "/v1/completions", "/v1/models"],
    "metrics_host": "127.0.0.1",
    "metrics_port": 8081,
    "tls_certificate": "",
    "tls_private_key": "",
    "vllm_port": 8000,
    "ollama_port": 11434,
    "vllm_enabled": True,
    "ollama_enabled": True,
}


def refusal(**changes) -> str:
    """The one refusal these changes to a good configuration cause."""
    errors = settings_errors({**GOOD, **changes}, HOST)
    assert len(errors) == 1, errors
    line = errors[0]
    assert "\n" not in line
    assert line.startswith(f"{HOST}: ")
    assert "; expected " in line and "; fix: " in line
    return line


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"host": "localhost"},
        {"host": "::1"},
        {"host": "127.0.0.2"},
        {"host": "10.0.0.7", **TLS},
        {"host": "0.0.0.0", **TLS, "api_key": "k" * 64},  # noqa: S104 - a wildcard bind with TLS and a key is allowed
        {"host": "gpu7.example.net", **TLS},
        {"api_key": "0123456789abcdef0123456789abcdef"},
        {"api_key": "YWJjZGVmZ2hpamtsbW5vcA=="},
        {"backends": ["ollama"]},
        {"backends": ["ollama", "vllm"]},
        {"backends": ["vllm"], "ollama_enabled": False},
        {"allowed_paths": ["/v1/chat/completions"]},
        {"port": "9443", "metrics_port": "9444"},
        {"port": 1024, "metrics_port": 65535},
    ],
)
def test_a_good_configuration_passes(changes):
    assert settings_errors({**GOOD, **changes}, HOST) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "gpu7.example.net"])  # noqa: S104
def test_a_bind_beyond_loopback_without_tls_is_refused(host):
    line = refusal(host=host)
    assert f"llm_gateway_host={host} is not loopback, and there is no TLS certificate and key" in line
    assert "fix: set llm_gateway_tls_ca: private, or llm_gateway_tls_certificate and" in line


def test_the_controllers_private_ca_is_a_source_of_tls_for_a_network_bind():
    assert settings_errors({**GOOD, "host": "10.0.0.7", "tls_ca": "private"}, HOST) == []
    assert "llm_gateway_tls_ca=public; expected private" in refusal(tls_ca="public")
    both = refusal(**TLS, tls_ca="private")
    assert "llm_gateway_tls_ca=private and a certificate or key of its own" in both
    assert "BEGIN" not in both  # the key is never shown


def test_no_key_source_at_all_is_refused_the_gateway_never_runs_without_authentication():
    line = refusal(api_key="", api_key_file="")
    assert "llm_gateway_api_key and llm_gateway_api_key_file are both empty" in line
    assert "never runs without authentication" in line


def test_no_key_source_is_refused_on_loopback_and_beyond():
    errors = settings_errors({**GOOD, **TLS, "host": "10.0.0.7", "api_key_file": ""}, HOST)
    assert len(errors) == 1 and "both empty" in errors[0]


@pytest.mark.parametrize(
    "key",
    [
        "short",
        "has a space in it 0123456789",
        'quote"0123456789abcdef',
        "line\nbreak0123456789abcdef",
        "$HOME0123456789abcd",
    ],
)
def test_a_key_that_is_not_a_bearer_token_is_refused_and_never_shown(key):
    line = refusal(api_key=key)
    assert f"llm_gateway_api_key ({len(key)} characters, not shown) is not a Bearer token" in line
    assert all(part not in line for part in key.split() if len(part) > 4)


def test_a_key_file_that_is_not_a_plain_absolute_path_is_refused():
    assert "llm_gateway_api_key_file='secrets/key'" in refusal(api_key_file="secrets/key")
    assert "llm_gateway_api_key_file='/etc/x y'" in refusal(api_key_file="/etc/x y")


@pytest.mark.parametrize(
    ("backends", "expected"),
    [
        (["vllm", "olama"], "llm_gateway_backends has 'olama', an unknown backend; expected one of vllm, ollama"),
        (["tgi"], "llm_gateway_backends has 'tgi', an unknown backend"),
        (["vllm", "vllm"], "lists vllm more than once"),
        ([], "llm_gateway_backends=[] is empty"),
        ("vllm", "llm_gateway_backends='vllm' is a str, not a list"),
    ],
)
def test_a_bad_backend_list_is_refused(backends, expected):
    assert expected in refusal(backends=backends)


def test_a_backend_list_whose_every_backend_is_disabled_is_refused():
    line = refusal(backends=["vllm"], vllm_enabled=False)
    assert "every one of them is disabled on this host" in line


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"port": 8000}, "llm_gateway_port=8000 is also vllm_port"),
        ({"port": 11434}, "llm_gateway_port=11434 is also ollama_port"),
        ({"metrics_port": 8000}, "llm_gateway_metrics_port=8000 is also vllm_port"),
        ({"metrics_port": 11434}, "llm_gateway_metrics_port=11434 is also ollama_port"),
        ({"metrics_port": 8080}, "llm_gateway_port=8080 is also llm_gateway_metrics_port"),
        ({"port": "8000"}, "llm_gateway_port=8000 is also vllm_port"),
        ({"port": 80}, "llm_gateway_port=80; expected a port from 1024 to 65535"),
        ({"port": 65536}, "llm_gateway_port=65536; expected a port from 1024 to 65535"),
        ({"metrics_port": 0}, "llm_gateway_metrics_port=0; expected a port from 1024"),
        ({"port": "http"}, "llm_gateway_port='http'; expected a port"),
        ({"port": True}, "llm_gateway_port=True; expected a port"),
    ],
)
def test_a_port_collision_or_a_port_out_of_range_is_refused(changes, expected):
    assert expected in refusal(**changes)


@pytest.mark.parametrize(
    "path",
    [
        "v1/models",  # not absolute
        "/v1/models?x=1",  # a query
        "/v1/models#frag",  # a fragment
        "/v1/../admin",  # a parent segment
        "/v1/./models",
        "//v1/models",
        "/v1/chat completions",  # a space: a second word in the ACL
        "/v1/models\nbackend evil",  # a newline: a second configuration line
        "/v1/models\x00",
        '/v1/"models"',
        "/v1/models\\",
        "/v1/${HOME}",  # HAProxy expands environment variables in quoted strings
        "/v1/é",
        "",
        5,
    ],
)
def test_an_allowlist_entry_that_is_not_a_plain_path_is_refused(path):
    line = refusal(allowed_paths=["/v1/models", path])
    assert f"llm_gateway_allowed_paths has {path!r}, which is not an exact URL path" in line


def test_an_allowlist_that_is_empty_repeats_or_is_no_list_is_refused():
    assert "llm_gateway_allowed_paths=[] is empty" in refusal(allowed_paths=[])
    assert "is a str, not a list" in refusal(allowed_paths="/v1/models")
    assert "lists /v1/models more than once" in refusal(allowed_paths=["/v1/models", "/v1/models"])


@pytest.mark.parametrize("address", ["", "127.0.0.1:8080", "gpu7 bind", "-bad-", "host\nname"])
def test_a_bind_address_that_is_neither_ip_nor_host_name_is_refused(address):
    assert f"llm_gateway_metrics_host={address!r}" in refusal(metrics_host=address)


def test_only_the_certificate_or_only_the_key_is_refused():
    line = refusal(host="10.0.0.7", tls_certificate=TLS["tls_certificate"])
    assert "llm_gateway_tls_certificate is set but llm_gateway_tls_private_key is empty" in line
    line = refusal(host="10.0.0.7", tls_private_key=TLS["tls_private_key"])
    assert "llm_gateway_tls_private_key is set but llm_gateway_tls_certificate is empty" in line
    assert KEY_MARKER not in line


def test_a_certificate_that_does_not_match_its_key_is_refused_without_showing_the_key():
    other = key_pem(new_key())
    line = refusal(host="10.0.0.7", tls_certificate=TLS["tls_certificate"], tls_private_key=other)
    assert "llm_gateway_tls_certificate (CN=gpu7.example.net) does not match llm_gateway_tls_private_key" in line
    assert KEY_MARKER not in line and other.splitlines()[1] not in line


def test_an_expired_certificate_is_refused_with_its_date():
    expired = cert_pem(KEY, not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    line = refusal(host="10.0.0.7", tls_certificate=expired, tls_private_key=TLS["tls_private_key"])
    assert f"(CN=gpu7.example.net) expired on {(NOW - DAY):%Y-%m-%d}" in line
    assert "fix: renew the certificate" in line


def test_a_certificate_not_yet_valid_is_refused():
    future = cert_pem(KEY, not_before=NOW + 10 * DAY, not_after=NOW + 100 * DAY)
    line = refusal(host="10.0.0.7", tls_certificate=future, tls_private_key=TLS["tls_private_key"])
    assert "is valid only from" in line


@pytest.mark.parametrize(
    ("certificate", "shown"),
    [
        ("/etc/ssl/gpu7.pem", "'/etc/ssl/gpu7.pem'"),
        ("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "'-----BEGIN CERTIFICATE-----'"),
        ("garbage", "7 characters"),
    ],
)
def test_an_unparsable_certificate_is_refused(certificate, shown):
    line = refusal(host="10.0.0.7", tls_certificate=certificate, tls_private_key=TLS["tls_private_key"])
    assert f"llm_gateway_tls_certificate ({shown}) is not a PEM certificate" in line
    assert "not a path" in line


def test_a_private_key_given_as_the_certificate_is_refused_and_not_shown():
    line = refusal(host="10.0.0.7", tls_certificate=TLS["tls_private_key"], tls_private_key=TLS["tls_private_key"])
    assert "holds a PRIVATE KEY block, not shown" in line
    assert TLS["tls_private_key"].splitlines()[1][:20] not in line


@pytest.mark.parametrize(
    "private_key", ["/etc/ssl/gpu7.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"]
)
def test_an_unparsable_private_key_is_refused_and_not_shown(private_key):
    line = refusal(host="10.0.0.7", tls_certificate=TLS["tls_certificate"], tls_private_key=private_key)
    assert f"llm_gateway_tls_private_key ({len(private_key)} characters, not shown) is not a PEM private key" in line
    assert "AAAA" not in line and "gpu7.key" not in line


def test_an_encrypted_private_key_is_refused():
    encrypted = key_pem(KEY, password=b"passphrase")
    line = refusal(host="10.0.0.7", tls_certificate=TLS["tls_certificate"], tls_private_key=encrypted)
    assert "llm_gateway_tls_private_key (not shown) is encrypted with a passphrase" in line


def test_every_refusal_at_once_is_one_line_each():
    errors = settings_errors(
        {**GOOD, "host": "0.0.0.0", "port": 8000, "backends": ["tgi"], "allowed_paths": ["x"], "api_key_file": ""},  # noqa: S104
        HOST,
    )
    assert len(errors) == 5, errors
    assert all(line.startswith(f"{HOST}: ") and "\n" not in line for line in errors)


def test_the_filter_preflight_calls_gives_the_same_refusals():
    errors = ansible_filter("llm_gateway_settings_errors")({**GOOD, "port": 8000}, HOST)
    assert errors == settings_errors({**GOOD, "port": 8000}, HOST)
    assert ansible_filter("llm_gateway_settings_errors")(GOOD, HOST) == []


# --- preflight: the real role's input checks, run by ansible-playbook on the controller ----------


def preflight_output(extra: dict):
    result = input_checks("llm_preflight", extra)
    return result, result.stdout + result.stderr


def test_preflight_stops_on_bad_gateway_settings_one_line_each_and_never_shows_the_key():
    canary_key = key_pem(new_key())
    result, output = preflight_output(
        {
            "llm_gateway_host": "10.0.0.7",
            "llm_gateway_port": 11434,
            "llm_gateway_backends": ["vllm", "tgi"],
            "llm_gateway_tls_certificate": TLS["tls_certificate"],
            "llm_gateway_tls_private_key": canary_key,
        }
    )
    assert result.returncode != 0
    assert "TASK [llm_preflight : assert | Stop if the gateway's settings are refused]" in output
    assert "localhost: llm_gateway_port=11434 is also ollama_port" in output
    assert "localhost: llm_gateway_backends has 'tgi', an unknown backend" in output
    assert "does not match llm_gateway_tls_private_key (not shown)" in output
    for line in canary_key.splitlines()[1:-1]:
        assert line[:24] not in output


def test_preflight_passes_good_gateway_settings_and_skips_the_check_when_the_gateway_is_off():
    result, output = preflight_output(
        {"llm_gateway_host": "10.0.0.7", **{f"llm_gateway_{k}": v for k, v in TLS.items()}}
    )
    assert result.returncode == 0, output[-2000:]
    assert "ok: [localhost]" in output.split("Stop if the gateway's settings are refused]")[1]
    result, output = preflight_output({"llm_gateway_enabled": False, "llm_gateway_port": 8000})
    assert result.returncode == 0, output[-2000:]
    assert "skipping: [localhost]" in output.split("Stop if the gateway's settings are refused]")[1]
