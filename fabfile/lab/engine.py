"""The Docker engine under the lab: found, installed or started, never assumed running."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .errors import LabError
from .host import apt_install, is_root, run

DOCKERD_LOG = Path("/var/log/replimesh-dockerd.log")
ENGINE_DEADLINE_S = 60


def docker(*args: str, what: str | None = None, **options) -> str:
    """Run one docker CLI command and return its stdout (options as for host.run)."""
    return run(["docker", *args], what=what or f"docker {args[0]}", **options)


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


def ensure_engine() -> None:
    """Make sure a Docker engine answers: install docker.io, start dockerd, wait for it."""
    if engine_answers():
        return
    if not is_root():
        raise LabError("no Docker engine answers and this is not root: run the lab as root, "
                       "or start dockerd and give this user access to /var/run/docker.sock")
    if shutil.which("dockerd") is None:
        apt_install("docker.io")
        if engine_answers():  # the package's own service may have started it
            return
    _start_dockerd()
    deadline = time.monotonic() + ENGINE_DEADLINE_S
    while not engine_answers():
        if time.monotonic() > deadline:
            raise LabError(f"dockerd did not answer within {ENGINE_DEADLINE_S} s: "
                           f"read {DOCKERD_LOG} for why")
        time.sleep(0.5)


def _start_dockerd() -> None:
    if Path("/run/systemd/system").is_dir():
        run(["systemctl", "start", "docker"], what="systemctl start docker")
        return
    # No systemd (a container, a CI runner): run dockerd in its own session, so it
    # outlives this command, with its log where the error above points.
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(["dockerd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, env=dict(os.environ))
