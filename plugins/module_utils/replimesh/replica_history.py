"""A replica's mesh-wide history on this node (see history.py): what this node saw go,
the records heard from peers, and the deletions they call for, carried out.

Files in replica_dir, per root: the index of the last walk (`.index.sqlite`, written
under the replica's lock only: replica_index.py), when a walk last passed the deletion
guard and how far it read the watcher's journal (`.walked`), and the
history (`.history.json`, written under its own lock, since the peer-list exchange
merges peers' records without the replica's lock).
Both only ever lose history when damaged (a deleted file may then come back): they are
started afresh, never a reason to stop syncing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import history, markers, replica, replica_index, state, tree
from .config import Config
from .errors import ConfigError
from .history import DELETED, REPLACED, Fate, History

KEY = "history"   # the exchange's field: {root: records}
# A session that starts this soon after the exchange's walk of its replica (which passed
# the deletion guard) takes that walk as it is rather than walk again.
FRESH_S = 3.0


@dataclass
class Observed:
    walk: tree.Walk
    refusal: str = ""                     # why the replica must not be synced ("" if it may)
    seen_go: int = 0                      # versions recorded as gone by this walk
    applied: list[str] = field(default_factory=list)   # paths deleted by the history
    # The last walk taken as it is, by the root's change marker (markers.py): its index
    # is read from replica_dir only if needed.
    unchanged: bool = False


def observe(cfg: Config, root: str, guard: bool = True, fresh_s: float = 0,
            after_session: bool = False) -> Observed:
    """Walk the replica (the caller holds its lock): record the versions that went since
    the last walk as this node's, and the file count for the deletion guard. With guard,
    a replica that looks wiped records nothing (its losses are not deletions to spread)
    and says why in refusal. What the watcher's journal names is walked, and nothing
    else; without it, fresh_s: a walk that passed the guard less than that many seconds
    ago is taken as it is (a session right after the exchange's walk); after_session:
    the last walk is taken as it is if no folder changed since (a session that brought
    nothing), checked with a stat per folder. Whenever the root's change
    marker is the one read before the last walk that passed the guard, nothing changed
    since: no walk, and the index is not even read."""
    os.makedirs(cfg.replica_dir, mode=0o700, exist_ok=True)
    marker = markers.read(cfg, root)   # before the walk: see markers.py
    last = _last_walk(cfg, root)
    if marker is not None and os.path.isdir(root) and last is not None and last[0] == marker:
        return Observed(tree.Walk({}, replica.recorded_files(cfg, root) or 0), unchanged=True)
    with index_of(cfg, root) as index:
        # Only what the watcher's journal says changed since the last walk, if it can:
        # cheap, so never skipped (the index must hold what a push reads as the peers').
        paths, offset = markers.journaled(cfg, root, marker, last)
        if paths is not None and index.walked() and os.path.isdir(root):
            walk = tree.walk_paths(root, index, paths, index.files())
            return _record(cfg, root, walk, index, None, guard, marker, offset)
        reuse = fresh_s and os.path.isdir(root) and _passed_within(cfg, root, fresh_s)
        if not reuse and after_session and index.walked():
            reuse = tree.settled(root, index.folders(), index.root_mtime())
        if reuse:
            return Observed(tree.Walk({}, index.files(), root_mtime=index.root_mtime()))
        previous = index.all()
        return _record(cfg, root, tree.walk(root, previous), index, previous, guard, marker,
                       offset)


def observe_paths(cfg: Config, root: str, paths: list[str]) -> None:
    """Walk paths that a peer's push just wrote (the caller holds the replica's lock):
    indexed, the watcher finds them no news; what they replaced goes into the history."""
    with index_of(cfg, root) as index:
        if index.walked():
            walk = tree.walk_paths(root, index, set(paths), index.files())
            _record(cfg, root, walk, index, None, False, None, None)


def _record(cfg: Config, root: str, walk: tree.Walk, index: replica_index.Index,
            previous: tree.Index | None, guard: bool, marker: str | None,
            offset: int | None) -> Observed:
    """What a walk found, kept: the versions gone into the history, the index (previous:
    all of it before a whole walk), the guard's count; unless the guard refuses. offset
    None: a walk of paths not from the journal, which leaves the last walk's record."""
    refusal = replica.check(cfg, root, walk.files) if guard else ""
    if refusal:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(cfg, root, "walked"))  # no later session may skip the guard
        return Observed(walk, refusal)
    now = int(time.time())
    # A version that peers would refuse (a newline in its name, a time before 1970) is
    # left out of the history.
    seen: History = {v: Fate(DELETED, now, cfg.node) for v in walk.gone if history.valid(v)}
    seen.update({v: Fate(REPLACED, now, cfg.node) for v in walk.replaced if history.valid(v)})
    if seen:
        add(cfg, root, seen)
    if not index.walked():
        index.replace(walk.index, walk.root_mtime)
    elif walk.changed or walk.root_mtime != index.root_mtime():
        if previous is None:   # a walk of some paths: what it walked
            index.update(walk.removed, walk.index, walk.root_mtime)
        else:                  # a whole walk: only the rows that differ
            index.update([p for p in previous if p not in walk.index],
                         {p: e for p, e in walk.index.items() if previous.get(p) != e},
                         walk.root_mtime)
    # Its time: when a walk of the replica last passed the guard; in it, the marker read
    # before that walk (empty: none) and how far its journal was read.
    if offset is not None:
        state.write_json(_path(cfg, root, "walked"), {"marker": marker or "", "journal": offset})
    if walk.files != replica.recorded_files(cfg, root):
        replica.record(cfg, root, walk.files)
    for relative in walk.temporary:  # no session runs (we hold the lock): a killed one's
        with contextlib.suppress(PermissionError):   # the exchange may only read the root:
            replica.remove(os.path.join(root, relative))   # the next session removes it
    return Observed(walk, seen_go=len(seen))


