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
import os
import re
import time

from . import replica, state
from .config import Config

HEARTBEAT_S = 2.0
STALE_S = 10.0
SUFFIX = "changes"
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
    """The watcher's side: a new epoch at start, a count per root."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.epoch = os.urandom(8).hex()
        self.counts = dict.fromkeys(cfg.roots, 0)
        self.touched = 0.0

    def start(self) -> None:
        os.makedirs(self.cfg.replica_dir, mode=0o700, exist_ok=True)
        for root in self.counts:
            self._write(root)

    def changed(self, root: str) -> None:
        self.counts[root] += 1
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path(self.cfg, root))

    def _write(self, root: str) -> None:
        state.write_json(path(self.cfg, root), f"{self.epoch}:{self.counts[root]}")


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
