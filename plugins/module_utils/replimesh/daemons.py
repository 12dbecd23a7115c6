"""The node's long-running daemons (the swarm daemon, the watcher): one per node each,
held by a lock file that names its pid; started detached by cron's watchdog or in the
foreground by systemd, and replaced when the agent's code changed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time
import traceback
from typing import Callable

from . import journal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every daemon's verb: how cron, systemd and the deploy run it."""
    parser.add_argument("--detach", action="store_true",
                        help="run in the background (cron's watchdog); exit at once when "
                             "one already runs")
    parser.add_argument("--replace", action="store_true",
                        help="stop the one that runs first (after new code or config)")
    parser.add_argument("--stop", action="store_true", help="stop the one that runs")


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


def writable(path: str) -> bool:
    try:
        with open(path, "a", encoding="utf-8"):
            return True
    except OSError:
        return False


STOP_WAIT_S = 30.0   # for a running daemon to let go of its lock


def take_over(path: str):
    """Stop the running daemon (SIGTERM to the pid in its lock file) and take its lock;
    None if it did not let go within STOP_WAIT_S."""
    try:
        with open(path, encoding="utf-8") as handle:
            os.kill(int(handle.read().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass  # gone already, or not ours to signal: wait for the lock all the same
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        lock = lock_or_none(path)
        if lock is not None:
            return lock
        time.sleep(0.2)
    return None


def run(name: str, node: str, lock_path: str, log_path: str, main: Callable[[], int],
        detach: bool = False, replace: bool = False, stop: bool = False) -> int:
    """Run main as the node's one daemon of that name, unless one already runs (then
    say so, exit 0); replace: stop the running one first; detach: in the background,
    in a session of its own, with no terminal; stop: only stop the running one. A log
    it could not write fails it here, where cron or systemd shows the error, not later
    in a detached child whose every line would be lost."""
    if not stop and not writable(log_path):
        print(f"replimesh: the {name} cannot write its log {log_path}: make it the sync "
              f"user's (or remove it), then start the {name} again", file=sys.stderr)
        return 1
    lock = lock_or_none(lock_path)
    if stop:
        if lock is None:
            lock = take_over(lock_path)
            if lock is None:
                print(f"replimesh: {name} on {node} did not stop within {STOP_WAIT_S:g} s: "
                      f"it ends what it is doing first (see {log_path}); run this again",
                      file=sys.stderr)
                return 1
            print(f"replimesh: {name} stopped on {node}")
        else:
            print(f"replimesh: {name} not running on {node}")
        lock.close()
        return 0
    if lock is None and replace:
        lock = take_over(lock_path)
        if lock is None:   # it stops once done; cron's watchdog or systemd starts anew
            print(f"replimesh: {name} on {node} is stopping: it ends what it is doing "
                  f"first (see {log_path})")
            return 0
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
    except Exception as error:   # a bug; detached, its traceback would go to /dev/null
        where = traceback.extract_tb(error.__traceback__)[-1]
        journal.write(log_path, f"{name} stopped by an unexpected error: "
                                f"{type(error).__name__}: {error} (at "
                                f"{os.path.basename(where.filename)}:{where.lineno}); "
                                "cron's watchdog or systemd starts it again")
        raise
    finally:
        lock.close()