def apply(cfg: Config, root: str, observed: Observed) -> list[str]:
    """Delete (into the backup area) what the replica still holds of the versions the
    history says were deleted; folders only once empty, and only those that held nothing
    newer than the deletion. The caller holds the replica's lock; the index and the
    guard's count follow."""
    stamp = str(_stamp(cfg, root))
    if observed.unchanged and _read_text(_path(cfg, root, "applied")) == stamp:
        return []   # neither the replica nor its history changed since the last time
    deletions = history.deletions(load(cfg, root))
    removed = _delete(cfg, root, observed, deletions) if deletions else []
    with open(_path(cfg, root, "applied"), "w", encoding="ascii") as out:
        out.write(stamp)
    return removed


def _delete(cfg: Config, root: str, observed: Observed,
            deletions: list[tuple[history.Version, Fate]]) -> list[str]:
    removed: list[str] = []
    emptied: set[str] = set()
    with index_of(cfg, root) as index:
        held = index.get_many(version.path for version, _ in deletions)
        for version, fate in deletions:
            entry = held.get(version.path)
            if entry is None or tree.version(version.path, entry) != version:
                continue
            path = os.path.join(root, version.path)
            try:
                if entry[0] == tree.FOLDER:
                    if os.listdir(path) or (version.path not in emptied
                                            and os.lstat(path).st_mtime > fate.time):
                        continue  # something inside, or made again after the deletion
                    os.rmdir(path)
                elif tree.current(root, version.path) == version:  # as the walk saw it
                    replica.to_backup(root, version.path)
                else:
                    continue
            except OSError:
                continue  # changed under our feet: the next session looks again
            del held[version.path]
            removed.append(version.path)
            emptied.add(os.path.dirname(version.path))
        if removed:
            index.update(removed, {})
            observed.walk.files = index.files()
            replica.record(cfg, root, observed.walk.files)
    observed.applied = removed
    return removed


def dead(cfg: Config, root: str, relative: str, known: History | None = None) -> bool:
    """Whether the version relative holds now is one that some node saw go."""
    version = tree.current(root, relative)
    return version is not None and version in (load(cfg, root) if known is None else known)


# The history file and its lock.

def load(cfg: Config, root: str) -> History:
    data = _read(_path(cfg, root, "history.json"))
    try:
        return history.parse(data.get("records", []), "history", time.time())
    except ConfigError:
        return {}


