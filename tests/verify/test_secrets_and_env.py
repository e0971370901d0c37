"""Host verifiers for secrets and the RAG app's .env (roles/llm_app_env)."""

import io

import pytest
from dotenv import dotenv_values

from tests.verify.verify_helpers import PROCESS_LISTING, local_fact, processes_holding, setting, vllm_api_key

SECRET_KEYS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


@pytest.fixture
def app_env(host) -> dict:
    fact = local_fact(host, "llm_app_env")
    if fact is None:
        pytest.skip(f"no .env was written on this host (no {setting(host, 'llm_facts_dir')}/llm_app_env.fact)")
    return fact


def env_values(host, fact: dict) -> dict:
    with host.sudo():
        text = host.file(fact["path"]).content_string
    return dotenv_values(stream=io.StringIO(text))


def test_no_secret_is_on_any_process_command_line(host):
    secrets = {vllm_api_key(host)}
    fact = local_fact(host, "llm_app_env")
    if fact and host.file(fact["path"]).exists:
        secrets |= {value for key, value in env_values(host, fact).items() if any(s in key for s in SECRET_KEYS)}
    secrets = {secret for secret in secrets if secret and len(secret) >= 6}
    if not secrets:
        pytest.skip("no API key or token is configured on this host")
    with host.sudo():
        listing = host.run(PROCESS_LISTING).stdout
    leaking = processes_holding(listing, secrets)
    assert not leaking, f"a secret is on the command line of {len(leaking)} process(es): {', '.join(leaking)}"


def test_the_env_file_is_private_and_owned_as_configured(host, app_env):
    with host.sudo():
        env = host.file(app_env["path"])
        assert env.exists, f"{app_env['path']} is missing"
        found = (env.user, env.group, oct(env.mode))
    assert found == (app_env["owner"], app_env["group"], "0o600"), (
        f"{app_env['path']} is {found}; expected ({app_env['owner']}, {app_env['group']}, 0o600)"
    )


def test_the_env_file_holds_the_expected_keys(host, app_env):
    values = env_values(host, app_env)
    missing = [key for key in app_env["keys"] if key not in values]
    assert not missing, f"{app_env['path']} lacks {missing}"
    assert values["LLM_BASE_URL"].startswith("http"), f"LLM_BASE_URL is {values['LLM_BASE_URL']!r}"
    if not app_env["backends"]:  # an app server: the fleet gateway only, no backend of its own
        assert "LLM_BACKEND" not in values, "an app server's .env names a backend"
        return
    assert values["LLM_BACKEND"] in app_env["backends"], values["LLM_BACKEND"]
    for backend in app_env["backends"]:
        url = values.get(f"{backend.upper()}_BASE_URL", "")
        assert url.startswith("http"), f"{backend.upper()}_BASE_URL is {url!r}"
