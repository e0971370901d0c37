"""Command line of scripts/lab (see `scripts/lab --help`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import image as lab_image
from . import layer as lab_layer
from . import system
from .core import (
    DEFAULT_LAB,
    LAYERS,
    NO_GPU_PROFILE,
    NO_LAYER,
    LabError,
    LabSpec,
    boot_timeout_s,
    default_subnet,
    min_free_mb,
    plan_nodes,
    render_inventory,
    validate_name,
    validate_subnet,
)

HOST_PACKAGES = [
    "systemd-container",
    "debootstrap",
    "iptables",
    "iproute2",
    "openssh-client",
    # The Ollama stand-in's depot: its engine venv is made with the system Python the hosts share,
    # and its release archive is zstd-compressed and bundles libnuma.
    "python3-venv",
    "zstd",
    "libnuma1",
    # The gateway's configuration is run by the real HAProxy in the unit tests (tests/unit/test_gateway_config.py).
    "haproxy",
]
# Packages whose Debian install starts a service this machine does not need (it is stopped and disabled).
NO_SERVICE = {"haproxy": "haproxy.service"}
PROFILES_FILE = system.STANDINS / "nvidia_smi" / "profiles.json"

DESCRIPTION = """\
Disposable Debian test hosts with systemd as PID 1 (systemd-nspawn), reachable over ssh on
their own addresses on a host bridge with NAT. Each host can carry a simulated GPU profile
(a test-only fake nvidia-smi from tests/standins), be put in inventory groups other than
llm_servers (--group), and boot on a saved layer with a role's software already installed
(--layer; built once per lock file and image, cached under LAB_HOME/layers). `nat off` cuts
a running lab off from everything but its own hosts and this machine's bridge address;
`nat on` restores it. Run as root.

environment:
  LAB_HOME          cache and state directory (default /var/cache/llm-lab)
  LAB_NAME          lab name, so several labs can run side by side (default: lab)
  LAB_SUBNET        the lab's IPv4 network (default 10.213.0.0/24 for the default lab)
  LAB_MIN_FREE_MB   free disk required under LAB_HOME before anything is created (default 2048)
  LAB_BOOT_TIMEOUT  seconds a host may take to reach 'running' (default 120)

exit codes: 0 success; 2 an expected failure (one line on stderr says why and how to fix
it); 3 'status' found the lab down or a host not running.
"""


def known_profiles() -> list[str]:
    return [NO_GPU_PROFILE, *sorted(json.loads(PROFILES_FILE.read_text()))]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/lab", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LAB_HOME", "/var/cache/llm-lab")))
    parser.add_argument("--name", default=os.environ.get("LAB_NAME", DEFAULT_LAB))
    parser.add_argument("--subnet", default=os.environ.get("LAB_SUBNET"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("deps", help="install the host packages the lab needs (apt)")
    commands.add_parser("image", help="build the cached host image (a no-op when it is cached)")
    up = commands.add_parser("up", help="boot N hosts (idempotent: keeps hosts that are up)")
    up.add_argument("count", type=int, metavar="N")
    up.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="[HOST=]PROFILE",
        help=f"simulated GPU profile for every host, or for one host; one of: {', '.join(known_profiles())}",
    )
    up.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="HOST=GROUP",
        help="put HOST in inventory group GROUP instead of llm_servers (repeat for more groups or hosts); "
        "kept by later 'up's until 'down'",
    )
    up.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="[HOST=]LAYER",
        help=f"boot every host, or one host, on a saved layer; one of: {', '.join([NO_LAYER, *LAYERS])}; "
        "kept by later 'up's until 'down'",
    )
    up.add_argument("--fresh", action="store_true", help="discard hosts that are up and boot new ones")
    commands.add_parser("down", help="stop every host and remove all the lab left on the machine")
    nat = commands.add_parser("nat", help="cut a running lab off from the outside (off), or reconnect it (on)")
    nat.add_argument("state", choices=["on", "off"])
    layer = commands.add_parser("layer", help="build a saved layer now (a no-op when cached), or rewrite its lock")
    layer.add_argument("layer", choices=sorted(LAYERS), metavar="LAYER", help=f"one of: {', '.join(LAYERS)}")
    layer.add_argument(
        "--lock",
        action="store_true",
        help="install as the role does in a temporary host and rewrite the layer's lock file from it",
    )
    status = commands.add_parser("status", help="show the hosts and their systemd state")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inventory = commands.add_parser("inventory", help="write the Ansible inventory of the lab")
    inventory.add_argument("--output", help="file to write, or - for stdout (default: the lab's inventory)")
    gpu = commands.add_parser("gpu", help="change a running host's simulated GPU profile")
    gpu.add_argument("host")
    gpu.add_argument("profile", choices=known_profiles())
    return parser.parse_args(argv)


class Lab:
    """Paths and stored spec of one named lab."""

    def __init__(self, home: Path, name: str, subnet: str | None):
        self.home = home
        self.name = validate_name(name)
        self.subnet = str(validate_subnet(subnet or default_subnet(self.name)))
        self.state_dir = home / "labs" / self.name
        self.spec_file = self.state_dir / "lab.json"
        self.key = home / "keys" / "id_ed25519"

    @property
    def inventory_dir(self) -> Path:
        """The default lab's inventory is inventory/lab; others live in their state directory."""
        if self.name == DEFAULT_LAB:
            return system.REPO / "inventory" / "lab"
        return self.state_dir / "inventory"

    @property
    def inventory_file(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    def load(self) -> LabSpec | None:
        return LabSpec.from_json(self.spec_file.read_text()) if self.spec_file.exists() else None

    def save(self, spec: LabSpec) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.spec_file.write_text(spec.to_json() + "\n")

    def node_dirs(self) -> list[str]:
        nodes = self.state_dir / "nodes"
        return sorted(path.name for path in nodes.iterdir()) if nodes.is_dir() else []

    def locked(self):
        return system.file_lock(self.home / "labs" / f".{self.name}.lock")

    def write_inventory(self, spec: LabSpec, output: str | None = None) -> Path | None:
        text = render_inventory(spec, self.key)
        if output == "-":
            sys.stdout.write(text)
            return None
        target = Path(output) if output else self.inventory_file
        target.parent.mkdir(parents=True, exist_ok=True)
        shared_group_vars = system.REPO / "inventory" / "lab" / "group_vars"
        local_group_vars = target.parent / "group_vars"
        if shared_group_vars.is_dir() and not local_group_vars.exists():
            local_group_vars.symlink_to(shared_group_vars)
        target.write_text(text)
        return target


def say(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def cmd_deps(lab: Lab, args: argparse.Namespace) -> int:
    system.require_root("deps")
    missing = [
        package
        for package in HOST_PACKAGES
        if subprocess.run(["dpkg", "-s", package], capture_output=True, check=False).returncode != 0
    ]
    if missing:
        say(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        system.run(["apt-get", "-qq", "update"])
        result = subprocess.run(
            ["apt-get", "-qq", "install", "-y", *missing], capture_output=True, text=True, env=env, check=False
        )
        if result.returncode != 0:
            raise LabError(f"apt-get install {' '.join(missing)} failed: {result.stderr.strip().splitlines()[-1:]}")
        for unit in (NO_SERVICE[package] for package in missing if package in NO_SERVICE):
            subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True, check=False)
    return 0


def cmd_image(lab: Lab, args: argparse.Namespace) -> int:
    system.require_root("image")
    path = lab_image.image_path(lab.home)
    system.preflight(lab.home, min_free_mb(), need_image_tools=not path.exists())
    with lab.locked():
        say(f"image ready: {lab_image.build_image(lab.home, log=say)}")
    return 0


def cmd_up(lab: Lab, args: argparse.Namespace) -> int:
    started = time.monotonic()

    def plan(previous: LabSpec | None):
        layers = list(LAYERS)
        return plan_nodes(
            lab.name, lab.subnet, args.count, args.gpu, known_profiles(), args.group, args.layer, layers, previous
        )

    plan(None)  # bad arguments are refused first, whoever runs it
    system.require_root("up")
    previous = lab.load()
    nodes = plan(previous)
    image_dir = lab_image.image_path(lab.home)
    system.preflight(lab.home, min_free_mb(), need_image_tools=not image_dir.exists())
    spec = LabSpec(name=lab.name, subnet=lab.subnet, nodes=nodes, nat=previous.nat if previous else True)
    if previous and previous.subnet != spec.subnet:
        raise LabError(
            f"lab {lab.name!r} is up on {previous.subnet}, not {spec.subnet}; expected the same subnet; "
            f"fix: scripts/lab --name {lab.name} down, then up again"
        )
    holder = system.subnet_in_use_elsewhere(spec)
    if holder:
        raise LabError(
            f"subnet {spec.subnet} is already used by interface {holder}; expected a free subnet; "
            "fix: pass --subnet (or set LAB_SUBNET) to another private /24"
        )
    with lab.locked():
        key = system.ensure_key(lab.home)
        image_dir = lab_image.build_image(lab.home, log=say)
        wanted = {node.name: node for node in nodes}
        # A host is kept when it runs and stays on the layer it booted on; the others boot anew.
        kept = {
            name
            for name in lab.node_dirs()
            if not args.fresh
            and name in wanted
            and system.node_running(lab.state_dir, name)
            and previous is not None
            and previous.node(name) is not None
            and previous.node(name).layer == wanted[name].layer
        }
        to_boot = [node for node in nodes if node.name not in kept]
        # Layers are built before any host stops, so a failed build leaves the lab as it was.
        layers = {
            name: lab_layer.ensure_layer(lab.home, name, image_dir, key, log=say)
            for name in sorted({node.layer for node in to_boot if node.layer})
        }
        for name in lab.node_dirs():
            if name not in kept:
                system.stop_node(lab.state_dir, name)
        lab.save(spec)
        system.network_up(spec)
        for node in nodes:
            if node.name in kept:
                system.set_gpu_profile(system.NodePaths(lab.state_dir, node.name), node.gpu_profile)
        for node in to_boot:
            system.start_node(lab.state_dir, spec, node, image_dir, key, layers.get(node.layer))
        timeout = boot_timeout_s()
        system.in_parallel(
            lambda node: (
                boot_with_one_retry(lab, spec, node, image_dir, key, timeout, layers.get(node.layer))
                if node in to_boot
                else system.wait_node(lab.state_dir, node, key, timeout)
            ),
            nodes,
        )
        inventory = lab.write_inventory(spec)
    say(
        f"{len(nodes)} host(s) running ({len(to_boot)} booted) in {time.monotonic() - started:.1f} s; "
        f"inventory: {inventory}"
    )
    return 0


def boot_with_one_retry(
    lab: Lab, spec: LabSpec, node, image_dir: Path, key: Path, timeout: float, layer: Path | None = None
) -> None:
    """Wait for a node just booted; one that failed to come up is booted once more before giving up."""
    try:
        system.wait_node(lab.state_dir, node, key, timeout)
    except LabError as first:
        say(f"{first}; booting {node.name} once more")
        system.stop_node(lab.state_dir, node.name)
        system.start_node(lab.state_dir, spec, node, image_dir, key, layer)
        system.wait_node(lab.state_dir, node, key, timeout)


def cmd_down(lab: Lab, args: argparse.Namespace) -> int:
    system.require_root("down")
    spec = lab.load() or LabSpec(name=lab.name, subnet=lab.subnet)
    with lab.locked():
        system.in_parallel(lambda name: system.stop_node(lab.state_dir, name), lab.node_dirs())
        system.network_down(spec)
        leftovers = system.mounts_under(lab.state_dir) + system.leftover_rules(spec)
        if leftovers:
            raise LabError(f"lab {lab.name!r} left {leftovers[0]} behind; fix: remove it by hand and report a bug")
        lab.inventory_file.unlink(missing_ok=True)
        if lab.state_dir.exists():
            shutil.rmtree(lab.state_dir)
    say(f"lab {lab.name!r} is down")
    return 0


def cmd_status(lab: Lab, args: argparse.Namespace) -> int:
    spec = lab.load()
    rows = []
    for node in spec.nodes if spec else []:
        running = system.node_running(lab.state_dir, node.name)
        systemd_state = "-"
        if running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                systemd_state = (
                    system.ssh(node, lab.key, "systemctl is-system-running", timeout=10).stdout.strip() or "unreachable"
                )
        rows.append(
            {
                "host": node.name,
                "address": node.address,
                "gpu_profile": node.gpu_profile,
                "groups": list(node.groups),
                "layer": node.layer or None,
                "container": "running" if running else "stopped",
                "systemd": systemd_state,
            }
        )
    healthy = bool(rows) and all(row["systemd"] == "running" for row in rows)
    nat = spec.nat if spec else None
    if args.json:
        report = {"lab": lab.name, "subnet": lab.subnet, "nat": nat, "healthy": healthy, "hosts": rows}
        print(json.dumps(report, indent=2))
    elif not rows:
        print(f"lab {lab.name!r} is down")
    else:
        columns = ["host", "address", "gpu_profile", "groups", "layer", "container", "systemd"]
        cells = [{col: col for col in columns}] + [
            {**row, "groups": ",".join(row["groups"]), "layer": row["layer"] or "-"} for row in rows
        ]
        widths = {col: max(len(cell[col]) for cell in cells) for col in columns}
        for cell in cells:
            print("  ".join(cell[col].ljust(widths[col]) for col in columns).rstrip())
        reach = "the outside too" if nat else f"each other and {spec.gateway} only"
        print(f"NAT: {'on' if nat else 'off'} (hosts reach {reach})")
    return 0 if healthy else 3


def cmd_inventory(lab: Lab, args: argparse.Namespace) -> int:
    spec = lab.load()
    if spec is None:
        raise LabError(f"lab {lab.name!r} is down, so it has no inventory; fix: scripts/lab up 3")
    path = lab.write_inventory(spec, args.output)
    if path:
        print(path)
    return 0


def cmd_gpu(lab: Lab, args: argparse.Namespace) -> int:
    system.require_root("gpu")
    spec = lab.load()
    names = [node.name for node in spec.nodes] if spec else []
    if args.host not in names or not system.node_running(lab.state_dir, args.host):
        raise LabError(
            f"host {args.host!r} is not running in lab {lab.name!r}; expected one of: "
            f"{', '.join(names) or 'none'}; fix: scripts/lab up N first"
        )
    with lab.locked():
        system.set_gpu_profile(system.NodePaths(lab.state_dir, args.host), args.profile)
        spec.nodes = [
            dataclasses.replace(node, gpu_profile=args.profile) if node.name == args.host else node
            for node in spec.nodes
        ]
        lab.save(spec)
        lab.write_inventory(spec)
    say(f"host {args.host} now has GPU profile {args.profile}")
    return 0


def cmd_nat(lab: Lab, args: argparse.Namespace) -> int:
    system.require_root("nat")
    spec = lab.load()
    if spec is None or not system.link_exists(spec.bridge):
        raise LabError(
            f"lab {lab.name!r} is down, so it has no NAT to switch; expected a running lab; "
            f"fix: scripts/lab --name {lab.name} up 3 first"
        )
    with lab.locked():
        spec = lab.load() or spec
        spec.nat = args.state == "on"
        system.apply_nat(spec)
        lab.save(spec)
    if spec.nat:
        say(f"NAT is on: the hosts of lab {lab.name!r} reach the outside again")
    else:
        say(f"NAT is off: the hosts of lab {lab.name!r} reach each other and {spec.gateway} only")
    return 0


def cmd_layer(lab: Lab, args: argparse.Namespace) -> int:
    system.require_root("layer")
    image_dir = lab_image.image_path(lab.home)
    system.preflight(lab.home, min_free_mb(), need_image_tools=not image_dir.exists())
    key = system.ensure_key(lab.home)
    with lab.locked():
        image_dir = lab_image.build_image(lab.home, log=say)
    recipe = LAYERS[args.layer]
    if args.lock:
        with lab_layer.build_lock(lab.home):
            path = lab_layer.write_lock(lab.home, recipe, image_dir, key, log=say)
        say(f"wrote {path.relative_to(system.REPO)}; commit it: the next --layer {recipe.name} builds from it")
        return 0
    print(lab_layer.ensure_layer(lab.home, args.layer, image_dir, key, log=say))
    return 0


COMMANDS = {
    "deps": cmd_deps,
    "image": cmd_image,
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "inventory": cmd_inventory,
    "gpu": cmd_gpu,
    "nat": cmd_nat,
    "layer": cmd_layer,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        min_free_mb(), boot_timeout_s()  # the environment is checked before any command touches anything
        lab = Lab(args.home, args.name, args.subnet)
        return COMMANDS[args.command](lab, args)
    except LabError as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab: interrupted; run 'scripts/lab down' to clean up", file=sys.stderr)
        return 130
