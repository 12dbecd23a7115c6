"""Programs on the controller: run them, and install the missing ones from Debian."""

from __future__ import annotations

import os
import shutil
import subprocess

from .errors import LabError


def run(argv: list[str], *, input: str | None = None, stdin=None,
        timeout: float | None = 120, what: str | None = None) -> str:
    """Run argv (never through a shell) and return its stdout; LabError on failure."""
    feed = {"input": input} if stdin is None else {"stdin": stdin}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, **feed)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{what or argv[0]} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit status {done.returncode}"
        raise LabError(f"{what or ' '.join(argv[:3])} failed: {last}")
    return done.stdout


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(*packages: str) -> None:
    """Install Debian packages that are missing (root only: the lab is for a root shell)."""
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    if not is_root():
        raise LabError(f"{', '.join(missing)} missing and this is not root: "
                       f"run as root, or apt-get install {' '.join(missing)}")
    if shutil.which("apt-get") is None:
        raise LabError(f"{', '.join(missing)} missing and this host has no apt-get: "
                       "install them by hand (the lab expects Debian or Ubuntu)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    # A fresh machine has no package lists: update once, only when the install needs it.
    if subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise LabError(f"apt-get install {' '.join(missing)} failed: {last}")


def _dpkg_installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.endswith("install ok installed")
