"""Helpers of the host verifiers: the shared settings as a host sees them, and what the roles recorded on it."""

import datetime
import inspect
import json
import re
import shlex
import textwrap
from pathlib import Path

import yaml

from llm_toolkit.backends import validate
from llm_toolkit.envfile import SYSTEMD_ESCAPED, decode_systemd_value

REPO = Path(__file__).resolve().parents[2]
# The settings every role shares (roles/llm_defaults), before the inventory overrides them.
SHARED = yaml.safe_load((REPO / "roles" / "llm_defaults" / "defaults" / "main.yml").read_text())
BACKENDS = ["vllm", "ollama"]
# vLLM's key lives here, readable by root alone (roles/vllm); the verifiers read it on the host.
VLLM_ENV = "/etc/vllm/vllm.env"
# Every process as "PID<TAB>executable<TAB>command line" (run with sudo to see them all).
PROCESS_LISTING = (
    'for d in /proc/[0-9]*; do printf \'%s\\t%s\\t\' "${d#/proc/}" "$(readlink "$d/exe")"; '
    "tr '\\0' ' ' < \"$d/cmdline\"; echo; done 2>/dev/null"
)


def setting(host, name: str):
    """A shared setting (roles/llm_defaults) as this host's inventory sets it, else its default."""
    return host.ansible.get_variables().get(name, SHARED[name])


def local_fact(host, name: str) -> dict | None:
    fact = host.file(f"{setting(host, 'llm_facts_dir')}/{name}.fact")
    if not fact.exists:
        return None
    return json.loads(fact.content_string)


def backend_record(host, backend: str) -> dict | None:
    """The backend's record (docs/backend-record.md), checked against the contract; None where not deployed."""
    record = local_fact(host, f"llm_{backend}")
    return None if record is None else validate(record, f"llm_{backend}.fact")


def vllm_api_key(host) -> str:
    """The key vllm.service reads (root-only file), or an empty string."""
    with host.sudo():
        env = host.file("/etc/vllm/vllm.env")
        text = env.content_string if env.exists else ""
    for line in text.splitlines():
        if line.startswith("VLLM_API_KEY="):
            return decode_systemd_value(line.split("=", 1)[1])
    return ""


def apt_list(dump: str, key: str) -> list[str]:
    """The entries of an apt configuration list, from `apt-config dump` output."""
    prefix = f"{key}:: "
    return [line[len(prefix) :].rstrip(";").strip('"') for line in dump.splitlines() if line.startswith(prefix)]


# Prints the value of VLLM_API_KEY in the EnvironmentFile= named by its argument as systemd reads it
# (an operator's key with spaces or quotes is written double-quoted and escaped there): the toolkit's
# own decoder, sent to the host's python3 as its program text, so the key itself is read from the
# file on the host and written to a pipe, never passed as an argument.
KEY_PRINTER = (
    "import sys\n"
    f"SYSTEMD_ESCAPED = {SYSTEMD_ESCAPED!r}\n"
    + textwrap.dedent(inspect.getsource(decode_systemd_value))
    + "for line in open(sys.argv[1], encoding='utf-8'):\n"
    "    if line.startswith('VLLM_API_KEY='):\n"
    "        value = decode_systemd_value(line.rstrip('\\n').split('=', 1)[1])\n"
    "        sys.stdout.buffer.write(value.encode('utf-8') + b'\\n')\n"
    "        break\n"
)


def key_to_stdout(env_file: str = VLLM_ENV) -> str:
    """A shell command that prints vLLM's key from its file (decoded as systemd reads it), to be piped
    into the command that needs it: the key travels through a pipe on the host, never on a command line
    (ssh's, sudo's, python's or curl's)."""
    return f"python3 -c {shlex.quote(KEY_PRINTER)} {shlex.quote(env_file)}"


def api_get_command(url: str, env_file: str | None = None) -> str:
    """curl for url; with env_file, the Authorization header is made from the key in that file on the
    host and handed to curl on its standard input (-H @-)."""
    curl = f"curl -sf --max-time 30 {shlex.quote(url)}"
    if not env_file:
        return curl
    return f"{key_to_stdout(env_file)} | sed 's/^/Authorization: Bearer /' | {curl} -H @-"


def processes_holding(listing: str, secrets: set[str]) -> list[str]:
    """'PID N (executable)' for each process of a PROCESS_LISTING whose command line holds a secret:
    the command line itself is never repeated (it holds the secret)."""
    found = []
    for line in listing.splitlines():
        pid, _, rest = line.partition("\t")
        executable, _, cmdline = rest.partition("\t")
        if any(secret in cmdline for secret in secrets):
            found.append(f"PID {pid} ({executable or 'executable unknown'})")
    return found


def certificate_days_left(show_ssl_cert: str, now: datetime.datetime | None = None) -> int | None:
    """Days until the certificate's `notAfter` in HAProxy's `show ssl cert <file>` answer (None when the
    answer has none)."""
    match = re.search(r"^not ?after: (.+)$", show_ssl_cert, re.M | re.I)
    if not match:
        return None
    not_after = datetime.datetime.strptime(match[1].strip(), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)
    return (not_after - (now or datetime.datetime.now(datetime.UTC))).days
