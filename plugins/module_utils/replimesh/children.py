"""Child processes that never outlive the replimesh process that started them.

A round or a serving session killed with SIGKILL runs no cleanup: without this, its
Unison would go on, reparented to init, while the replica's lock it was started under
is already free.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from typing import Callable

PR_SET_PDEATHSIG = 1  # prctl(2), Linux
IDLE_CHECK_S = 5.0
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child only calls it
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):
    _PRCTL = None


def tied(then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A preexec_fn: in the child, before exec, have the kernel send it SIGTERM when this
    process dies (and exit at once if it already has); then run `then` (a sandbox to
    enter), whose exception fails the start. The kernel watches the THREAD that started
    the child: one started from a thread that ends (a pool's) is signalled then."""
    parent = os.getpid()

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        if then is not None:
            then()
    return preexec


def supervise(process: subprocess.Popen, limit_s: float, idle_s: float) -> str:
    """Wait for process; stop it after limit_s seconds in all, or once it has neither
    read, written nor used the CPU for idle_s seconds (a peer that holds a session open
    and sends nothing). Empty when it ended by itself, else why it was stopped."""
    started = last_active = time.monotonic()
    seen = _activity(process.pid)
    while True:
        try:
            process.wait(timeout=min(IDLE_CHECK_S, idle_s / 4))
            return ""
        except subprocess.TimeoutExpired:
            pass
        now, activity = time.monotonic(), _activity(process.pid)
        if activity != seen:
            seen, last_active = activity, now
        if now - started > limit_s:
            reason = f"stopped after the session limit of {limit_s:g} s"
        elif now - last_active > idle_s:
            reason = f"stopped after {idle_s:g} s with no traffic"
        else:
            continue
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return reason


def _activity(pid: int) -> tuple[str, ...]:
    """What changes while a process does anything: its I/O counts and CPU time."""
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as io:
            counts = tuple(line for line in io if line.startswith(("rchar", "wchar")))
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            cpu = tuple(stat.read().rsplit(")", 1)[-1].split()[11:13])  # utime, stime
        return counts + cpu
    except OSError:
        return ()
