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
from .tree import ignored, outermost, unison_temporary

# Beyond this many changed paths, a round syncs the whole root (one Unison session
# with thousands of -path arguments is slower than a scan, and too long a command).
MAX_PATHS = 500


@dataclass
class Changes:
    """What the events of a root say changed, by who may have changed it."""
    paths: set[str] = field(default_factory=set)    # by a process of this node, surely
    # Moved out of the watched folders, metadata changed, an empty folder removed: a
    # session does that too (its deletions go to the backup area), so these are news
    # only when they differ from what the root's last walk indexed (news()).
    unsure: set[str] = field(default_factory=set)
    # A Unison session's writes: a temporary file renamed onto the path. Not news.
    synced: set[str] = field(default_factory=set)
    moved_from: dict[int, tuple[str, bool]] = field(default_factory=dict)  # cookie ->
    # (path, whether a Unison temporary file), until its MOVED_TO comes (or never)
    everything: bool = False   # events were lost, or the root was replaced
    # Files written to and not closed since: still being written, most likely. While
    # any is, a round waits for the longer quiet time, so that it sends no half-written
    # file; a file closed (or a deletion, a rename, a new folder) needs no such wait.
    writing: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.everything or self.paths or self.unsure or self.moved_from)

    @property
    def made_here(self) -> bool:
        """Whether a process of this node surely changed something (a round will follow)."""
        return bool(self.paths or self.writing)

    @property
    def settled(self) -> bool:
        """Every file written was closed since (so a short wait will do); lost events
        leave that unknown."""
        return not self.writing and not self.everything

    def candidates(self) -> tuple[set[str], set[str]]:
        """(paths surely changed here, paths to check against the index): a move whose
        MOVED_TO never came left the watched folders, a session's deletion or not."""
        unsure = self.unsure | {path for path, temporary in self.moved_from.values()
                                if not temporary}
        return set(self.paths), unsure - self.paths


def news(root: str, index: tree.Lookup, paths: set[str]) -> set[str]:
    """The paths whose state is not the one the root's last walk indexed. A session
    walks the root when it ends (the caller holds the replica's lock, so none is under
    way), so what it moved away or changed the metadata of is indexed by then."""
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

    def handle(self, event: inotify.Event, changes: Changes) -> str | None:
        """Add what event says changed to changes, keeping the watches up to date; the
        path whose content in the replica may have changed ("" for the whole root), None
        if none did (the backup area; Unison's temporary files until one is renamed into
        place)."""
        if event.mask & inotify.Q_OVERFLOW:
            changes.everything = True
            return ""
        folder = self.folders.get(event.wd)
        if folder is None:
            return None   # a watch already dropped
        if event.mask & inotify.IGNORED:
            self._forget(event.wd)
            return None
        if event.mask & (inotify.DELETE_SELF | inotify.MOVE_SELF):
            if folder == "":   # the root went, or another folder took its place
                changes.everything = True
                self.restart()
                return ""
            return None   # a folder below: its parent reports it
        if not event.name:
            return None   # a folder's own metadata: its parent reports it (the root's
            # own goes with the next full round)
        path = f"{folder}/{event.name}" if folder else event.name
        if event.mask & inotify.MOVED_TO and event.cookie in changes.moved_from:
            source, temporary = changes.moved_from.pop(event.cookie)
            if not temporary:
                changes.paths.add(source)   # renamed here
            if source in changes.writing:   # renamed while open: closed under its new name
                changes.writing.discard(source)
                changes.writing.add(path)
        elif event.mask & inotify.MOVED_FROM:
            temporary = unison_temporary(event.name)
            if temporary or not ignored(path):
                changes.moved_from[event.cookie] = (path, temporary)
            if event.is_dir and not temporary:
                self._drop_below(path)
            return None if temporary or ignored(path) else path
        else:
            temporary = False
        if ignored(path):
            return None
        if not event.is_dir:
            if event.mask & inotify.MODIFY:
                changes.writing.add(path)
            elif event.mask & (inotify.CLOSE_WRITE | inotify.DELETE):
                changes.writing.discard(path)
        if temporary:
            changes.synced.add(path)   # Unison put what it brought in place
        elif event.is_dir and event.mask & inotify.ATTRIB and path not in self.watches:
            # A folder it could not watch when it came: made unreadable first, as
            # `install -d -o` and tar make them. Readable now: watched, and whole, since
            # files may have landed in it unseen.
            self._add_below(path)
            (changes.paths if path in self.watches else changes.unsure).add(path)
        elif event.mask & inotify.ATTRIB or (event.is_dir and event.mask & inotify.DELETE):
            changes.unsure.add(path)
        else:
            changes.paths.add(path)
        if event.is_dir and event.mask & inotify.DELETE:
            self._drop_below(path)
        elif event.is_dir and event.mask & (inotify.CREATE | inotify.MOVED_TO):
            self._add_below(path)
        return path

    def restart(self) -> None:
        """Drop every watch and watch the root again as it is now (if it is there)."""
        self.stop()
        if os.path.isdir(self.root):
            self._add_below("")

    def stop(self) -> None:
        """Drop every watch."""
        for wd in list(self.folders):
            self.notify.remove(wd)
        self.folders.clear()
        self.watches.clear()

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
    """The changes of one root gathered until a round should start: settle_s after the
    last event of a burst once every file written in it was closed, quiet_s after it
    while one is still open, and no later than max_wait_s after its first under
    continuous change. Tree.handle adds to `changes`; noted() says when."""

    def __init__(self, quiet_s: float = 1.0, max_wait_s: float = 5.0,
                 settle_s: float = 0.2):
        self.quiet_s, self.max_wait_s = quiet_s, max_wait_s
        self.settle_s = settle_s
        self.changes = Changes()
        self.first = self.last = 0.0

    def in_full(self, now: float) -> None:
        """The whole root is to sync at the next round, as if an event came at now."""
        self.changes.everything = True
        self.noted(now)

    def noted(self, now: float) -> None:
        """Events were handled at now."""
        if not self.changes:
            return
        if not self.first:
            self.first = now
        self.last = now

    def hold(self, now: float, delay_s: float) -> None:
        """Due delay_s from now (a round to run again), or sooner if changes come."""
        self.first = self.last = now + delay_s - self._quiet_s()

    def due_in(self, now: float) -> float | None:
        """Seconds until the round is due (0: now); None with nothing gathered."""
        if not self.changes:
            return None
        return max(0.0, min(self.last + self._quiet_s(), self.first + self.max_wait_s)
                   - now)

    def _quiet_s(self) -> float:
        return self.settle_s if self.changes.settled else self.quiet_s

    def take(self) -> Changes:
        taken, self.changes = self.changes, Changes()
        self.first = self.last = 0.0
        return taken


def scope(changed: set[str]) -> list[str] | None:
    """What a round for these changed paths syncs: the outermost of them (none under
    another), sorted; None for the whole root (beyond MAX_PATHS)."""
    paths = outermost(changed)
    return None if len(paths) > MAX_PATHS else paths


