"""The golden root file system the lab's hosts boot from (Debian with systemd as PID 1).

The image is cached under $LAB_HOME/images, keyed by a hash of this file (the recipe),
the suite, the host's apt sources and its extra CA certificates: changing any of them
builds a new image, and an unchanged recipe reuses the cached one in no time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import system
from .core import LabError, apt_mirror, overlay_lower_dirs, recipe_key

SUITE = "bookworm"
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "iproute2",
    "sudo",
    "ca-certificates",
    "libnss-myhostname",
]
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_SOURCES = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]

# Runs inside the new root (chroot) once debootstrap is done.
CONFIGURE_SCRIPT = r"""
set -eu
: > /etc/machine-id
# dbus made a machine id of its own, which systemd would give every host; each host makes its own.
ln -sf /etc/machine-id /var/lib/dbus/machine-id
rm -f /etc/hostname
echo 'LANG=C.UTF-8' > /etc/default/locale
update-ca-certificates >/dev/null
systemctl enable systemd-networkd.service systemd-networkd-wait-online.service >/dev/null 2>&1
# Unattended apt timers would take the dpkg lock in the middle of a test run.
systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1
useradd --create-home --shell /bin/bash ansible
install -d -m 0700 -o ansible -g ansible /home/ansible/.ssh
install -d -m 0700 /root/.ssh
echo 'ansible ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/ansible
chmod 0440 /etc/sudoers.d/ansible
printf '%s\n' 'PasswordAuthentication no' 'PermitRootLogin prohibit-password' 'UseDNS no' \
  > /etc/ssh/sshd_config.d/lab.conf
# Every host gets its own ssh host keys at first boot.
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
printf '%s\n' '[Service]' 'ExecStartPre=' 'ExecStartPre=/usr/bin/ssh-keygen -A' \
  'ExecStartPre=/usr/sbin/sshd -t' > /etc/systemd/system/ssh.service.d/lab-host-keys.conf
printf '%s\n' 'Acquire::GzipIndexes "true";' 'Acquire::CompressionTypes::Order:: "gz";' \
  > /etc/apt/apt.conf.d/90lab-compressed-indexes
# Fresh apt lists stay in the image: the apt module's cache_valid_time relies on them.
apt-get -qq update
apt-get -qq clean
"""


def host_sources() -> Path:
    for candidate in HOST_SOURCES:
        if candidate.is_file() and apt_mirror(candidate.read_text()):
            return candidate
    raise LabError(
        "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; "
        "expected a deb822 'URIs:' line or a 'deb' line; fix: configure apt on this machine first"
    )


def host_ca_files() -> list[Path]:
    return sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []


def image_key(suite: str = SUITE) -> str:
    sources = host_sources()
    parts = [Path(__file__).read_bytes(), suite.encode(), sources.read_bytes()]
    parts += [ca.name.encode() + ca.read_bytes() for ca in host_ca_files()]
    return recipe_key(parts)


def image_path(lab_home: Path, suite: str = SUITE) -> Path:
    return lab_home / "images" / f"{suite}-{image_key(suite)}"


def build_image(lab_home: Path, suite: str = SUITE, log=print) -> Path:
    """Build the image unless the cached one for this recipe exists; return its path."""
    target = image_path(lab_home, suite)
    if (target / "usr/lib/systemd/systemd").exists():
        return target
    with system.shared_lock(lab_home):  # another lab may be building it right now
        if not (target / "usr/lib/systemd/systemd").exists():
            _build_image(lab_home, target, suite, log)
    return target


def _build_image(lab_home: Path, target: Path, suite: str, log) -> None:
    sources = host_sources()
    mirror = apt_mirror(sources.read_text())
    work = target.with_name(target.name + ".tmp")
    if work.exists():
        shutil.rmtree(work)
    debs = lab_home / "cache" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    log(f"building lab image {target.name} from {mirror} (about 70 s, cached afterwards)")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs}",
            f"--include={','.join(PACKAGES)}",
            suite,
            str(work),
            mirror,
        ],
        "debootstrap",
    )
    for ca in host_ca_files():
        shutil.copy2(ca, work / "usr/local/share/ca-certificates" / ca.name)
    sources_dest = work / "etc/apt/sources.list.d" / sources.name
    shutil.copy2(sources, sources_dest)
    if sources.name != "sources.list":
        (work / "etc/apt/sources.list").unlink(missing_ok=True)
    shutil.copy2("/etc/resolv.conf", work / "etc/resolv.conf")
    _run(["chroot", str(work), "/bin/sh", "-c", CONFIGURE_SCRIPT], "image configuration")
    (work / "etc/resolv.conf").unlink()
    work.rename(target)
    remove_unused_images(target)


def remove_unused_images(keep: Path) -> None:
    """Drop images of older recipes that no running host uses, so the cache does not grow."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        in_use = overlay_lower_dirs(mountinfo.read())
    for image in keep.parent.iterdir():
        if image != keep and image.is_dir() and not image.name.endswith(".tmp") and str(image) not in in_use:
            shutil.rmtree(image)


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise LabError(f"{what} failed with exit code {result.returncode}: {tail}")
