"""Pure helpers of the lab: names, addresses, command lines, inventory text.

Nothing here touches the machine, so every rule can be unit-tested.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LAB = "lab"
DEFAULT_SUBNET = "10.213.0.0/24"
FIRST_HOST_OCTET = 11
MAX_HOSTS = 16
NO_GPU_PROFILE = "none"
COMMENT_PREFIX = "llm-lab:"
CGROUP_GROUP = "llm-lab"
INVENTORY_GROUP = "llm_servers"
LAB_WHEELS_MOUNT = "/opt/lab-wheels"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class LabError(Exception):
    """An expected failure: printed as one line, no traceback."""


@dataclass(frozen=True)
class Node:
    """One lab host."""

    name: str
    address: str
    gpu_profile: str = NO_GPU_PROFILE


@dataclass
class LabSpec:
    """What a lab is made of; stored as JSON in the lab's state directory."""

    name: str
    subnet: str
    nodes: list[Node] = field(default_factory=list)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def bridge(self) -> str:
        return bridge_name(self.name)

    @property
    def comment(self) -> str:
        return COMMENT_PREFIX + self.name

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "subnet": self.subnet,
                "nodes": [vars(node) for node in self.nodes],
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> LabSpec:
        data = json.loads(text)
        return cls(
            name=data["name"],
            subnet=data["subnet"],
            nodes=[Node(**node) for node in data.get("nodes", [])],
        )


def validate_name(name: str) -> str:
    """Lab names become interface and machine names, so keep them short and plain."""
    if not _NAME_RE.match(name):
        raise LabError(
            f"lab name {name!r} is invalid; expected 1-8 lowercase letters or digits starting "
            "with a letter; fix: pass --name like 'lab' or 'ci'"
        )
    return name


def bridge_name(lab: str) -> str:
    """Host bridge of a lab (interface names are limited to 15 characters)."""
    return f"llmlab-{lab}"[:15]


def default_subnet(lab: str) -> str:
    """The default lab uses DEFAULT_SUBNET; other labs get a stable 10.213.X.0/24 of their own."""
    if lab == DEFAULT_LAB:
        return DEFAULT_SUBNET
    third = 1 + int(hashlib.sha256(lab.encode()).hexdigest(), 16) % 250
    return f"10.213.{third}.0/24"


def validate_subnet(subnet: str) -> ipaddress.IPv4Network:
    """A private IPv4 network with room for MAX_HOSTS hosts after FIRST_HOST_OCTET."""
    try:
        network = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise LabError(
            f"subnet {subnet!r} is invalid ({exc}); expected a private IPv4 network such as "
            f"{DEFAULT_SUBNET}; fix: pass --subnet or set LAB_SUBNET"
        ) from None
    if not network.is_private or network.prefixlen > 27:
        raise LabError(
            f"subnet {subnet!r} is not usable; expected a private IPv4 network of /27 or larger; "
            f"fix: pass --subnet such as {DEFAULT_SUBNET}"
        )
    return network


def node_name(lab: str, index: int) -> str:
    """Host name of the index-th node (1-based): also its machine and inventory name."""
    return f"{lab}{index}"


def node_address(subnet: str, index: int) -> str:
    return str(ipaddress.IPv4Network(subnet).network_address + FIRST_HOST_OCTET + index - 1)


def validate_count(count: int) -> int:
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"host count {count} is out of range; expected 1 to {MAX_HOSTS}; fix: scripts/lab up 3")
    return count


def plan_nodes(lab: str, subnet: str, count: int, gpu_args: list[str], known_profiles: list[str]) -> list[Node]:
    """The nodes of `up COUNT`, each with the GPU profile the arguments give it.

    `--gpu PROFILE` applies to every host; `--gpu HOST=PROFILE` to one host and wins.
    """
    validate_count(count)
    names = [node_name(lab, index) for index in range(1, count + 1)]
    everyone = NO_GPU_PROFILE
    per_host: dict[str, str] = {}
    for arg in gpu_args:
        host, sep, profile = arg.rpartition("=")
        if profile not in known_profiles:
            raise LabError(
                f"GPU profile {profile!r} is unknown; expected one of: {', '.join(known_profiles)}; "
                "fix: pass --gpu PROFILE or --gpu HOST=PROFILE"
            )
        if not sep:
            everyone = profile
        elif host in names:
            per_host[host] = profile
        else:
            raise LabError(
                f"--gpu names host {host!r}, which is not in this lab; expected one of: "
                f"{', '.join(names)}; fix: use a host name from that list"
            )
    return [
        Node(name=name, address=node_address(subnet, index), gpu_profile=per_host.get(name, everyone))
        for index, name in enumerate(names, start=1)
    ]


