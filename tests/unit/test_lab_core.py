"""Unit tests of the lab's pure rules (scripts/lablib/core.py)."""

from pathlib import Path

import pytest
import yaml

from scripts.lablib.core import (
    DEFAULT_SUBNET,
    LabError,
    LabSpec,
    Node,
    apt_mirror,
    bridge_name,
    check_free_space,
    default_subnet,
    iptables_rules,
    network_unit,
    nspawn_command,
    plan_nodes,
    recipe_key,
    render_inventory,
    rules_to_delete,
    validate_name,
    validate_subnet,
)

PROFILES = ["none", "1x-L4-24GB", "driver-470"]


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
    assert group["vars"]["ansible_user"] == "ansible"
    assert group["vars"]["ansible_become"] is True
    assert group["vars"]["ansible_ssh_private_key_file"] == "/cache/keys/id_ed25519"
    assert "StrictHostKeyChecking=no" in group["vars"]["ansible_ssh_common_args"]


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
