#!/usr/bin/env python3
"""Measure how long a no-op converge of playbooks/site.yml takes: each host alone, then all together.

    .venv/bin/python scripts/converge_timing.py [--inventory DIR] [--runs N] [--json]

Run it on converged hosts (make lab-timing does it for the lab, with the lab's depot and model).
Each run must change nothing; the script reports the wall time of each host alone and of all
hosts at once (the best of --runs), how that compares with the slowest single host, and how many
times facts were gathered per host and run. Targets are not asserted here: they are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=\d+\s+changed=(?P<changed>\d+)\s+unreachable=\d+\s+failed=(?P<failed>\d+)", re.M
)


def converge(inventory: str, limit: str | None) -> tuple[float, str]:
    command = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", inventory, "playbooks/site.yml"]
    command += ["--limit", limit] if limit else []
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "ANSIBLE_NOCOLOR": "1"}, check=False
    )
    elapsed = time.monotonic() - started
    recap = {match["host"]: match for match in RECAP.finditer(result.stdout)}
    if result.returncode != 0 or any(int(match["changed"]) or int(match["failed"]) for match in recap.values()):
        tail = "\n".join(result.stdout.splitlines()[-15:])
        raise SystemExit(f"converge_timing: the run for {limit or 'all hosts'} was not a no-op:\n{tail}")
    return elapsed, result.stdout


def hosts_of(inventory: str) -> list[str]:
    listing = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-inventory")), "-i", inventory, "--list"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return sorted(json.loads(listing.stdout).get("llm_servers", {}).get("hosts", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default="inventory/lab")
    parser.add_argument("--runs", type=int, default=2, help="runs per measurement; the best one counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hosts = hosts_of(args.inventory)
    if not hosts:
        raise SystemExit(f"converge_timing: no host in llm_servers of {args.inventory}; fix: make lab")
    single, gathered = {}, {}
    for host in hosts:
        runs = [converge(args.inventory, host) for _ in range(args.runs)]
        single[host] = round(min(elapsed for elapsed, _ in runs), 1)
        gathered[host] = runs[0][1].count("TASK [Gathering Facts]")
    together = round(min(converge(args.inventory, None)[0] for _ in range(args.runs)), 1)
    slowest = max(single.values())
    report = {
        "single_host_s": single,
        "all_hosts_s": together,
        "all_over_slowest_single": round(together / slowest, 2),
        "facts_gathered_per_host_and_run": gathered,
        "targets": {"single_host_s": 20, "all_over_slowest_single": 1.3},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for host, seconds in single.items():
            print(f"{host}: {seconds} s alone, facts gathered {gathered[host]} time(s) (target: 20 s)")
        ratio = report["all_over_slowest_single"]
        print(f"all {len(hosts)} hosts: {together} s, {ratio}x the slowest host (target: 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
