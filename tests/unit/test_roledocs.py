"""Role READMEs and sample inventory files are generated (llm_toolkit.roledocs, scripts/docs.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_toolkit import roledocs
from llm_toolkit.roledocs import (
    Role,
    RoleDocsError,
    Variable,
    comment_lines,
    load_role,
    markdown_paragraphs,
    render_readme,
    render_sample,
    sample_values,
    stale_files,
    value_lines,
    variable_rows,
)

REPO = Path(__file__).resolve().parents[2]
FIX = "run .venv/bin/python scripts/docs.py and commit what it writes"


def test_the_generated_files_are_up_to_date():
    stale = stale_files(REPO)
    assert not stale, f"out of date: {', '.join(path.as_posix() for path in stale)}; fix: {FIX}"


def test_every_role_has_a_readme_and_every_spec_a_sample_file():
    for role_dir in roledocs.role_dirs(REPO):
        assert (role_dir / "README.md").is_file(), f"{role_dir.name}: {FIX}"
        if (role_dir / "meta" / "argument_specs.yml").is_file():
            assert (REPO / roledocs.sample_path(role_dir.name)).is_file(), f"{role_dir.name}: {FIX}"


# --- rendering ---------------------------------------------------------------------------------


def loads(lines: list[str]):
    return yaml.safe_load("\n".join(lines))


def test_a_short_list_default_stays_on_one_line():
    assert value_lines("pkgs", ["acl", "curl"]) == ["pkgs: [acl, curl]"]
    assert value_lines("pkgs", []) == ["pkgs: []"]


def test_a_long_list_default_becomes_a_block_that_reads_back_the_same():
    items = [f"mixtral:8x7b-instruct-v0.1-q4_K_M-{index}" for index in range(4)]
    lines = value_lines("models", items)
    assert lines[0] == "models:"
    assert all(line.startswith("  - ") for line in lines[1:])
    assert loads(lines) == {"models": items}


def test_a_null_default_is_written_null():
    assert value_lines("size", None) == ["size: null"]
    row = variable_rows((Variable("size", type="int", default=None, has_default=True, description=("d",)),))[0]
    assert "| `null` |" in row


def test_a_variable_without_a_default_has_an_empty_default_cell():
    row = variable_rows((Variable("token", description=("d",), required=True),))[0]
    assert row == "| `token` | str |  | d |  | yes |"


@pytest.mark.parametrize(
    "value",
    [
        "{{ llm_accelerator | default('gpu') }}",
        "0.32.15",
        "0.33",
        "127.0.0.1",
        "",
        "yes",
        "a: b",
        " leading",
        "it's # not a comment",
        "été",
        "line\nbreak",
        "x" * 150,
        "ollama-linux-{{ arch }}.{{ 'tar.zst' if version is version('0.14.0', '>=') else 'tgz' }} " * 2,
        1.2,
        1e-05,
        32,
        True,
        {},
        {"OLLAMA_SCHED_SPREAD": "1", "nested": {"list": [1, "two"]}},
        [{"name": "a"}, "b"],
        ["a,b", "c]d", "true"],
    ],
)
def test_every_default_reads_back_as_the_same_value(value):
    lines = value_lines("var", value)
    loaded = loads(lines)
    assert loaded == {"var": value}
    assert type(loaded["var"]) is type(value)
    assert all(len(line) + 2 <= roledocs.LINE_LIMIT for line in lines) or "\n" in str(value)


def test_strings_yaml_or_a_reader_would_misread_are_quoted():
    assert value_lines("v", "0.32.15") == ['v: "0.32.15"']
    assert value_lines("v", "{{ x }}") == ['v: "{{ x }}"']
    assert value_lines("v", "/opt/ollama") == ["v: /opt/ollama"]
    assert value_lines("v", "30m") == ["v: 30m"]


def test_a_long_string_is_folded_to_fit_the_line_limit():
    value = " ".join(["word"] * 40)
    lines = value_lines("v", value)
    assert lines[0] == "v: >-"
    assert loads(lines) == {"v": value}


def test_a_multi_line_description_becomes_wrapped_comments_and_br_in_the_table():
    paragraphs = (
        "Debian packages every host needs; extend them with the extra list rather than replacing this one, "
        "which the role installs on every host.",
        "Why each:\n  acl       become_user to the service users\n  curl      health checks by hand",
    )
    lines = comment_lines(paragraphs)
    assert all(line == "#" or line.startswith("# ") for line in lines)
    assert all(len(line) <= roledocs.WRAP_WIDTH for line in lines)
    assert "#" in lines  # the paragraphs are apart
    assert "#   acl       become_user to the service users" in lines  # hand-made layout kept
    cell = markdown_paragraphs(paragraphs)
    assert "\n" not in cell
    assert "rather than replacing this one, which" in cell
    assert "<br><br>Why each:<br>acl       become_user" in cell


def test_choices_and_pipes_and_angle_brackets_are_safe_in_the_table():
    variable = Variable(
        "fmt",
        default="{{ x | default('awq') }}",
        has_default=True,
        description=("Weights format; see <dir>/`<file>`.",),
        choices=("fp16", "awq", "gptq"),
    )
    row = variable_rows((variable,))[0]
    assert "| `fp16`, `awq`, `gptq` |" in row
    assert "`\"{{ x \\| default('awq') }}\"`" in row
    assert "see &lt;dir>/`<file>`." in row


def test_suboptions_get_their_own_rows():
    child = Variable("parent.child", type="int", default=1, has_default=True, description=("c",))
    parent = Variable(
        "parent", type="dict", default={"child": 1}, has_default=True, description=("p",), suboptions=(child,)
    )
    rows = variable_rows((parent,))
    assert [row.split(" | ")[0] for row in rows] == ["| `parent`", "| `parent.child`"]


DEMO_ROLE = Role(
    name="demo",
    description="A demo role.",
    summary=("What the spec says it does.",),
    entry_points={
        "main": (
            Variable("demo_enabled", type="bool", default=True, has_default=True, description=("Master switch.",)),
            Variable(
                "demo_packages",
                type="list",
                elements="str",
                default=["acl", "curl"],
                has_default=True,
                description=("Packages.", "Second paragraph."),
            ),
            Variable("demo_size", type="int", default=None, has_default=True, description=("null: automatic.",)),
            Variable(
                "demo_format",
                default="awq",
                has_default=True,
                choices=("fp16", "awq"),
                description=("Format: demo_format: fp16 would be read as a key if it started a line.",),
            ),
        ),
        "extra": (Variable("demo_extra", default="x", has_default=True, description=("Only for tasks_from.",)),),
    },
)


def test_the_sample_file_uncommented_gives_every_default():
    text = render_sample(DEMO_ROLE)
    assert text.startswith("---\n# demo: A demo role.\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert sample_values(text) == {
        "demo_enabled": True,
        "demo_packages": ["acl", "curl"],
        "demo_size": None,
        "demo_format": "awq",
        "demo_extra": "x",
    }
    assert "# Packages.\n#\n# Second paragraph.\n# demo_packages: [acl, curl]\n" in text
    assert "tasks_from: extra" in text
    assert not any(line.endswith(" ") for line in text.splitlines())


def test_the_readme_has_the_title_description_what_it_does_and_the_table():
    text = render_readme(DEMO_ROLE)
    lines = text.splitlines()
    assert lines[1:4] == ["# demo", "", "A demo role."]
    assert "## What it does\n\nWhat the spec says it does.\n" in text
    assert "| name | type | default | description | choices | required |" in text
    assert "| `demo_packages` | list of str | `[acl, curl]` | Packages.<br><br>Second paragraph. |  | no |" in text
    assert "### Entry point `extra`" in text
    intro = render_readme(Role(**{**DEMO_ROLE.__dict__, "intro": "Hand-written intro."}))
    assert "## What it does\n\nHand-written intro.\n" in intro
    assert "What the spec says" not in intro


def test_a_role_without_an_argument_spec_gets_a_readme_and_no_sample(tmp_path):
    role = make_role(tmp_path, "bare", spec=None)
    loaded = load_role(role)
    assert not loaded.has_spec
    assert "documents no variables" in render_readme(loaded)
    files = roledocs.expected_files(tmp_path)
    assert set(files) == {Path("roles/bare/README.md")}


# --- the command -------------------------------------------------------------------------------

SPEC = {
    "argument_specs": {
        "main": {
            "short_description": "Short.",
            "description": ["Does things."],
            "options": {
                "demo_list": {"type": "list", "elements": "str", "default": ["a"], "description": "A list."},
                "demo_port": {"type": "int", "default": 8000, "description": ["Port.", "Second."]},
            },
        }
    }
}


def make_role(root: Path, name: str, spec=SPEC, intro: str | None = None) -> Path:
    meta = root / "roles" / name / "meta"
    meta.mkdir(parents=True)
    (meta / "main.yml").write_text(yaml.safe_dump({"galaxy_info": {"description": f"The {name} role."}}))
    if spec is not None:
        (meta / "argument_specs.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if intro is not None:
        (meta / "intro.md").write_text(intro)
    return root / "roles" / name


def run_docs(root: Path, *args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python_flags, str(REPO / "scripts" / "docs.py"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_names_the_stale_files_writes_nothing_and_passes_after_a_run(tmp_path):
    make_role(tmp_path, "demo", intro="Intro.\n")
    checked = run_docs(tmp_path, "--check")
    assert checked.returncode == 1, checked
    assert checked.stdout.splitlines() == [
        "stale: inventory/sample/group_vars/llm_servers/demo.yml",
        "stale: roles/demo/README.md",
    ]
    assert "scripts/docs.py" in checked.stderr
    assert not (tmp_path / "roles" / "demo" / "README.md").exists()

    written = run_docs(tmp_path)
    assert written.returncode == 0, written
    first = {path: (tmp_path / path).read_text() for path in roledocs.expected_files(tmp_path)}
    assert run_docs(tmp_path).stdout.strip() == "0 written, 0 removed, 2 unchanged"  # deterministic
    assert {path: (tmp_path / path).read_text() for path in first} == first
    assert run_docs(tmp_path, "--check").returncode == 0

    readme = tmp_path / "roles" / "demo" / "README.md"
    readme.write_text(readme.read_text() + "hand edit\n")
    again = run_docs(tmp_path, "--check")
    assert (again.returncode, again.stdout) == (1, "stale: roles/demo/README.md\n")


def test_a_removed_role_leaves_a_stale_sample_that_a_run_removes(tmp_path):
    make_role(tmp_path, "demo")
    make_role(tmp_path, "gone")
    run_docs(tmp_path)
    (tmp_path / "roles" / "gone" / "meta" / "argument_specs.yml").unlink()
    assert stale_files(tmp_path) == [
        Path("inventory/sample/group_vars/llm_servers/gone.yml"),
        Path("roles/gone/README.md"),
    ]
    result = run_docs(tmp_path)
    assert "removed inventory/sample/group_vars/llm_servers/gone.yml" in result.stdout
    assert not stale_files(tmp_path)


def test_bad_metadata_fails_in_one_line_naming_the_file(tmp_path):
    spec = {"argument_specs": {"main": {"options": {"demo_x": {"type": "str", "default": ""}}}}}
    make_role(tmp_path, "demo", spec=spec)
    result = run_docs(tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "argument_specs.yml: option demo_x has no description" in result.stderr
    with pytest.raises(RoleDocsError):
        load_role(tmp_path / "roles" / "demo")


def test_jinja_in_a_description_is_refused(tmp_path):
    """Ansible templates the whole argument spec before validating (ansible-core 2.19: "Finalization of
    task args for 'ansible.builtin.validate_argument_spec' failed: ... 'vault_x' is undefined")."""
    option = {"type": "str", "default": "", "description": 'Keep it in a vault: demo_x: "{{ vault_x }}".'}
    make_role(tmp_path, "demo", spec={"argument_specs": {"main": {"options": {"demo_x": option}}}})
    with pytest.raises(RoleDocsError, match="description of demo_x contains Jinja"):
        load_role(tmp_path / "roles" / "demo")


def test_without_the_package_the_command_says_to_run_make_venv(tmp_path):
    result = run_docs(tmp_path, "--check", python_flags=("-I", "-S"))  # no site-packages: no llm_toolkit
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "make venv" in result.stderr
    assert "Traceback" not in result.stderr
