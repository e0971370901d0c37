"""The .env encoding round-trips through python-dotenv, the consumer it is written for."""

import io

import pytest
from dotenv import dotenv_values

from llm_toolkit.envfile import DotenvError, encode_line, render
from tests.ansible_plugins import ansible_filter

AWKWARD = [
    "plain",
    "",
    "  spaces around  ",
    "with # hash",
    "#starts-with-hash",
    "it's",
    'say "ciao"',
    "both ' and \"",
    "dollar $HOME and $ alone and $$",
    "trailing backslash \\",
    "back\\slash \\n not a newline",
    "àèéìòù € 日本語 🚗",
    "key=value=more",
    "sk-" + "x" * 200,
    "tab\tinside",
    "semicolon; and | pipe & amp",
    "`backticks` and $(subshell)",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_values_come_back_unchanged(value):
    text = render({"APP_VALUE": value, "NEXT": "after"})
    assert dotenv_values(stream=io.StringIO(text)) == {"APP_VALUE": value, "NEXT": "after"}


def test_a_whole_file_round_trips_with_its_header_and_order():
    pairs = {"LLM_BACKEND": "vllm", "LLM_FALLBACK": "ollama", "VLLM_API_KEY": "k'$#\"", "LLM_TIMEOUT_S": 60}
    text = render(pairs, "Managed by Ansible\nmode 0600")
    assert text.startswith("# Managed by Ansible\n# mode 0600\n")
    assert list(dotenv_values(stream=io.StringIO(text)).items()) == [(k, str(v)) for k, v in pairs.items()]


@pytest.mark.parametrize(
    ("value", "what"),
    [("a\nb", "a newline"), ("a\rb", "a carriage return"), ("a\x00b", "a NUL byte"), ("x${HOME}", "'${'")],
)
def test_values_python_dotenv_cannot_give_back_are_refused_by_key_never_by_value(value, what):
    with pytest.raises(DotenvError) as refused:
        encode_line("SECRET_TOKEN", value)
    assert str(refused.value).startswith(f".env value of SECRET_TOKEN holds {what}")
    assert value not in str(refused.value)


@pytest.mark.parametrize("key", ["1ABC", "WITH-DASH", "with space", "", "ÀB"])
def test_bad_keys_are_refused(key):
    with pytest.raises(DotenvError, match="is not a valid name"):
        encode_line(key, "v")


def test_booleans_numbers_and_none_are_written_as_text():
    values = dotenv_values(stream=io.StringIO(render({"A": True, "B": 3.5, "C": None})))
    assert values == {"A": "true", "B": "3.5", "C": ""}


def test_the_filters_render_and_list_refusals_by_key():
    assert ansible_filter("llm_dotenv")({"A": "x"}) == "A='x'\n"
    assert ansible_filter("llm_dotenv_errors")({"A": "ok", "B": "bad\nvalue"}) == [
        ".env value of B holds a newline, which python-dotenv cannot read back; fix: remove it"
    ]
