"""Secrets: the one generator (llm_secret), the systemd EnvironmentFile= encoding of vllm.env, no
backups of secret files, and a static check that no task puts a secret on a command line or in
`environment:` (docs/security.md, "Secrets the toolkit generates")."""

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from llm_toolkit.host.llm_secret import SecretError, ensure, generate

from llm_toolkit.envfile import DotenvError, decode_systemd_value, encode_systemd_value, systemd_errors
from tests.ansible_plugins import ansible_filter

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = str(Path(sys.executable).parent / "ansible")


# --- the generator ---------------------------------------------------------------------------


def test_a_generated_secret_is_long_random_and_safe_unquoted():
    keys = {generate() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key), key


def test_a_weak_secret_is_refused():
    with pytest.raises(SecretError, match="too weak"):
        generate(8)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_made_once_root_only_and_then_left_alone(tmp_path):
    path = tmp_path / "secrets" / "vllm_api_key"
    first = ensure(str(path), uid=os.getuid(), gid=os.getgid())
    assert first["changed"] and first["created"] and not first["rotated"]
    assert path.read_text() == first["value"] + "\n"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    second = ensure(str(path), uid=os.getuid(), gid=os.getgid())
    assert second == {"changed": False, "created": False, "rotated": False, "value": first["value"]}


def test_rotation_replaces_the_secret_and_keeps_no_copy_of_the_old_one(tmp_path):
    path = tmp_path / "secrets" / "vllm_api_key"
    old = ensure(str(path), uid=os.getuid(), gid=os.getgid())["value"]
    rotated = ensure(str(path), rotate=True, uid=os.getuid(), gid=os.getgid())
    assert rotated["changed"] and rotated["rotated"] and rotated["value"] != old
    assert path.read_text().strip() == rotated["value"]
    assert [item.name for item in path.parent.iterdir()] == ["vllm_api_key"]
    assert not any(old in item.read_text() for item in path.parent.iterdir())


def test_loosened_modes_are_put_back(tmp_path):
    path = tmp_path / "secrets" / "key"
    value = ensure(str(path), uid=os.getuid(), gid=os.getgid())["value"]
    path.chmod(0o644)
    path.parent.chmod(0o755)
    again = ensure(str(path), uid=os.getuid(), gid=os.getgid())
    assert again["changed"] and again["value"] == value
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)


def test_check_mode_writes_nothing(tmp_path):
    path = tmp_path / "secrets" / "key"
    result = ensure(str(path), check_mode=True)
    assert result["changed"] and not path.parent.exists()


def test_a_reader_of_a_missing_secret_fails_naming_the_path_only(tmp_path):
    path = tmp_path / "secrets" / "key"
    with pytest.raises(SecretError, match=re.escape(str(path))):
        ensure(str(path), create=False)
    assert not path.exists()


def secret_module(args: dict, *options: str) -> tuple[int, dict, str]:
    result = subprocess.run(
        [ANSIBLE, "localhost", "-c", "local", "-m", "llm_secret", "-a", json.dumps(args), "-o", *options],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        check=False,
    )
    payload = result.stdout.split("=>", 1)[1].strip() if "=>" in result.stdout else "{}"
    return result.returncode, json.loads(payload), result.stdout + result.stderr


def test_the_module_is_idempotent_rotates_on_demand_and_returns_the_value_only_when_asked(tmp_path):
    path = tmp_path / "secrets" / "vllm_api_key"
    rc, first, _ = secret_module({"path": str(path)})
    assert rc == 0 and first["changed"] and first["created"]
    assert "value" not in first
    key = path.read_text().strip()
    rc, again, output = secret_module({"path": str(path)})
    assert rc == 0 and not again["changed"]
    assert key not in output
    rc, checked, _ = secret_module({"path": str(path), "rotate": True}, "--check")
    assert rc == 0 and checked["changed"] and path.read_text().strip() == key
    rc, rotated, _ = secret_module({"path": str(path), "rotate": True, "return_value": True})
    assert rc == 0 and rotated["rotated"] and rotated["value"] == path.read_text().strip() != key
    rc, failed, output = secret_module({"path": str(tmp_path / "none" / "key"), "create": False})
    assert rc != 0 and "no secret in" in failed["msg"]


# --- vllm.env for systemd's EnvironmentFile= --------------------------------------------------

TRICKY = [
    "plain-key_0123",
    'with "double" quotes',
    "with 'single' quotes",
    "back\\slash\\\\es\\",
    "  leading and trailing spaces  ",
    "100% of %n and %%",
    "$HOME ${HOME} `id` $(id)",
    "# not a comment; semi;colon",
    "tab\there",
    "ünïcode ✓",
    "",
]


