"""Secrets the toolkit makes on a host: one generator, one place, one rotation rule.

Every secret the toolkit generates (the vLLM API key today; gateway keys and TLS material later)
goes through ensure(): it lives in a file of its own, owned by root and readable by root alone
(0600), in a directory only root can enter (0700). It is made once, when the file is missing or
empty, and then left alone (a rerun changes nothing); rotate=True replaces it with a new one. The
file is written to a temporary file in the same directory and renamed over the old one, so a
reader sees the old secret or the new one, never half of one, and no copy of the old one stays.

The value never appears in a message: errors name the path only.
"""

from __future__ import annotations

import os
import secrets
import tempfile

# 32 random bytes, URL-safe base64 (43 characters of A-Z a-z 0-9 - _): safe in a header, an
# EnvironmentFile=, a .env and a shell word without quoting.
DEFAULT_BYTES = 32
MIN_BYTES = 16


class SecretError(Exception):
    """A secret that could not be made or read; the message names the path, never the value."""


def generate(nbytes: int = DEFAULT_BYTES) -> str:
    """A new secret: nbytes from the OS's CSPRNG, URL-safe base64 without padding."""
    if int(nbytes) < MIN_BYTES:
        raise SecretError(f"a secret of {nbytes} bytes is too weak; expected {MIN_BYTES} or more")
    return secrets.token_urlsafe(int(nbytes))


def read(path: str) -> str:
    """The secret in path ("" when the file is missing or empty)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as error:
        raise SecretError(f"cannot read the secret file {path}: {getattr(error, 'strerror', None) or error}") from None


def _fix_mode(path: str, mode: int, uid: int, gid: int) -> bool:
    """Give path this mode and owner; True when something changed."""
    info = os.stat(path)
    changed = False
    if (info.st_mode & 0o7777) != mode:
        os.chmod(path, mode)
        changed = True
    if (info.st_uid, info.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        changed = True
    return changed


def write(path: str, value: str, uid: int = 0, gid: int = 0) -> None:
    """Replace the secret in path atomically (0600 from its first byte on; the old file is renamed over)."""
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".new")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(value + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chown(temporary, uid, gid)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def ensure(
    path: str,
    rotate: bool = False,
    create: bool = True,
    nbytes: int = DEFAULT_BYTES,
    check_mode: bool = False,
    uid: int = 0,
    gid: int = 0,
) -> dict:
    """Make sure path holds a secret; {changed, created, rotated, value}.

    create=False only reads (a consumer of a secret another role makes): a missing secret is an error.
    In check mode nothing is written; a secret that would be made is a fresh one nobody will use.
    """
    if not os.path.isabs(path):
        raise SecretError(f"secret path {path!r} is not absolute; expected e.g. /etc/llm-toolkit/secrets/NAME")
    directory = os.path.dirname(path)
    current = read(path)
    if not create:
        if not current and not check_mode:
            raise SecretError(f"no secret in {path}; expected the one the toolkit generates there")
        return {"changed": False, "created": False, "rotated": False, "value": current}
    make = rotate or not current
    if check_mode:
        return {
            "changed": make,
            "created": not current,
            "rotated": bool(current) and rotate,
            "value": generate(nbytes) if make else current,
        }
    changed = False
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        changed = True
    changed = _fix_mode(directory, 0o700, uid, gid) or changed
    value = current
    if make:
        value = generate(nbytes)
        write(path, value, uid, gid)
        changed = True
    changed = _fix_mode(path, 0o600, uid, gid) or changed
    return {"changed": changed, "created": not current, "rotated": bool(current) and rotate, "value": value}
