"""What a replica holds: one walk of the root, each entry with the version it holds.

The walk keeps an index (path -> kind, stat fingerprint, digest) from one walk to the
next, so a file is hashed again only when its size, times or inode changed; the diff of
two walks says which versions this node saw go (deleted, or replaced by another).
The backup area and Unison's temporary files are left out: they are never synced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .history import DIRECTORY, Version

BACKUP_DIR = ".replimesh-backup"
UNISON_TEMP = ".unison."   # Unison writes a file as .unison.NAME.*.unison.tmp, then renames
UNISON_TEMP_END = ".unison.tmp"
FILE, LINK, FOLDER = "f", "l", "d"
_CHUNK = 1 << 20

# path -> [kind, size, mtime_ns, ctime_ns, inode, digest]
Index = dict[str, list]


@dataclass
class Walk:
    index: Index
    files: int = 0       # regular files and symlinks (what the deletion guard counts)
    gone: list[Version] = field(default_factory=list)       # held before, not now
    replaced: list[Version] = field(default_factory=list)   # held before, another now
    temporary: list[str] = field(default_factory=list)      # Unison's temporary files
    changed: bool = False   # the index differs from the previous one
    root_mtime: int = 0     # of the root folder itself, before it was listed
    # A walk of some paths only (walk_paths): index holds what it walked, removed the
    # paths of the previous index that went.
    partial: bool = False
    removed: list[str] = field(default_factory=list)


def version(path: str, entry: list) -> Version:
    """The version an index entry holds."""
    kind, _, mtime_ns, _, _, digest = entry
    return Version(path, digest, 0 if kind == FOLDER else mtime_ns // 1_000_000_000)


def walk(root: str, previous: Index) -> Walk:
    """Walk root; hash what changed since previous; diff the two."""
    done = Walk({})
    with contextlib.suppress(OSError):
        done.root_mtime = os.lstat(root).st_mtime_ns
    _walk_folder(root, "", previous, done)
    done.changed = done.index != previous
    for path, before in previous.items():
        now = done.index.get(path)
        if now is None:
            done.gone.append(version(path, before))
        elif version(path, now) != version(path, before):
            done.replaced.append(version(path, before))
    return done


def walk_paths(root: str, previous: Lookup, paths: set[str], files_before: int) -> Walk:
    """What walk() would find if nothing but paths (and what lies below them) changed
    since previous was made: those walked again, with the folders above them (their
    times), the rest of previous taken as it is. Its index holds the entries walked,
    `removed` the entries of previous that went; files_before: previous's count."""
    done = Walk({}, partial=True)
    with contextlib.suppress(OSError):
        done.root_mtime = os.lstat(root).st_mtime_ns
    tops = [p for p in outermost(paths) if p and not ignored(p)]
    before = previous.under(tops)
    for top in tops:
        entry = _entry(os.path.join(root, top), before.get(top))
        if entry is not None:
            done.index[top] = entry
            if entry[0] == FOLDER:
                _walk_folder(os.path.join(root, top), top + "/", before, done)
        parts = top.split("/")
        for depth in range(1, len(parts)):   # an entry added or removed: a folder's time
            folder = "/".join(parts[:depth])
            if folder in done.index:
                continue
            then, now = previous.get(folder), fingerprint(os.path.join(root, folder))
            if then is not None and now is not None and now[0] == FOLDER:
                done.index[folder] = [*now, DIRECTORY]
                if done.index[folder] == then:
                    del done.index[folder]   # as it was: nothing to write
    done.removed = [p for p in before if p not in done.index]
    # The folders above are folders: the files walked are those of the tops.
    done.files = files_before - files_among(before.values()) + files_among(done.index.values())
    done.changed = bool(done.removed) or any(before.get(p) != e for p, e in
                                             done.index.items())
    for path, entry in before.items():
        now = done.index.get(path)
        if now is None:
            done.gone.append(version(path, entry))
        elif version(path, now) != version(path, entry):
            done.replaced.append(version(path, entry))
    return done


def files_among(entries: Iterable[list]) -> int:
    """How many of entries are files (regular or symlinks): what the guard counts."""
    return sum(1 for entry in entries if entry[0] != FOLDER)


class Lookup(Protocol):
    """An index as walk_paths reads it: in memory (Indexed) or stored (replica_index)."""

    def get(self, path: str) -> list | None: ...

    def under(self, tops: Iterable[str]) -> Index: ...