@pytest.mark.parametrize("value", TRICKY)
def test_a_value_round_trips_through_the_environment_file_encoding(value):
    assert decode_systemd_value(encode_systemd_value("VLLM_API_KEY", value)) == value


def test_a_safe_key_is_written_bare_so_the_file_stays_greppable():
    assert encode_systemd_value("VLLM_API_KEY", "canary-key-7f3a9c") == "canary-key-7f3a9c"
    assert encode_systemd_value("VLLM_API_KEY", generate()).startswith(
        tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    )


@pytest.mark.parametrize("bad", ["line\nbreak", "carriage\rreturn", "nul\x00byte", "bell\x07"])
def test_a_newline_or_control_character_is_refused_by_key_never_by_value(bad):
    secret_part = "s3cr3t-part"
    with pytest.raises(DotenvError) as refused:
        encode_systemd_value("VLLM_API_KEY", secret_part + bad)
    assert "VLLM_API_KEY" in str(refused.value)
    assert secret_part not in str(refused.value)
    errors = ansible_filter("llm_systemd_env_errors")({"VLLM_API_KEY": secret_part + bad})
    assert len(errors) == 1 and "VLLM_API_KEY" in errors[0] and secret_part not in errors[0]


def test_the_filter_writes_the_line_the_template_uses():
    assert ansible_filter("llm_systemd_env")("VLLM_API_KEY", 'a "b"') == 'VLLM_API_KEY="a \\"b\\""'
    assert systemd_errors({"VLLM_API_KEY": "ok"}) == []


# --- the vllm role refuses a key it cannot write, naming the variable only ----------------------


def input_checks(role: str, extra: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i",
            "localhost,",
            "tests/playbooks/input_checks.yml",
            "-e",
            json.dumps({"guard_role": role, "ansible_python_interpreter": sys.executable, **extra}),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        check=False,
    )


