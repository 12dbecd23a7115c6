"""The lab node image: Debian minbase from debootstrap, imported into Docker, cached by tag.

No registry is reachable, so the image is built from Debian packages on first use and
kept under IMAGE; a label holds a digest of the recipe (this file and node-rootfs/), so
a changed recipe rebuilds it and an unchanged one never does.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .engine import docker
from .errors import LabError
from .host import apt_install, run

IMAGE = "replimesh/node:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
OVERLAY = Path(__file__).with_name("node-rootfs")
RECIPE_LABEL = "replimesh.recipe"
BUILD_TIMEOUT_S = 1200

# A small Debian server, as the roles will meet it on real hosts. Not unison:
# the replimesh_unison role installs that.
PACKAGES = (
    "openssh-server", "openssh-client", "python3", "python3-apt", "cron", "logrotate",
    "sudo", "iproute2", "iptables", "iputils-ping", "procps", "netbase",
    "ca-certificates", "less", "gnupg",
)


def recipe_digest() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(OVERLAY.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(OVERLAY)).encode())
            digest.update(oct(path.stat().st_mode & 0o777).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def image_is_current() -> bool:
    probe = subprocess.run(
        ["docker", "image", "inspect", "--format",
         f'{{{{ index .Config.Labels "{RECIPE_LABEL}" }}}}', IMAGE],
        capture_output=True, text=True, check=False)
    return probe.returncode == 0 and probe.stdout.strip() == recipe_digest()


def ensure_image(log=print) -> None:
    if image_is_current():
        return
    mirror = os.environ.get("REPLIMESH_LAB_MIRROR", DEFAULT_MIRROR)
    log(f"building {IMAGE} with debootstrap from {mirror} (once; about 2 minutes)")
    build_image(mirror)


def build_image(mirror: str) -> None:
    apt_install("debootstrap", "debian-archive-keyring")
    with tempfile.TemporaryDirectory(prefix="replimesh-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        try:
            run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 SUITE, str(rootfs), mirror], timeout=BUILD_TIMEOUT_S, what="debootstrap")
        except LabError as error:
            raise LabError(f"{error} (is {mirror} reachable? set REPLIMESH_LAB_MIRROR "
                           "to a Debian mirror that is)") from None
        customize(rootfs, mirror)
        _import(rootfs)


def customize(rootfs: Path, mirror: str) -> None:
    """Turn a debootstrap tree into a node image: our files in, per-host state out."""
    shutil.copytree(OVERLAY, rootfs, dirs_exist_ok=True, symlinks=True)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(apt_sources(mirror))
    # Per-host identity is made on each node's first boot, never shared through the image.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")
    # pam_loginuid cannot write /proc/self/loginuid in a container; "required" would
    # refuse every ssh login and every cron job.
    for service in ("sshd", "cron"):
        pam = rootfs / "etc/pam.d" / service
        pam.write_text(re.sub(r"(?m)^(session\s+)required(\s+pam_loginuid\.so)",
                              r"\1optional\2", pam.read_text()))
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()
    # No package lists, and dated as old: apt users (roles' cache_valid_time) update first.
    os.utime(rootfs / "var/lib/apt/lists", (0, 0))


def apt_sources(mirror: str) -> str:
    mirror = mirror.rstrip("/")
    return (f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {mirror}-security\nSuites: {SUITE}-security\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def _import(rootfs: Path) -> None:
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                           stdout=subprocess.PIPE)
    try:
        docker("import",
               "--change", 'CMD ["/usr/local/sbin/replimesh-lab-init"]',
               "--change", f"LABEL {RECIPE_LABEL}={recipe_digest()}",
               "-", IMAGE, timeout=BUILD_TIMEOUT_S, what="docker import",
               stdin=tar.stdout)
    finally:
        tar.stdout.close()
        tar.wait()
