"""What changed in a replica, as it happens: the inotify watches of every folder of a
root (`Tree`), and the bursts of changes gathered into rounds (`Burst`).

A Tree says which paths (relative to the root) changed; a folder made or moved in is
watched at once and reported whole, since files may land in it before its watch exists.
When the kernel drops events (its queue overflowed) or the root itself goes or is
replaced, the Tree says "everything": the next round is a full one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import inotify, tree
from .tree import BACKUP_DIR, UNISON_TEMP, UNISON_TEMP_END

# Beyond this many changed paths, a round syncs the whole root (one Unison session
# with thousands of -path arguments is slower than a scan, and too long a command).
MAX_PATHS = 500


@dataclass
class Changes:
    paths: set[str] = field(default_factory=set)
    everything: bool = False   # events were lost, or the root was replaced

    def __bool__(self) -> bool:
        return self.everything or bool(self.paths)


def ignored(relative: str) -> bool:
    """Paths replimesh never syncs: the backup area, Unison's temporary files."""
    first, _, _ = relative.partition("/")
    name = relative.rsplit("/", 1)[-1]
    return first == BACKUP_DIR or (name.startswith(UNISON_TEMP) and
                                   name.endswith(UNISON_TEMP_END))


def news(root: str, index: tree.Index, paths: set[str]) -> set[str]:
    """The paths whose state is not the one the root's last walk indexed: what changed
    here since. A session serving a peer walks the root when it ends, so what it wrote
    is indexed by then and starts no round of its own (the peer's round passes it on);
    a change made here meanwhile differs from the index, and is kept."""
    kept = set()
    for path in paths:
        now, before = tree.fingerprint(os.path.join(root, path)), index.get(path)
        if now != (before[:5] if before else None):
            kept.add(path)
    return kept


class Tree:
    """The watches of one root: one per folder, kept as folders come and go."""

    def __init__(self, notify: inotify.Inotify, root: str):
        self.notify, self.root = notify, root
        self.folders: dict[int, str] = {}   # watch -> folder, relative ('' is the root)
        self.watches: dict[str, int] = {}   # folder -> watch

    def start(self) -> int:
        """Watch every folder of the root; how many. inotify.Exhausted when the kernel's
        limit runs out (the watches made so far stay)."""
        self._add_below("")
        return len(self.folders)

    def handle(self, event: inotify.Event, changes: Changes) -> None:
        """Add what event says changed to changes, keeping the watches up to date."""
        if event.mask & inotify.Q_OVERFLOW:
            changes.everything = True
            return
        folder = self.folders.get(event.wd)
        if folder is None:
            return   # a watch already dropped
        if event.mask & inotify.IGNORED:
            self._forget(event.wd)
            return
        if event.mask & (inotify.DELETE_SELF | inotify.MOVE_SELF):
            if folder == "":   # the root went, or another folder took its place
                changes.everything = True
                self.restart()
            return   # a folder below: its parent reports it
        path = f"{folder}/{event.name}" if folder else event.name
        if ignored(path):
            return
        changes.paths.add(path)
        if not event.is_dir:
            return
        if event.mask & (inotify.MOVED_FROM | inotify.DELETE):
            self._drop_below(path)
        elif event.mask & (inotify.CREATE | inotify.MOVED_TO):
            self._add_below(path)

    def restart(self) -> None:
        """Drop every watch and watch the root again as it is now (if it is there)."""
        for wd in list(self.folders):
            self.notify.remove(wd)
        self.folders.clear()
        self.watches.clear()
        if os.path.isdir(self.root):
            self._add_below("")

    def _add_below(self, top: str) -> None:
        pending = [top]
        while pending:
            folder = pending.pop()
            absolute = os.path.join(self.root, folder) if folder else self.root
            try:
                wd = self.notify.add(absolute)
            except inotify.Exhausted:
                raise
            except OSError:
                continue   # gone already, or not a folder: its parent's events tell
            self.folders[wd] = folder
            self.watches[folder] = wd
            try:
                with os.scandir(absolute) as entries:
                    for entry in entries:
                        below = f"{folder}/{entry.name}" if folder else entry.name
                        if entry.is_dir(follow_symlinks=False) and not ignored(below):
                            pending.append(below)
            except OSError:
                continue

    def _drop_below(self, top: str) -> None:
        """A folder moved away or removed: its watches (and those below) go; one moved
        elsewhere in the root is watched again under its new name by its MOVED_TO."""
        prefix = top + "/"
        for folder in [f for f in self.watches if f == top or f.startswith(prefix)]:
            wd = self.watches.pop(folder)
            self.folders.pop(wd, None)
            self.notify.remove(wd)

    def _forget(self, wd: int) -> None:
        folder = self.folders.pop(wd, None)
        if folder is not None and self.watches.get(folder) == wd:
            del self.watches[folder]


class Burst:
    """Changes gathered until a round should start: quiet_s after the last change of a
    burst, and no later than max_wait_s after its first under continuous change."""

    def __init__(self, quiet_s: float = 1.0, max_wait_s: float = 5.0):
        self.quiet_s, self.max_wait_s = quiet_s, max_wait_s
        self.changes = Changes()
        self.first = self.last = 0.0

    def add(self, changes: Changes, now: float) -> None:
        if not changes:
            return
        if not self.changes:
            self.first = now
        self.last = now
        self.changes.paths |= changes.paths
        self.changes.everything |= changes.everything

    def due_in(self, now: float) -> float | None:
        """Seconds until the round is due (0: now); None with nothing gathered."""
        if not self.changes:
            return None
        return max(0.0, min(self.last + self.quiet_s, self.first + self.max_wait_s) - now)

    def take(self) -> Changes:
        """What the round is for: the paths (none under another), or everything."""
        taken, self.changes = self.changes, Changes()
        if taken.everything:
            return Changes(everything=True)
        paths = outermost(taken.paths)
        if len(paths) > MAX_PATHS:
            return Changes(everything=True)
        return Changes(set(paths))


def outermost(paths: set[str]) -> list[str]:
    """paths without those lying under another of them, sorted."""
    kept: set[str] = set()
    for path in sorted(paths, key=lambda p: p.count("/")):
        parts = path.split("/")
        if not any("/".join(parts[:depth]) in kept for depth in range(1, len(parts))):
            kept.add(path)
    return sorted(kept)