def test_the_vllm_role_refuses_a_key_with_a_newline_naming_the_variable_not_the_value():
    result = input_checks("vllm", {"vllm_api_key": "first-half-XYZ\nsecond-half"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "localhost: value of VLLM_API_KEY holds a newline" in output
    assert "(variable vllm_api_key)" in output
    assert "first-half-XYZ" not in output and "second-half" not in output


# --- no backups of secret files ---------------------------------------------------------------


def task_files() -> list[Path]:
    return sorted(
        [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("roles/*/handlers/*.yml"), *REPO.glob("playbooks/*.yml")]
    )


def walk(tasks) -> list[dict]:
    """Every task in a task list or a playbook, blocks and plays included."""
    found = []
    for entry in tasks or []:
        if not isinstance(entry, dict):
            continue
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            found += walk(entry.get(key))
        if not any(key in entry for key in ("block", "hosts", "import_playbook")):
            found.append(entry)
    return found


def all_tasks() -> list[tuple[str, dict]]:
    tasks = []
    for path in task_files():
        for task in walk(yaml.safe_load(path.read_text())):
            tasks.append((str(path.relative_to(REPO)), task))
    return tasks


def test_the_walk_sees_tasks_inside_blocks():
    names = [task.get("name") for _, task in all_tasks()]
    assert "write | Ensure the .env is in place" in names  # included from a block's include
    assert "service | Ensure the generated API key exists (when vllm_api_key is empty)" in names
    assert len(names) > 150


def backed_up_secret_files(tasks) -> list[str]:
    bad = []
    for where, task in tasks:
        for module in ("ansible.builtin.copy", "ansible.builtin.template", "copy", "template"):
            args = task.get(module)
            if isinstance(args, dict) and args.get("backup") and (task.get("no_log") or secret_refs(args)):
                bad.append(f"{where}: {task.get('name')}")
    return bad


def test_no_secret_bearing_file_is_backed_up():
    assert backed_up_secret_files(all_tasks()) == []
    planted = {
        "name": "bad",
        "ansible.builtin.copy": {"dest": "/x/.env", "content": "{{ x }}", "backup": True},
        "no_log": True,
    }
    assert backed_up_secret_files([("planted.yml", planted)]) == ["planted.yml: bad"]


def test_the_cleanup_finds_ansible_backup_names_and_nothing_else():
    render = yaml.safe_load((REPO / "roles/llm_app_env/tasks/write.yml").read_text())
    find = next(task for task in render if "ansible.builtin.find" in task)["ansible.builtin.find"]
    pattern = Templar(loader=DataLoader(), variables={"llm_app_env_path": "/srv/app/.env"}).template(
        trust_as_template(find["patterns"])
    )
    # Ansible's own naming (AnsibleModule.backup_local): <file>.<pid>.<YYYY-mm-dd@HH:MM:SS>~
    backup = f".env.12345.{time.strftime('%Y-%m-%d@%H:%M:%S')}~"
    assert re.match(pattern, backup)
    for other in (".env", ".env.local", ".env.local~", "x.env.1.2026-01-01@00:00:00~"):
        assert not re.match(pattern, other), other


# --- no secret on a command line or in environment: -------------------------------------------

SECRET_NAME = re.compile(r"\w*(api_key|token|password|secret)\w*", re.I)
JINJA = re.compile(r"{{.*?}}|{%.*?%}", re.S)
COMMANDS = ("command", "shell", "script", "raw")


def secret_registers(tasks) -> set[str]:
    """Variables that hold a secret read from a file: what llm_secret or slurp registered."""
    names = set()
    for _, task in tasks:
        if any(key.split(".")[-1] in ("llm_secret", "slurp") for key in task) and task.get("register"):
            names.add(task["register"])
    return names


def secret_refs(value, registered: frozenset = frozenset()) -> list[str]:
    """Secret variables named inside the Jinja expressions of value (any nesting of dicts and lists)."""
    text = json.dumps(value) if not isinstance(value, str) else value
    found = []
    for expression in JINJA.findall(text):
        found += [match.group(0) for match in SECRET_NAME.finditer(expression)]
        found += [name for name in registered if re.search(rf"\b{re.escape(name)}\b", expression)]
    return found


def exposed_secrets(tasks) -> list[str]:
    registered = frozenset(secret_registers(tasks))
    bad = []
    for where, task in tasks:
        label = f"{where}: {task.get('name')}"
        for ref in secret_refs(task.get("environment"), registered):
            bad.append(f"{label}: environment has {ref}")
        for key, args in task.items():
            if key.split(".")[-1] not in COMMANDS:
                continue
            shown = {name: value for name, value in args.items() if name != "stdin"} if isinstance(args, dict) else args
            shown = [shown, {name: value for name, value in (task.get("args") or {}).items() if name != "stdin"}]
            for ref in secret_refs(shown, registered):
                bad.append(f"{label}: command line has {ref}")
    return bad


def test_no_task_puts_a_secret_in_its_environment_or_on_a_command_line():
    assert exposed_secrets(all_tasks()) == []


@pytest.mark.parametrize(
    "planted",
    [
        {"name": "env", "ansible.builtin.command": {"argv": ["x"]}, "environment": {"HF_TOKEN": "{{ vllm_hf_token }}"}},
        {"name": "argv", "ansible.builtin.command": {"argv": ["curl", "-H", "{{ 'Bearer ' ~ vllm_api_key }}"]}},
        {"name": "shell", "ansible.builtin.shell": "curl -u admin:{{ db_password }} http://x"},
        {"name": "cmd", "command": {"cmd": "run --key {{ __llm_smoke_vllm_api_key }}"}},
        {"name": "raw", "ansible.builtin.raw": "echo {{ gateway_secret }}"},
        {"name": "read", "llm_secret": {"path": "/etc/k"}, "register": "read_key", "no_log": True},
        {"name": "file var", "ansible.builtin.command": {"argv": ["x", "{{ read_key.value }}"]}},
    ],
    ids=lambda task: task["name"],
)
def test_the_static_check_fails_on_a_planted_bad_task(planted):
    tasks = [("planted.yml", planted)]
    if planted["name"] == "file var":
        tasks.insert(0, ("planted.yml", {"name": "read", "llm_secret": {"path": "/k"}, "register": "read_key"}))
    if planted["name"] == "read":
        assert exposed_secrets(tasks) == []  # reading the key is fine; using it on argv is not
        return
    assert exposed_secrets(tasks), planted


def test_stdin_is_the_allowed_way_to_hand_a_key_to_a_command():
    task = {"name": "ok", "ansible.builtin.command": {"argv": ["x"], "stdin": "{{ vllm_api_key }}"}, "no_log": True}
    assert exposed_secrets([("ok.yml", task)]) == []


def exec_start_secrets(text: str) -> list[str]:
    return [ref for line in text.splitlines() if line.startswith("ExecStart") for ref in secret_refs(line)]


def test_no_unit_template_starts_a_process_with_a_secret_on_its_command_line():
    templates = [*REPO.glob("roles/*/templates/*.j2"), *REPO.glob("templates/*.j2")]
    assert templates
    assert {str(path): exec_start_secrets(path.read_text()) for path in templates} == {
        str(path): [] for path in templates
    }
    assert exec_start_secrets("ExecStart=/bin/vllm serve --api-key {{ vllm_api_key }}") == ["vllm_api_key"]


def test_every_task_that_returns_a_generated_secret_runs_under_no_log():
    for where, task in all_tasks():
        args = task.get("llm_secret")
        if isinstance(args, dict) and args.get("return_value"):
            assert task.get("no_log") is True, f"{where}: {task.get('name')}"
