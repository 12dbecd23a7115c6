"""The mesh-wide history of a replica: which versions of which paths are old news.

Unison keeps one archive per pair of nodes, so a change that reached two nodes through
a third is news to that pair: a deleted file comes back, an old version looks like an
edit. replimesh keeps its own record on top, the same on every node once spread: the
versions (path, content digest, modification time) that a node saw go, deleted or
replaced by another version. A version that a node saw go can never be news again:
  - a file that still holds a deleted version is deleted (into the backup area), on
    every node, before each session, so the pair's Unison sees no file on either side;
  - in a conflict, a version some node saw replaced or deleted loses against the other
    side without a conflict copy (the newer state was made by a node that had seen it).
See docs/history.md for the choice, and for what it covers and what it cannot.

A history maps each version to what became of it; merge keeps, per version, the
greatest record (deleted before replaced, then the later time, then the node name), so
it is a join: commutative, associative, idempotent, and every node ends with the same
history whatever the order in which histories reach it. Records expire after the backup
retention, with the content they name.

Pure functions only: a replica's history on a node is kept by replica_history.py.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from . import joins, peer_input, peers
from .errors import ConfigError

DELETED, REPLACED = "deleted", "replaced"
KINDS = (REPLACED, DELETED)      # in rank order: deleted wins a tie
DIRECTORY = "dir"                # the digest of a folder's version (a folder has no content)
# What one node may send of one replica's history: enough for months of busy edits, and
# bounded, since a peer's input is hostile.
MAX_RECORDS = 100_000
_DIGEST = re.compile(r"(?:[0-9a-f]{64}|dir)\Z")
MAX_PATH = 4096
MAX_TIME = 2**40
# A record dated further ahead than this (clocks differ a little) is refused: it would
# never expire.
FUTURE_SLACK_S = 86400


@dataclass(frozen=True, order=True)
class Version:
    path: str        # relative to the root, '/'-separated
    digest: str      # sha256 of the content (of the target, for a symlink), or "dir"
    mtime: int       # modification time in whole seconds (Unison passes it on: -times)


@dataclass(frozen=True, order=True)
class Fate:
    kind: str        # deleted | replaced
    time: int        # when the node saw it go (its clock, seconds)
    node: str        # which node saw it go

    def rank(self) -> tuple:
        return (KINDS.index(self.kind), self.time, self.node)


History = dict[Version, Fate]


def join(a: Fate, b: Fate) -> Fate:
    return a if a.rank() >= b.rank() else b


def merge(mine: History, theirs: History) -> History:
    """Every version of both, the greatest fate of each."""
    return joins.merge(mine, theirs, join)


def newer(mine: History, theirs: History) -> History:
    """Their records that would change mine if merged in."""
    return joins.newer(mine, theirs, join)


def expire(history: History, now: float, days: float) -> History:
    """The records younger than days (the backup retention: what they name is gone from
    every backup area after it), at most MAX_RECORDS of them, the youngest kept."""
    limit = now - days * 86400
    kept = {v: f for v, f in history.items() if f.time >= limit}
    if len(kept) > MAX_RECORDS:
        youngest = sorted(kept, key=lambda v: (kept[v].time, v), reverse=True)[:MAX_RECORDS]
        kept = {v: kept[v] for v in youngest}
    return kept


def deletions(history: History) -> list[tuple[Version, Fate]]:
    """The deleted versions, deepest paths first (files before the folders that hold them)."""
    found = [(v, f) for v, f in history.items() if f.kind == DELETED]
    return sorted(found, key=lambda item: (-item[0].path.count("/"), item[0]))


def clean_path(path: Any) -> bool:
    """A relative path that stays inside the root: no '..', no absolute path, no empty part."""
    return (isinstance(path, str) and 0 < len(path) <= MAX_PATH and not path.startswith("/")
            and "\0" not in path and "\n" not in path
            and posixpath.normpath(path) == path and path.split("/")[0] != "..")


def valid(version: Version) -> bool:
    """Whether peers take a record of this version (parse_record's checks)."""
    return (clean_path(version.path) and bool(_DIGEST.match(version.digest))
            and 0 <= version.mtime < MAX_TIME)


def to_json(history: History) -> list[list]:
    return [[v.path, v.digest, v.mtime, f.kind, f.node, f.time]
            for v, f in sorted(history.items())]


def parse(data: Any, origin: str, now: float) -> History:
    """A history read from JSON (a peer's: hostile); anything malformed is a ConfigError
    naming the record."""
    if not isinstance(data, list):
        raise ConfigError(f"{origin}: expected a list of records")
    if len(data) > MAX_RECORDS:
        raise ConfigError(f"{origin}: {len(data)} records, more than {MAX_RECORDS}")
    history: History = {}
    for number, item in enumerate(data, 1):
        version, what = parse_record(item, f"{origin}: record {number}", now)
        history[version] = join(history[version], what) if version in history else what
    return history


def parse_record(item: Any, where: str, now: float) -> tuple[Version, Fate]:
    if not isinstance(item, list) or len(item) != 6:
        raise ConfigError(f"{where}: expected [path, digest, mtime, kind, node, time]")
    path, digest, mtime, kind, node, time = item
    if not clean_path(path):
        raise ConfigError(f"{where}: path {peer_input.preview(path)} is not a clean relative "
                          "path")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ConfigError(f"{where}: digest must be 64 hex digits or \"dir\"")
    for name, value in (("mtime", mtime), ("time", time)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_TIME:
            raise ConfigError(f"{where}: {name} must be a time in seconds")
    if time > now + FUTURE_SLACK_S:
        raise ConfigError(f"{where}: dated in the future")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    if not isinstance(node, str) or not peers.NAME.match(node):
        raise ConfigError(f"{where}: node must be a node name")
    return Version(path, digest, mtime), Fate(kind, time, node)