class Indexed(dict):
    """An index in memory, looked up as a stored one is."""

    def under(self, tops: Iterable[str]) -> Index:
        tops = set(tops)
        below = tuple(top + "/" for top in tops)
        return {p: e for p, e in self.items() if p in tops or (below and p.startswith(below))}


def ignored(relative: str) -> bool:
    """Paths replimesh never syncs: the backup area, Unison's temporary files."""
    first, _, _ = relative.partition("/")
    return first == BACKUP_DIR or unison_temporary(relative.rsplit("/", 1)[-1])


def unison_temporary(name: str) -> bool:
    """Unison writes what it brings to a temporary name, then renames it into place."""
    return name.startswith(UNISON_TEMP) and name.endswith(UNISON_TEMP_END)


def outermost(paths: set[str]) -> list[str]:
    """paths without those lying under another of them, sorted."""
    kept: set[str] = set()
    for path in sorted(paths, key=lambda p: p.count("/")):
        parts = path.split("/")
        if not any("/".join(parts[:depth]) in kept for depth in range(1, len(parts))):
            kept.add(path)
    return sorted(kept)


def _walk_folder(folder: str, prefix: str, previous: Index, done: Walk) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return  # gone while walked, or unreadable: not held here
    for item in entries:
        name = item.name
        if name.startswith(UNISON_TEMP):
            if name.endswith(UNISON_TEMP_END):
                done.temporary.append(prefix + name)
            continue
        if not prefix and name == BACKUP_DIR:
            continue
        path = prefix + name
        entry = _entry(item, previous.get(path))
        if entry is None:
            continue
        done.index[path] = entry
        if entry[0] == FOLDER:
            _walk_folder(item.path, path + "/", previous, done)
        else:
            done.files += 1


def fingerprint(item: os.DirEntry | str) -> list | None:
    """[kind, size, mtime_ns, ctime_ns, inode] of a folder entry (or a path), what an index
    entry holds but its digest; None if it is gone, or is not a file, symlink or folder."""
    try:
        status = item.stat(follow_symlinks=False) if isinstance(item, os.DirEntry) \
            else os.lstat(item)
    except OSError:
        return None
    if stat.S_ISDIR(status.st_mode):
        # Its mtime says whether an entry was added, removed or renamed in it (settled()).
        return [FOLDER, 0, status.st_mtime_ns, 0, status.st_ino]
    if stat.S_ISLNK(status.st_mode):
        kind = LINK
    elif stat.S_ISREG(status.st_mode):
        kind = FILE
    else:
        return None
    return [kind, status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


def _entry(item: os.DirEntry | str, before: list | None) -> list | None:
    """[kind, size, mtime_ns, ctime_ns, inode, digest] of a folder entry (or a path); None
    if it is gone, or is not a file, symlink or folder."""
    fingerprint_now = fingerprint(item)
    if fingerprint_now is None:
        return None
    kind = fingerprint_now[0]
    if kind == FOLDER:
        return [*fingerprint_now, DIRECTORY]
    if before is not None and before[:5] == fingerprint_now:
        return [*fingerprint_now, before[5]]
    try:
        digest = digest_of(os.fspath(item), kind)
    except OSError:
        return None  # gone while read, or unreadable: not a version this node holds
    return [*fingerprint_now, digest]


def folders(index: Index) -> list[tuple[str, int]]:
    """(path, mtime) of the folders of an index."""
    return [(p, e[2]) for p, e in index.items() if e[0] == FOLDER]


def settled(root: str, indexed: list[tuple[str, int]], root_mtime: int) -> bool:
    """Whether no entry was added, removed or renamed under root since the walk that
    indexed these folders (each one's mtime is as it was then): a stat per folder, not
    per file. Unison writes every file it brings through a rename, so a session that
    changed nothing here leaves it true; a change of a file's content in place does not
    show."""
    for path, mtime in [("", root_mtime), *indexed]:
        try:
            if os.lstat(os.path.join(root, path) if path else root).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return bool(root_mtime)


def digest_of(path: str, kind: str) -> str:
    """sha256 of a file's content, or of a symlink's target."""
    if kind == LINK:
        return hashlib.sha256(b"link:" + os.fsencode(os.readlink(path))).hexdigest()
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def current(root: str, relative: str) -> Version | None:
    """The version path holds now (hashed afresh), or None when it holds none."""
    entry = _entry(os.path.join(root, relative), None)
    return None if entry is None else version(relative, entry)
