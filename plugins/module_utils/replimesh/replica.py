"""What keeps a replica (a root on this node) safe: its lock, its deletion guard, and
the retention of its backup area.

One lock per replica, so two sessions never touch it at once.

A round holds the lock of its local replica for each Unison session, and `replimesh
serve` holds the lock of the replica a peer's session asked for until `unison -server`
exits. The lock is a flock(2) on a file: the kernel drops it when its holder dies (a
killed round, a stopped container), so a stale lock never needs a hand to remove it.
The file only tells a waiter who holds it.

The deletion guard compares the replica's file count with the count recorded at the end
of its last session: a root that lost more than max_delete_share of its files outside
any session (a wiped disk, a disk not mounted) is not synced, and so cannot pass its
deletions on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from . import state, tree
from .config import Config
from .errors import ReplimeshError

# Where Unison moves what a sync deletes or overwrites, inside each root (never synced).
BACKUP_DIR = tree.BACKUP_DIR
# Below this many lost files, a partial loss is not a wiped disk (an emptied root is).
GUARD_MIN_FILES = 10
# A peer's session or push waits this long for a replica another session holds, then is
# told it is busy: the client lets go of its own replica and tries again, so two rounds
# that meet never wait on each other.
PEER_WAIT_S = 2.0


class Busy(ReplimeshError):
    """Another session held the replica for longer than the wait allowed."""


Tried = TypeVar("Tried")


def while_busy(attempt: Callable[[float], Tried], busy: Callable[[Tried], bool],
               wait_s: float) -> tuple[Tried, bool]:
    """attempt(seconds left) again after a random, growing pause while busy(what it gave),
    for at most wait_s in all: (what it gave last, whether that was still busy). The pause
    is random so that two nodes turned away by each other do not meet again."""
    deadline = time.monotonic() + wait_s
    pause = 0.5
    while True:
        tried = attempt(max(0.0, deadline - time.monotonic()))
        if not busy(tried):
            return tried, False
        if time.monotonic() + pause > deadline:
            return tried, True
        time.sleep(random.uniform(pause / 2, pause))
        pause = min(pause * 2, 8.0)


def file_path(cfg: Config, root: str, suffix: str) -> str:
    """The replica's file of that suffix in replica_dir (lock, guard record, history...)."""
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return os.path.join(cfg.replica_dir, f"replica-{digest}.{suffix}")


def lock_path(cfg: Config, root: str) -> str:
    return file_path(cfg, root, "lock")


@contextlib.contextmanager
def held(cfg: Config, root: str, holder: str, wait_s: float) -> Iterator[int]:
    """Hold the replica's lock (waiting at most wait_s) and yield its file descriptor;
    Busy, naming the holder, when it stayed taken."""
    fd = acquire(cfg, root, holder, wait_s)
    try:
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def acquire(cfg: Config, root: str, holder: str, wait_s: float) -> int:
    """The descriptor of the replica's lock file, locked; the caller closes it to release.

    Waiters poll with a random pause, so that rounds meeting on one replica do not retry
    in step."""
    os.makedirs(cfg.replica_dir, mode=0o700, exist_ok=True)
    path = lock_path(cfg, root)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    pause = 0.1
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            who = describe_holder(fd)
            os.close(fd)
            raise Busy(f"replica {root} on {cfg.node} stayed busy for {wait_s:g} s "
                       f"({who}): gave up, the next round tries again")
        time.sleep(min(random.uniform(pause / 2, pause), left))
        pause = min(pause * 2, 2.0)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}, pid {os.getpid()}, since {time.strftime('%H:%M:%S')}\n"
              .encode(), 0)
    return fd


def describe_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"held by {text}" if text else "holder unknown"


def count_files(root: str) -> int:
    """Regular files and symlinks under root, the backup area left out."""
    total = 0
    for folder, folders, files in os.walk(root):
        if folder == root and BACKUP_DIR in folders:
            folders.remove(BACKUP_DIR)
        total += len(files)
    return total


def recorded_files(cfg: Config, root: str) -> int | None:
    """The file count recorded at the end of the replica's last session, if any."""
    try:
        with open(file_path(cfg, root, "json"), encoding="utf-8") as handle:
            files = json.load(handle).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return files if isinstance(files, int) and not isinstance(files, bool) else None


def record(cfg: Config, root: str, files: int | None = None) -> None:
    """Record the replica's file count (counted now unless given); the caller holds its
    lock."""
    os.makedirs(cfg.replica_dir, mode=0o700, exist_ok=True)
    files = count_files(root) if files is None else files
    state.write_json(file_path(cfg, root, "json"),
                     {"root": root, "files": files, "at": int(time.time())})


def check(cfg: Config, root: str, files: int | None = None) -> str:
    """Why this replica must not be synced now ("" when it may): it does not exist, or it
    lost too many files since its last session (files: its count now, if known)."""
    if not os.path.isdir(root):
        return (f"root {root} does not exist on {cfg.node} (disk not mounted?): not synced; "
                "mount it or create it")
    before = recorded_files(cfg, root)
    if not before:
        return ""
    now = count_files(root) if files is None else files
    lost = before - now
    if lost > 0 and lost > cfg.max_delete_share * before and (now == 0 or lost >= GUARD_MIN_FILES):
        return (f"deletion guard: {root} on {cfg.node} holds {now} files, {before} after its "
                f"last session ({lost * 100 // before}% gone): not synced, so the deletions "
                "do not spread; if they are intended, run `replimesh sync --allow-deletions` "
                f"on {cfg.node}")
    return ""


def to_backup(root: str, relative: str) -> str:
    """Move a file of the replica into its backup area, where Unison puts what a sync
    deletes; the new path."""
    candidate = backup_name(root, relative)
    os.rename(os.path.join(root, relative), candidate)
    return candidate


def backup_name(root: str, relative: str) -> str:
    """A free name in the backup area for a file of the replica (its path there, or a
    numbered one when taken), its folders made."""
    target = os.path.join(root, BACKUP_DIR, relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    candidate, number = target, 1
    while os.path.lexists(candidate):
        candidate = f"{target}.{number}"
        number += 1
    return candidate


def remove(path: str) -> None:
    """Remove a file or a folder with what it holds; gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def prune_backups(cfg: Config, root: str, now: float | None = None) -> int:
    """Remove from the backup area what was put there more than backup_days ago (the
    ctime is when Unison moved it there); the number of entries removed."""
    area = os.path.join(root, BACKUP_DIR)
    limit = (now or time.time()) - cfg.backup_days * 86400
    removed = 0
    for folder, _, files in os.walk(area, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            try:
                if os.lstat(path).st_ctime < limit:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
        if folder != area:
            with contextlib.suppress(OSError):  # only an empty folder goes
                os.rmdir(folder)
    return removed
