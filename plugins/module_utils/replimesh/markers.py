"""Change markers: a cheap way to know that a replica did not change since some moment.

While the watcher runs, it keeps one marker per root in replica_dir, "EPOCH:COUNT": it
counts every batch of events in the root (whoever made them: people, sessions, the
history) and starts a new epoch each time it starts. It touches the markers every few
seconds: a marker not touched for STALE_S means no watcher, and is no marker at all.

What a marker promises: if it reads the same at two moments, nothing in the root changed
between the first reading and the second that a scan after the first would not see.
So a replica may be taken as unchanged since a walk, or since a session that found the
two replicas equal, when its marker now is the one read BEFORE that walk or session
(a change just before the first reading, whose event the watcher had not counted yet,
was seen by the walk or session itself; one after it changes the count).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

from . import replica, state
from .config import Config

HEARTBEAT_S = 2.0
STALE_S = 10.0
SUFFIX = "changes"
JOURNAL = "journal"
# A journal past this size starts a new epoch (the next walk is a full one); one walk of
# more than MAX_JOURNALED paths is a full one too.
JOURNAL_MAX_BYTES = 8 << 20
MAX_JOURNALED = 20_000
KEY = "changes"   # the exchange's field: {root: the peer's marker, or null}
_VALID = re.compile(r"[0-9a-f]{1,32}:[0-9]{1,18}")


def path(cfg: Config, root: str) -> str:
    return replica.file_path(cfg, root, SUFFIX)


def read(cfg: Config, root: str) -> str | None:
    """The root's marker now; None when no watcher keeps it."""
    try:
        touched = os.stat(path(cfg, root)).st_mtime
    except OSError:
        return None
    marker = state.read_json(path(cfg, root))
    return marker if time.time() - touched <= STALE_S and valid(marker) else None


def valid(marker: object) -> bool:
    """Whether a peer's marker is one (peers' input: anything else counts as none)."""
    return isinstance(marker, str) and bool(_VALID.fullmatch(marker))


def sent(answer: dict, root: str) -> str | None:
    """The peer's marker of root in its exchange answer (hostile input: checked)."""
    changes = answer.get(KEY)
    marker = changes.get(root) if isinstance(changes, dict) else None
    return marker if valid(marker) else None


class Keeper:
    """The watcher's side: a new epoch at start, a count per root, and the root's journal
    of the paths that changed in this epoch, each written before it is counted."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.epochs = {root: "" for root in cfg.roots}
        self.counts = dict.fromkeys(cfg.roots, 0)
        self.broken: set[str] = set()   # roots whose marker was taken away
        self.touched = 0.0

    def start(self) -> None:
        os.makedirs(self.cfg.replica_dir, mode=0o700, exist_ok=True)
        for root in self.counts:
            self._new_epoch(root)

    def changed(self, root: str, paths: set[str]) -> None:
        """paths (relative; "" for the whole root) may have changed in root. A journal or
        marker that cannot be written (a full disk) takes the marker away until a new
        epoch can start: a marker must never move past a change its journal misses."""
        lines = "".join(json.dumps(p) + "\n" for p in sorted(paths))
        try:
            with open(journal_path(self.cfg, root), "a", encoding="ascii") as journal:
                journal.write(lines)
                full = journal.tell() > JOURNAL_MAX_BYTES
            if full or root in self.broken:
                self._new_epoch(root)
                self.broken.discard(root)
                return
            self.counts[root] += 1
            self._write(root)
        except OSError:
            self.broken.add(root)
            with contextlib.suppress(OSError):
                os.unlink(path(self.cfg, root))

    def _new_epoch(self, root: str) -> None:
        """A journal of its own: nothing before it is in it, so the next walk is full."""
        self.epochs[root], self.counts[root] = os.urandom(8).hex(), 0
        with open(journal_path(self.cfg, root) + ".new", "w", encoding="ascii") as journal:
            journal.write(json.dumps({"epoch": self.epochs[root]}) + "\n")
        os.replace(journal_path(self.cfg, root) + ".new", journal_path(self.cfg, root))
        self._write(root)

    def heartbeat(self) -> None:
        """Touch every marker (at most every HEARTBEAT_S)."""
        now = time.time()
        if now - self.touched < HEARTBEAT_S:
            return
        self.touched = now
        for root in self.counts:
            with contextlib.suppress(OSError):
                os.utime(path(self.cfg, root))

    def stop(self) -> None:
        """No marker any more (the watcher stops, or its watches are gone)."""
        for root in self.counts:
            for name in (path(self.cfg, root), journal_path(self.cfg, root)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)

    def _write(self, root: str) -> None:
        state.write_json(path(self.cfg, root), f"{self.epochs[root]}:{self.counts[root]}")


# The journal, read by whoever walks the replica (markers.py's promise, per path): when
# the marker read before a walk has the epoch of the last walk's, every change since that
# walk is journaled after the offset the last walk read up to, so a walk of those paths
# finds what a walk of the whole root would.

def journal_path(cfg: Config, root: str) -> str:
    return replica.file_path(cfg, root, JOURNAL)


def journaled(cfg: Config, root: str, marker: str | None,
              last: tuple[str, int] | None) -> tuple[set[str] | None, int]:
    """(The paths changed since the last walk, None when the whole root must be walked;
    the offset to read from next time). marker: read before this walk; last: the marker
    read before the last walk and its offset."""
    if marker is None:
        return None, 0
    epoch = marker.split(":")[0]
    try:
        with open(journal_path(cfg, root), "rb") as journal:
            header = json.loads(journal.readline(200) or b"null")
            if not isinstance(header, dict) or header.get("epoch") != epoch:
                return None, 0   # a journal of another epoch: read again next time
            start = journal.tell()
            if last is not None and last[0].split(":")[0] == epoch and last[1] >= start:
                start = last[1]
            else:
                last = None
            journal.seek(start)
            text = journal.read(JOURNAL_MAX_BYTES + 1)
    except (OSError, ValueError):
        return None, 0
    complete = text[:text.rfind(b"\n") + 1]   # a line being written is read next time
    offset = start + len(complete)
    if last is None:
        return None, offset
    paths: set[str] = set()
    for line in complete.splitlines():
        try:
            changed = json.loads(line)
        except ValueError:
            return None, offset
        if not isinstance(changed, str) or changed == "" or len(paths) >= MAX_JOURNALED:
            return None, offset
        paths.add(changed)
    return paths, offset


# A pair's last session that found both replicas equal (exit 0, no conflict, no failed
# path): the two markers read before it. While both read the same, a session of that
# pair would find nothing to do; a full round skips it.

def _pairs_path(cfg: Config, root: str) -> str:
    return replica.file_path(cfg, root, "pairs.json")


def equal_since(cfg: Config, root: str, peer: str, mine: str | None,
                theirs: str | None) -> bool:
    """Whether the pair's replicas are as the last session that found them equal left
    them: both markers (this node's and the peer's, now) are the ones read before it."""
    if mine is None or theirs is None:
        return False
    pairs = state.read_json(_pairs_path(cfg, root))
    return isinstance(pairs, dict) and pairs.get(peer) == [mine, theirs]


def remember(cfg: Config, root: str, peer: str, mine: str | None,
             theirs: str | None) -> None:
    """After a session of the pair: the markers read before it if it found the replicas
    equal (none of them None), else nothing (the next full round runs a session)."""
    pairs = state.read_json(_pairs_path(cfg, root))
    pairs = pairs if isinstance(pairs, dict) else {}
    kept = [mine, theirs] if mine is not None and theirs is not None else None
    if pairs.get(peer) == kept:
        return
    if kept is None:
        pairs.pop(peer, None)
    else:
        pairs[peer] = kept
    state.write_json(_pairs_path(cfg, root), pairs)
