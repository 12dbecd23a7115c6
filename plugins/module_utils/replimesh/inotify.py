"""Linux inotify through ctypes (the standard library only): the watches of a replica's
folders, and the events they report.

One instance watches many folders; a folder's events name the entry of it that changed.
Watches are not recursive: `watch.Tree` adds one per folder, new ones included.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

# linux/inotify.h
ACCESS, MODIFY, ATTRIB, CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
MOVED_FROM, MOVED_TO, CREATE, DELETE = 0x40, 0x80, 0x100, 0x200
DELETE_SELF, MOVE_SELF = 0x400, 0x800
UNMOUNT, Q_OVERFLOW, IGNORED = 0x2000, 0x4000, 0x8000
ONLYDIR, DONT_FOLLOW, EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
ISDIR = 0x40000000
_NONBLOCK, _CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC

# What changes a replica: content written, metadata (mode, times), entries made, removed
# or moved; the folder itself going away. Never follow a link to a folder outside.
REPLICA_EVENTS = (MODIFY | ATTRIB | CLOSE_WRITE | MOVED_FROM | MOVED_TO | CREATE | DELETE
                  | DELETE_SELF | MOVE_SELF | ONLYDIR | DONT_FOLLOW | EXCL_UNLINK)
_HEADER = struct.Struct("iIII")   # wd, mask, cookie, len (then len bytes of name)
MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
MAX_USER_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux
    _LIBC = None


class Exhausted(OSError):
    """The kernel's inotify limit for this user ran out (watches or instances)."""

    def __init__(self, setting: str):
        super().__init__(errno.ENOSPC, f"{setting} reached")
        self.setting = setting   # the sysctl, e.g. fs.inotify.max_user_watches


@dataclass(frozen=True)
class Event:
    wd: int          # the watch (folder) it happened in; -1 for a queue overflow
    mask: int
    cookie: int      # pairs a MOVED_FROM with its MOVED_TO
    name: str        # the entry of the folder, '' for the folder itself

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & ISDIR)


class Inotify:
    """An inotify instance, non-blocking: poll fileno(), then read()."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify needs Linux")
        fd = _LIBC.inotify_init1(_NONBLOCK | _CLOEXEC)
        if fd < 0:
            error = ctypes.get_errno()
            if error == errno.EMFILE:
                raise Exhausted("fs.inotify.max_user_instances")
            raise OSError(error, f"inotify_init1: {os.strerror(error)}")
        self.fd = fd

    def add(self, path: str, mask: int = REPLICA_EVENTS) -> int:
        """Watch the folder path; its watch descriptor. Exhausted when the limit is
        reached; OSError when path is gone or not a folder."""
        wd = _LIBC.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            error = ctypes.get_errno()
            if error == errno.ENOSPC:
                raise Exhausted("fs.inotify.max_user_watches")
            raise OSError(error, os.strerror(error), path)
        return wd

    def remove(self, wd: int) -> None:
        _LIBC.inotify_rm_watch(self.fd, wd)   # a watch already gone is no error here

    def read(self) -> list[Event]:
        """The events queued now (none if nothing happened)."""
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        return parse(data)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


def parse(data: bytes) -> list[Event]:
    """The events in a buffer read from an inotify descriptor."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = data[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(Event(wd, mask, cookie, os.fsdecode(name)))
    return events


def limit(path: str = MAX_USER_WATCHES) -> int | None:
    """The kernel's current limit (watches per user by default); None if unreadable."""
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None
