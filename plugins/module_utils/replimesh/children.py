"""Child processes that never outlive the replimesh process that started them.

A round or a serving session killed with SIGKILL runs no cleanup: without this, its
Unison would go on, reparented to init, while the replica's lock it was started under
is already free.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Callable

PR_SET_PDEATHSIG = 1  # prctl(2), Linux
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child only calls it
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):
    _PRCTL = None


def tied() -> Callable[[], None]:
    """A preexec_fn: in the child, before exec, have the kernel send it SIGTERM when this
    process dies (and exit at once if it already has)."""
    parent = os.getpid()

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec
