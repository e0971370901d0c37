"""Encode a .env file for one declared consumer: python-dotenv (dotenv_values / load_dotenv, defaults).

Every value is written single-quoted, with backslashes and single quotes escaped (the two escapes
python-dotenv decodes inside single quotes), so quotes, `$`, `#`, spaces and any unicode come back
unchanged. What python-dotenv cannot give back is refused, naming the key and never the value:
a newline, a carriage return or NUL, and `${` (python-dotenv expands ${NAME} even in quotes, and
has no escape for it).
"""

from __future__ import annotations

import re

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DotenvError(ValueError):
    """A key or value the consumer could not read back; the message never holds the value."""


def encode_value(key: str, value: object) -> str:
    if not isinstance(key, str) or not KEY.match(key):
        raise DotenvError(f".env key {key!r} is not a valid name; expected letters, digits and _, not first a digit")
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    for bad, what in (("\n", "a newline"), ("\r", "a carriage return"), ("\x00", "a NUL byte")):
        if bad in text:
            raise DotenvError(f".env value of {key} holds {what}, which python-dotenv cannot read back; fix: remove it")
    if "${" in text:
        raise DotenvError(
            f".env value of {key} holds '${{', which python-dotenv would expand as a variable; fix: remove it"
        )
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def encode_line(key: str, value: object) -> str:
    return f"{key}={encode_value(key, value)}"


def render(pairs: dict, header: str = "") -> str:
    """The whole file: an optional comment header, then KEY='value' lines in the given order."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    lines += [encode_line(key, value) for key, value in pairs.items()]
    return "\n".join(lines) + "\n"
