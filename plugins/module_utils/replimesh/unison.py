"""One Unison session between a local root and the same root on a peer, and its outcome.

Unison runs in batch mode over SSH as the sync user; on the peer, the sync user's key
is forced to `replimesh serve`, which takes the lock of the replica named in the server
command and runs `unison -server`. Unison's text output is parsed for what the round
reports: files transferred, changes that came in, conflicts skipped, errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass, field

from . import children, peer_ssh
from .config import Config
from .replica import BACKUP_DIR

# Unison's exit codes (manual, "Exit code").
EXIT_OK, EXIT_SKIPPED, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2, 3
# The server command a session asks for: `replimesh-replica ROOT -server`, so that the
# peer's `replimesh serve` knows which replica to lock.
REPLICA_SERVER = "replimesh-replica"
# What `replimesh serve` prints on the peer when it turns a session down.
BUSY = "replimesh: busy: "
REFUSED = "replimesh: refused: "
# Under cfg.unison_dir, one folder per peer: the archives of that pair.
PAIRS = "pairs"
# What Unison says when the two sides run releases that cannot talk to each other.
VERSION_SKEW = "unexpected header"

# Unison may put a progress display ("100%  00:00 ETA") before a line: search, not match.
_TRANSFER = re.compile(r"\[END\] (?:Copying|Updating file|Deleting) (.+?)\s*$")
_SKIPPED = re.compile(r"(?:^|\s)skipped: (.+?)(?: \([^()]*\))?\s*$")
_FAILED = re.compile(r"(?:^|\s)failed: (.+?)\s*$")
# A reconciliation line whose arrow points at the local replica (the first root):
# "         <---- new file   b.txt", "changed  <==== changed    c.txt" (forced by -prefer).
_INCOMING = re.compile(r"^[a-z ]*<(?:----|====|-M->)\s")
# Unison's own guard (confirmbigdel): in batch mode it stops the whole session.
_EMPTIED = "completely emptied"


@dataclass
class Session:
    """What one Unison session did."""
    exit_code: int
    transferred: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str = ""
    timed_out: bool = False
    incoming: int = 0     # changes that came into the local replica
    busy: bool = False    # the peer's replica was held by another session: nothing done


def command(cfg: Config, root: str, address: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The argv of a Unison session: local root against the same path on the peer."""
    remote = f"ssh://{cfg.user}@{address}/{root}"  # ssh://u@h//abs/path
    return [cfg.unison, root, remote, "-batch", "-times", "-log=false",
            "-sshargs", " ".join(peer_ssh.options(cfg, address)),  # split on spaces
            "-ui", "text",
            "-servercmd", shlex.join([REPLICA_SERVER, root]),
            # Both replicas' replimesh locks are held for the whole session, so a Unison
            # lock file found now was left by a session that was killed.
            "-ignorelocks",
            # What a sync deletes or overwrites moves to the root's backup area, which
            # itself is never synced.
            "-backup", "Name *", "-backuploc", "central",
            "-backupdir", os.path.join(root, BACKUP_DIR), "-maxbackups", "100",
            "-ignore", f"Path {BACKUP_DIR}", *extra]


def run(cfg: Config, peer: str, root: str, address: str, extra: tuple[str, ...] = (),
        lock: int | None = None) -> Session:
    """Run one session with peer, stopped after cfg.session_timeout seconds. lock: the descriptor
    of the replica's lock, which Unison holds too, so that the replica stays locked for
    as long as it runs; and it dies with this process (a killed round ends its session)."""
    process = subprocess.Popen(command(cfg, root, address, extra), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, errors="replace", start_new_session=True,
                               cwd="/", env=environment(cfg, peer),
                               pass_fds=() if lock is None else (lock,),
                               preexec_fn=children.tied())
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


def environment(cfg: Config, peer: str) -> dict[str, str]:
    """Unison names its archives after the host name: pin it to the node's mesh name, so
    a changed container or DHCP host name never looks like a new replica. The archives
    of the pair (this node, peer) live in a folder of their own, the only one a confined
    session with that peer may touch besides its replica."""
    return dict(os.environ, UNISONLOCALHOSTNAME=cfg.node, UNISON=pair_dir(cfg, peer))


def pair_dir(cfg: Config, peer: str) -> str:
    """The Unison folder of the pair (this node, peer), made when missing. A node that
    kept every pair's archives in one folder (before confinement) starts each pair's
    folder with links to them: Unison finds its archive, and replaces only the link."""
    path = os.path.join(cfg.unison_dir, PAIRS, peer)
    if not os.path.isdir(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.makedirs(path, mode=0o700, exist_ok=True)
        with os.scandir(cfg.unison_dir) as found:
            for entry in found:
                if entry.name[:2] in ("ar", "fp") and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileExistsError):
                        os.link(entry.path, os.path.join(path, entry.name))
    return path


def parse(exit_code: int, output: str) -> Session:
    if _EMPTIED in output:
        exit_code = EXIT_FATAL  # Unison aborts the session, yet may exit with 1
    session = Session(exit_code)
    lines = output.replace("\r", "\n").splitlines()
    refusal = ""
    for number, line in enumerate(lines):
        if line.startswith(BUSY):
            session.busy = True
            refusal = line[len("replimesh: "):]
        elif line.startswith(REFUSED):
            refusal = "the peer " + line[len("replimesh: "):]
        if _INCOMING.search(line):
            session.incoming += 1
        if _EMPTIED in line and not session.error:
            session.error = ("Unison stopped the session: " + line.strip() + " (a replica "
                             "looks emptied; if that is meant, sync with --allow-deletions)")
        if match := _TRANSFER.search(line):
            session.transferred.append(match.group(1))
        elif match := _SKIPPED.search(line):
            session.conflicts.append(match.group(1))
        elif match := _FAILED.search(line):
            session.failed.append(match.group(1))
        elif line.startswith("Fatal error:"):
            # Unison often puts the reason on the line after "Fatal error: ...:"; when
            # the line is whole, what follows is a progress display, not a reason.
            reason = line[len("Fatal error:"):].strip()
            if reason.endswith(":") and number + 1 < len(lines):
                reason = f"{reason} {lines[number + 1].strip()}"
            session.error = reason
    if exit_code not in (EXIT_OK, EXIT_SKIPPED):
        # The peer's own reason beats Unison's "Lost connection with the server".
        session.error = (refusal or session.error or _last_words(output)
                         or f"unison exited with status {exit_code}")
        if VERSION_SKEW in session.error:
            session.error = ("this node and the peer run Unison releases that cannot sync "
                             "together: install the same release on both (playbooks/site.yml "
                             f"checks the whole mesh); Unison said: {session.error}")
    return session


def _last_words(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""
