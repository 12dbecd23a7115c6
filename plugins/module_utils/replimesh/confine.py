"""Landlock: a child process that may touch only the paths it is given.

A peer's Unison session is served by a plain `unison -server`, which opens whatever root
the client names in the protocol. Confined, it reaches only the replica it was locked
for and the Unison archives of that one pair: everything else (the sync user's keys,
/etc/replimesh, other pairs' archives) is out of reach, whatever the client asks.

The rules are built in the parent (`Sandbox.build`), and the child restricts itself
between fork and exec (`Sandbox.enter`, from a preexec_fn): the parent, replimesh itself,
stays as it is. Landlock needs Linux 5.13; replimesh needs ABI 2 (Linux 5.19), the first
to allow renames between the folders of a replica (Unison's backups), and uses what newer
kernels add: truncation (ABI 3), TCP (4, none allowed), device ioctls (5), signals and
abstract sockets outside the sandbox (6). Through ctypes: the standard library only.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

MIN_ABI = 2
# Syscall numbers, the same on every architecture (added after the tables were unified).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights (linux/landlock.h) and the ABI that added each.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_DIR_CHANGES = sum(1 << bit for bit in range(4, 13))  # remove, make (dir, reg, sym, ...)
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | _DIR_CHANGES,
              2: REFER, 3: TRUNCATE, 5: IOCTL_DEV}
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
_NET_TCP = 0b11           # bind and connect (ABI 4): handled, so refused
_SCOPES = 0b11            # abstract unix sockets and signals outside the sandbox (ABI 6)

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = ~0  # every right the kernel handles

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux
    _LIBC = None


class Unavailable(Exception):
    """This kernel cannot confine a process as replimesh needs."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi() -> int:
    """The Landlock ABI this kernel offers; 0 without Landlock (too old, or turned off)."""
    if _LIBC is None:
        return 0
    version = _LIBC.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(version, 0)


def available() -> str:
    """Empty when sessions can be confined here, else why not, in one line."""
    found = abi()
    if found >= MIN_ABI:
        return ""
    release = os.uname().release
    if found == 0:
        return (f"Linux {release} offers no Landlock (Linux 5.19 or newer with Landlock "
                "enabled, the default of Debian 12 and Ubuntu 24.04, is needed)")
    return (f"Linux {release} offers Landlock ABI {found}; confining a replica's sessions "
            f"needs ABI {MIN_ABI} (Linux 5.19 or newer)")


@dataclass
class Sandbox:
    """A built set of rules, ready for a child to enter; close() when the child runs."""
    fd: int

    @classmethod
    def build(cls, read: list[str], write: list[str]) -> Sandbox:
        """Rules that allow reading (and running) what is under `read`, everything under
        `write`, and nothing else; paths that do not exist are left out."""
        version = abi()
        if version < MIN_ABI:
            raise Unavailable(available())
        handled_fs = 0
        for since, rights in _FS_BY_ABI.items():
            if version >= since:
                handled_fs |= rights
        attr = _RulesetAttr(handled_fs, _NET_TCP if version >= 4 else 0,
                            _SCOPES if version >= 6 else 0)
        size = 8 if version < 4 else 16 if version < 6 else 24
        fd = _call(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                   ctypes.c_uint32(0), what="create a Landlock ruleset")
        try:
            for paths, rights in ((read, READ), (write, WRITE)):
                for path in paths:
                    _allow(fd, path, rights & handled_fs)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def enter(self) -> None:
        """In the child, before exec: from now on, only the rules' paths."""
        _call(_LIBC.prctl, _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, raw=True,
              what="set no_new_privs")
        _call(_RESTRICT_SELF, self.fd, ctypes.c_uint32(0), what="enter the Landlock ruleset")

    def close(self) -> None:
        os.close(self.fd)


def restrict(read: list[str], write: list[str]) -> None:
    """From now on, this process (and what it starts) reaches only these paths, as
    Sandbox.build allows them; Unavailable when it cannot."""
    sandbox = Sandbox.build(read=read, write=write)
    try:
        sandbox.enter()
    finally:
        sandbox.close()


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS  # folder rights on a file are refused (EINVAL)
        rule = _PathBeneath(rights, target)
        _call(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0),
              what=f"allow {path}")
    finally:
        os.close(target)


def _call(function, *args, what: str, raw: bool = False) -> int:
    result = function(*args) if raw else _LIBC.syscall(function, *args)
    if result < 0:
        error = ctypes.get_errno()
        raise Unavailable(f"cannot {what}: {os.strerror(error)}")
    return result