def network_unit(address: str, prefixlen: int, gateway: str) -> str:
    """systemd-networkd file giving a node its static address on the lab bridge."""
    return (
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={address}/{prefixlen}\nGateway={gateway}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )


def nspawn_command(
    node: Node,
    root: Path,
    bridge: str,
    network_file: Path,
    public_key: Path,
    standins: Path,
    keep_unit: bool,
    wheels: Path | None = None,
    venvs: Path | None = None,
) -> list[str]:
    """The systemd-nspawn command line that boots one node (see docs in scripts/lab)."""
    command = [
        "systemd-nspawn",
        "--boot",
        f"--directory={root}",
        f"--machine={node.name}",
        f"--hostname={node.name}",
        "--register=no",
        f"--network-bridge={bridge}",
        "--resolv-conf=copy-host",
        f"--bind-ro={network_file}:/etc/systemd/network/10-host0.network",
        f"--bind-ro={public_key}:/root/.ssh/authorized_keys",
        f"--bind-ro={public_key}:/home/ansible/.ssh/authorized_keys",
        f"--bind-ro={standins}:/opt/lab-standins",
        "--console=read-only",
    ]
    if wheels:
        # Local wheels pip cannot get from an index (the CPU build of torch) for pip inside the host.
        command.insert(-1, f"--bind-ro={wheels}:{LAB_WHEELS_MOUNT}")
    if venvs:
        # The lab's cached venvs at the same path (venvs are not relocatable): the Ollama
        # stand-in starts its engine from there.
        command.insert(-1, f"--bind-ro={venvs}:{venvs}")
    if keep_unit:
        command.insert(5, "--keep-unit")
    return command


def iptables_rules(spec: LabSpec) -> list[tuple[str, list[str]]]:
    """(table, rule) pairs that give the lab's hosts NAT to the package mirrors."""
    tag = ["-m", "comment", "--comment", spec.comment]
    return [
        ("nat", ["POSTROUTING", "-s", spec.subnet, "!", "-o", spec.bridge, "-j", "MASQUERADE", *tag]),
        ("filter", ["FORWARD", "-i", spec.bridge, "-j", "ACCEPT", *tag]),
        (
            "filter",
            ["FORWARD", "-o", spec.bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT", *tag],
        ),
    ]


def rules_to_delete(iptables_save_lines: list[str], comment: str) -> list[list[str]]:
    """`-D` argument lists for every rule in `iptables -S` output that carries our comment."""
    deletions = []
    for line in iptables_save_lines:
        if not line.startswith("-A ") or f"--comment {comment}" not in line.replace('"', ""):
            continue
        deletions.append(["-D", *line[3:].replace('"', "").split()])
    return deletions


def render_inventory(spec: LabSpec, private_key: Path) -> str:
    """YAML inventory of the lab's hosts, grouped as the playbooks expect."""
    lines = [
        f"# Generated by scripts/lab for lab {spec.name!r}; rewritten by every"
        " 'scripts/lab up' and 'scripts/lab inventory'.",
        "all:",
        "  children:",
        f"    {INVENTORY_GROUP}:",
        "      hosts:",
    ]
    for node in spec.nodes:
        lines += [
            f"        {node.name}:",
            f"          ansible_host: {node.address}",
            f"          lab_gpu_profile: {node.gpu_profile}",
        ]
        if node.gpu_profile == NO_GPU_PROFILE:
            # A lab host without a simulated GPU is a CPU development host, and says so.
            lines.append("          llm_accelerator: cpu")
    if not spec.nodes:
        lines[-1] = "      hosts: {}"
    lines += [
        "      vars:",
        "        ansible_user: ansible",
        "        ansible_become: true",
        f"        ansible_ssh_private_key_file: {private_key}",
        "        ansible_ssh_common_args: >-",
        "          -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "",
    ]
    return "\n".join(lines)


def apt_mirror(sources_text: str) -> str | None:
    """The first Debian mirror in a deb822 `.sources` file or a one-line `sources.list`."""
    for raw in sources_text.splitlines():
        line = raw.strip()
        if line.startswith("URIs:"):
            return line.split()[1]
        if line.startswith("deb "):
            parts = [part for part in line.split()[1:] if not part.startswith("[")]
            return parts[0] if parts else None
    return None


def recipe_key(parts: list[bytes]) -> str:
    """Short hash naming a cached image: any change in what built it gives a new key."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:12]


def check_free_space(path: Path, free_mib: int, minimum_mib: int) -> None:
    if free_mib < minimum_mib:
        raise LabError(
            f"only {free_mib} MiB free under {path}; expected at least {minimum_mib} MiB for the lab "
            "image and hosts; fix: free disk space, or set LAB_HOME to a larger file system"
        )
