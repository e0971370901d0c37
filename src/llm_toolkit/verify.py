"""Run the host verifiers (tests/verify, pytest-testinfra) and summarise them per host.

    scripts/verify.py [--inventory PATH] [--hosts PATTERN] [--json] [--output FILE]

It runs `pytest tests/verify --hosts=ansible://PATTERN --ansible-inventory=PATH` and reads its
JUnit report. Exit status: 0 every check passed (checks for a phase not deployed on a host are
skipped, with their reason); 1 a check failed; 2 the verifiers could not run (no such inventory,
no host matched, a host did not answer over its connection, pytest could not start, --output
into a directory that does not exist).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from llm_toolkit.cli import OneLineParser, output_problem

# What tests/verify/conftest.py fails every check of a host with when the host does not answer:
# such a host was not verified (exit 2), not verified and found failing (exit 1).
UNREACHABLE = "host unreachable:"

# Test ids: check[ansible://HOST] or, for checks per backend, check[backend=NAME-ansible://HOST].
CASE = re.compile(
    r"^(?P<check>[^\[]+)\[(?:backend=(?P<backend>[\w.]+)-)?(?:ansible|paramiko|ssh|local)://(?P<host>[^\]]+)\]$"
)


def summarise(junit_xml: str) -> dict:
    """{host: {passed: [...], failed: [{check, message}], skipped: [{check, reason}]}} from a JUnit report."""
    hosts: dict[str, dict] = {}
    root = ET.fromstring(junit_xml)  # noqa: S314 - our own pytest's report
    for case in root.iter("testcase"):
        match = CASE.match(case.get("name", ""))
        if not match:
            continue
        module = case.get("classname", "").rsplit(".", 1)[-1]
        check = f"{module}::{match['check']}" + (f"[{match['backend']}]" if match["backend"] else "")
        entry = hosts.setdefault(match["host"], {"passed": [], "failed": [], "skipped": []})
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            message = (failure.get("message") or failure.text or "").strip().splitlines()
            first = message[0][:300] if message else ""
            if UNREACHABLE in first:
                entry["unreachable"] = first[first.index(UNREACHABLE) + len(UNREACHABLE) :].strip().rstrip('"')
                continue
            entry["failed"].append({"check": check, "message": first})
        elif skipped is not None:
            reason = (skipped.get("message") or "").removeprefix("Skipped: ")
            entry["skipped"].append({"check": check, "reason": reason})
        else:
            entry["passed"].append(check)
    return dict(sorted(hosts.items()))


def host_lines(entry: dict | None, skipped: bool = True) -> list[str]:
    """One host's summary as lines: the verdict with its counts, then each failed (and skipped) check."""
    if entry is None:
        return ["not verified: the verifiers did not report this host"]
    if entry.get("unreachable"):
        return [f"not verified: the host did not answer: {entry['unreachable']}"]
    verdict = "FAILED" if entry["failed"] else "ok"
    counts = f"{len(entry['passed'])} passed, {len(entry['failed'])} failed, {len(entry['skipped'])} skipped"
    lines = [f"{verdict} ({counts})"]
    lines += [f"FAILED {failure['check']}: {failure['message']}" for failure in entry["failed"]]
    if skipped:
        lines += [f"skipped {skip['check']}: {skip['reason']}" for skip in entry["skipped"]]
    return lines


def exit_code(pytest_rc: int, hosts: dict) -> int:
    if any(entry.get("unreachable") for entry in hosts.values()):
        return 2
    if pytest_rc == 0 and hosts:
        return 0
    if pytest_rc == 1 and hosts:
        return 1
    return 2


def run(inventory: str, pattern: str, repo: Path) -> tuple[int, dict, str]:
    """pytest over the repository's verifiers; the tools it starts (ansible-inventory for testinfra)
    come from this interpreter's directory first, so a venv's Python works without its PATH."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(repo / "tests" / "verify"),
            "--hosts=" + ",".join(f"ansible://{part}" for part in pattern.split(",") if part),
            f"--ansible-inventory={inventory}",
            f"--junitxml={report}",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rfs",
        ]
        result = subprocess.run(command, capture_output=True, text=True, cwd=repo, env=env, check=False)
        hosts = summarise(report.read_text()) if report.exists() else {}
    return result.returncode, hosts, (result.stdout + result.stderr)


def main(argv: list[str] | None = None, repo: Path | None = None) -> int:
    """repo: the toolkit's checkout, whose tests/verify holds the verifiers (default: the current directory)."""
    repo = repo or Path.cwd()
    parser = OneLineParser(prog="scripts/verify.py", name="verify", description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default=str(repo / "inventory" / "lab"), help="default: inventory/lab")
    parser.add_argument("--hosts", default="llm_servers", help="an Ansible host pattern (default: llm_servers)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--output", type=Path, help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    if not (repo / "tests" / "verify").is_dir():
        print(f"verify: {repo} has no tests/verify; fix: run it from the toolkit's checkout", file=sys.stderr)
        return 2
    if not Path(args.inventory).exists():
        print(f"verify: inventory {args.inventory} does not exist; fix: pass --inventory", file=sys.stderr)
        return 2
    problem = output_problem(args.output, "--output")
    if problem:
        print(f"verify: {problem}", file=sys.stderr)
        return 2
    pytest_rc, hosts, output = run(args.inventory, args.hosts, repo)
    status = exit_code(pytest_rc, hosts)
    summary = {"inventory": args.inventory, "hosts_pattern": args.hosts, "exit_code": status, "hosts": hosts}
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for host, entry in hosts.items():
            first, *details = host_lines(entry)
            print(f"{host}: {first}")
            for line in details:
                print(f"  {line}")
    unreachable = [host for host, entry in hosts.items() if entry.get("unreachable")]
    if unreachable:
        print(f"verify: could not verify {', '.join(unreachable)}: the host did not answer", file=sys.stderr)
    elif status == 2:
        tail = "\n".join(output.strip().splitlines()[-5:])
        print(
            f"verify: the verifiers could not run against {args.hosts} (pytest exit {pytest_rc}):\n{tail}",
            file=sys.stderr,
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
