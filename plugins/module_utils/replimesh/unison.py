"""One Unison session between a local root and the same root on a peer, and its outcome.

Unison runs in batch mode over SSH as the sync user; on the peer, the sync user's key
is forced to `replimesh serve`, which execs `unison -server`. Unison's text output is
parsed for what the round reports: files transferred, conflicts skipped, errors.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

from .config import Config

# Unison's exit codes (manual, "Exit code").
EXIT_OK, EXIT_SKIPPED, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2, 3
# What Unison says when another session holds the archives of this pair of replicas.
ARCHIVES_LOCKED = "the archives are locked"
LOCK_WAIT_S = 60

# Unison may put a progress display ("100%  00:00 ETA") before a line: search, not match.
_TRANSFER = re.compile(r"\[END\] (?:Copying|Updating file|Deleting) (.+?)\s*$")
_SKIPPED = re.compile(r"(?:^|\s)skipped: (.+?)(?: \([^()]*\))?\s*$")
_FAILED = re.compile(r"(?:^|\s)failed: (.+?)\s*$")


@dataclass
class Session:
    """What one Unison session did."""
    exit_code: int
    transferred: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str = ""
    timed_out: bool = False
    locked: bool = False  # another session held the archives: nothing was done


def command(cfg: Config, root: str, address: str) -> list[str]:
    """The argv of a Unison session: local root against the same path on the peer."""
    remote = f"ssh://{cfg.user}@{address}/{root}"  # ssh://u@h//abs/path
    ssh_args = f"-o ConnectTimeout={cfg.connect_timeout} -p {cfg.ssh_port}"
    return [cfg.unison, root, remote, "-batch", "-times", "-log=false",
            "-sshargs", ssh_args, "-ui", "text"]


def run_when_unlocked(cfg: Config, root: str, address: str, wait_s: float = LOCK_WAIT_S) -> Session:
    """Run a session; while another session holds the archives (two rounds meeting on the
    same replicas), try again after a short random pause, for at most wait_s seconds."""
    deadline = time.monotonic() + wait_s
    pause = 0.5
    while True:
        session = run(cfg, root, address)
        if not session.locked or time.monotonic() + pause > deadline:
            break
        time.sleep(random.uniform(pause / 2, pause))  # jitter: waiters do not retry in step
        pause = min(pause * 2, 8.0)
    if session.locked:
        session.error = (f"Unison's archives stayed locked by another session for {wait_s:g} s: "
                         "gave up (if no Unison runs on either node, a lock was left behind)")
    return session


def run(cfg: Config, root: str, address: str) -> Session:
    """Run one session, stopped after cfg.session_timeout seconds."""
    process = subprocess.Popen(command(cfg, root, address), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, errors="replace", start_new_session=True,
                               cwd="/", env=environment(cfg))
    try:
        output, _ = process.communicate(timeout=cfg.session_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # unison and its ssh child
        output, _ = process.communicate()
        session = parse(EXIT_FATAL, output)
        session.timed_out = True
        session.error = f"stopped after the session limit of {cfg.session_timeout} s"
        return session
    return parse(process.returncode, output)


def environment(cfg: Config) -> dict[str, str]:
    """Unison names its archives after the host name: pin it to the node's mesh name, so
    a changed container or DHCP host name never looks like a new replica."""
    return dict(os.environ, UNISONLOCALHOSTNAME=cfg.node)


def parse(exit_code: int, output: str) -> Session:
    session = Session(exit_code)
    lines = output.replace("\r", "\n").splitlines()
    for number, line in enumerate(lines):
        if ARCHIVES_LOCKED in line:
            session.locked = True
        if match := _TRANSFER.search(line):
            session.transferred.append(match.group(1))
        elif match := _SKIPPED.search(line):
            session.conflicts.append(match.group(1))
        elif match := _FAILED.search(line):
            session.failed.append(match.group(1))
        elif line.startswith("Fatal error:"):
            # Unison often puts the reason on the line after "Fatal error: ...:".
            reason = [line[len("Fatal error:"):].strip(), *lines[number + 1:number + 2]]
            session.error = " ".join(reason).strip()
    if exit_code not in (EXIT_OK, EXIT_SKIPPED) and not session.error:
        session.error = _last_words(output) or f"unison exited with status {exit_code}"
    return session


def _last_words(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""
