"""The node's long-running daemons (the swarm daemon, the watcher): one per node each,
held by a lock file that names its pid; started detached by cron's watchdog or in the
foreground by systemd, and replaced when the agent's code changed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from typing import Callable


def lock_or_none(path: str):
    """The daemon's lock file, held, with this pid in it; None when another holds it."""
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def take_over(path: str, wait_s: float = 30.0):
    """Stop the running daemon (SIGTERM to the pid in its lock file) and take its lock;
    None if it did not let go within wait_s."""
    try:
        with open(path, encoding="utf-8") as handle:
            os.kill(int(handle.read().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass  # gone already, or not ours to signal: wait for the lock all the same
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        lock = lock_or_none(path)
        if lock is not None:
            return lock
        time.sleep(0.2)
    return None


def run(name: str, node: str, lock_path: str, main: Callable[[], int],
        detach: bool = False, replace: bool = False) -> int:
    """Run main as the node's one daemon of that name, unless one already runs (then
    say so, exit 0); replace: stop the running one first; detach: in the background,
    in a session of its own, with no terminal."""
    lock = lock_or_none(lock_path)
    if lock is None and replace:
        lock = take_over(lock_path)
    if lock is None:
        print(f"replimesh: {name} already running on {node}")
        return 0
    if detach:
        lock.close()
        if os.fork():
            return 0
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        lock = lock_or_none(lock_path)
        if lock is None:
            os._exit(0)
    os.environ.pop("SSH_CLIENT", None)  # started over SSH: its log lines are not a client's
    try:
        return main()
    finally:
        lock.close()