def add(cfg: Config, root: str, records: History) -> History:
    """Merge records into the replica's history; what was new in them. The costly part
    (reading this node's history, up to MAX_RECORDS, and comparing) runs before the
    lock: under it only the write, unless another session wrote in between."""
    before = _stamp(cfg, root)
    mine, new, merged = _merged(cfg, root, records)
    if not new and len(merged) == len(mine):
        return new  # nothing to write: no lock taken
    with state.locked(_path(cfg, root, "history.lock")):
        if _stamp(cfg, root) != before:
            mine, new, merged = _merged(cfg, root, records)
        if new or len(merged) != len(mine):
            state.write_json(_path(cfg, root, "history.json"),
                             {"root": root, "records": history.to_json(merged)})
    return new


def _merged(cfg: Config, root: str, records: History) -> tuple[History, History, History]:
    mine = load(cfg, root)
    new = history.newer(mine, records)
    return mine, new, history.expire(history.merge(mine, new), time.time(), cfg.backup_days)


def _stamp(cfg: Config, root: str) -> tuple | None:
    """What changes whenever the history file is written (a new file, renamed over)."""
    try:
        found = os.stat(_path(cfg, root, "history.json"))
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


def attach(cfg: Config) -> dict:
    """What this node sends with the peer-list exchange: every replica's history."""
    return {KEY: {root: history.to_json(load(cfg, root)) for root in cfg.roots}}


def take(cfg: Config, sent: dict, source: str) -> tuple[dict[str, int], list[str]]:
    """Merge the histories a peer sent with the exchange: ({root: records new here},
    problems). A peer that sends none (an older replimesh) changes nothing."""
    histories = sent.get(KEY, {})
    if not isinstance(histories, dict):
        return {}, [f"history from {source} is not an object: ignored"]
    new, problems = {}, []
    for root in cfg.roots:
        try:
            records = history.parse(histories.get(root, []), f"history of {root} from "
                                                             f"{source}", time.time())
        except ConfigError as error:
            problems.append(f"{error}: ignored")
            continue
        new[root] = len(add(cfg, root, records))
    return new, problems


def observe_if_free(cfg: Config, root: str) -> None:
    """Observe the replica if no session holds it (the serving side of an exchange, so
    that what was deleted here goes out in the answer); else the next exchange tells."""
    if not os.path.isdir(root):
        return
    try:
        with replica.held(cfg, root, "peer-list exchange", 0.0):
            observe(cfg, root)
    except replica.Busy:
        pass


# Files.

@contextlib.contextmanager
def index_of(cfg: Config, root: str) -> Iterator[replica_index.Index]:
    """The replica's index, open (replica_index.py). The JSON index of an older release
    is taken into it once, then removed: its deletions since are not lost in the move."""
    os.makedirs(cfg.replica_dir, mode=0o700, exist_ok=True)
    index = replica_index.Index(_path(cfg, root, "index.sqlite"))
    old = _path(cfg, root, "index.json")
    try:
        if os.path.exists(old):
            saved = _read(old)
            entries = saved.get("index")
            if not index.walked() and isinstance(entries, dict) and all(
                    isinstance(e, list) and len(e) == 6 for e in entries.values()):
                mtime = saved.get("root_mtime")
                index.replace(entries, mtime if isinstance(mtime, int) else 0)
            os.unlink(old)
        yield index
    finally:
        index.close()


def _last_walk(cfg: Config, root: str) -> tuple[str, int] | None:
    """(The change marker read before the last walk that passed the guard, how far that
    walk read the root's journal); None if there is none."""
    walked = _read(_path(cfg, root, "walked"))
    marker, offset = walked.get("marker"), walked.get("journal")
    if not isinstance(marker, str) or not marker or not isinstance(offset, int):
        return None
    return marker, offset


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read(200)
    except (OSError, UnicodeDecodeError):
        return ""


def _passed_within(cfg: Config, root: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(_path(cfg, root, "walked")).st_mtime < seconds
    except OSError:
        return False


def _read(path: str) -> dict:
    data = state.read_json(path)
    return data if isinstance(data, dict) else {}


def _path(cfg: Config, root: str, suffix: str) -> str:
    return replica.file_path(cfg, root, suffix)
