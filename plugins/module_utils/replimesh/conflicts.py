"""Conflicts (a path changed on both sides since the last session) settled without loss.

Unison skips a conflict in batch mode. Under the policies newer and prefer:NODE, the
round then, on the local side only:
1. keeps the local version as a conflict copy next to it, named for this node and the
   version's modification time (`report.conflict-node1-20261123T101500Z.txt`);
2. runs a session that takes the peer's version in place (and sends the copy along);
3. if the local version wins, swaps the names, so that the peer's version becomes the
   copy named for the peer, and runs one more session to pass that on.
Both versions end up on both nodes. An edit beats a deletion. Under keep-both, nothing
is settled: each node keeps its own version and the round reports it.

A version that some node saw go (the mesh-wide history, history.py) is old news, not one
side of a conflict: it loses against the other side, a deletion included, and no copy
of it is kept (the node that saw it go made the newer state, and the backup areas hold
it). Settling checks each session's outcome, never overwrites a file, and is safe to
repeat: a conflict left half-settled by a failed session is settled by the next round.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from . import replica, unison
from .config import PREFER, Config

KEEP_BOTH = "keep-both"
_DONE = (unison.EXIT_OK, unison.EXIT_SKIPPED)   # a session that ran


class Outcome(Protocol):
    exit_code: int
    error: str


@dataclass
class Settled:
    path: str       # relative to the root
    winner: str     # the node whose version is in place ("" when both were deletions)
    copy: str       # the loser's conflict copy, relative to the root ("" if none)

    note: str = ""  # why no copy was kept, or why it is not settled

    def describe(self) -> str:
        kept = f", the other kept as {self.copy}" if self.copy else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.path}: {self.winner or 'nobody'}'s version in place{kept}{note}"


def copy_name(path: str, node: str, mtime: float) -> str:
    """`dir/report.txt` -> `dir/report.conflict-NODE-YYYYmmddTHHMMSSZ.txt`."""
    stem, ext = os.path.splitext(path)
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(mtime))
    return f"{stem}.conflict-{node}-{when}{ext}"


def winner(policy: str, local: str, remote: str, local_mtime: float, remote_mtime: float) -> str:
    """The node whose version stays in place when both sides hold one."""
    if policy.startswith(PREFER) and policy[len(PREFER):] in (local, remote):
        return policy[len(PREFER):]
    if local_mtime != remote_mtime:
        return local if local_mtime > remote_mtime else remote
    return min(local, remote)  # same time: the same answer on both nodes


def settle(cfg: Config, root: str, peer: str, remote_root: str, paths: list[str],
           session: Callable[[tuple[str, ...]], Outcome],
           dead: Callable[[str], bool] = lambda path: False) -> list[Settled]:
    """Settle the conflicts on paths with one peer; session(extra Unison args) runs a
    session with it; dead(path) says whether the version path holds here now is old news.
    The caller holds the replica's lock."""
    kept = {}  # path -> (copy name, local mtime) of the live local versions set aside
    old_here = set()
    for path in paths:
        local = os.path.join(root, path)
        if not os.path.lexists(local):
            continue
        if dead(path):
            old_here.add(path)
            continue
        mtime = os.lstat(local).st_mtime
        try:
            kept[path] = (_duplicate(root, path, copy_name(path, cfg.node, mtime)), mtime)
        except OSError as error:
            return _undo(root, paths, kept, f"no copy of {path} could be made "
                                            f"({error.strerror})")
    scope = tuple(arg for path in paths for arg in ("-path", path)) + tuple(
        arg for copy, _ in kept.values() for arg in ("-path", copy))
    # -path sessions: a path emptied on purpose here must not stop the session.
    first = session(("-prefer", remote_root, "-confirmbigdel=false", *scope))
    if first.exit_code not in _DONE:
        return _undo(root, paths, kept, first.error)
    settled, again = [], []
    for path in paths:
        try:
            settled.append(_decide(cfg, root, peer, path, kept.get(path), path in old_here,
                                   dead, again))
        except OSError as error:  # changed under our feet: the next round tries again
            settled.append(Settled(path, "", "", f"not settled: {error.strerror}"))
    if again:
        session(("-confirmbigdel=false", *again))
    return settled


def _decide(cfg: Config, root: str, peer: str, path: str, kept: tuple[str, float] | None,
            old_here: bool, dead: Callable[[str], bool], again: list[str]) -> Settled:
    """Which version stays at path once the peer's is here (the first session); the
    paths to pass on go to again."""
    local = os.path.join(root, path)
    theirs = os.path.lexists(local)
    if kept is None:  # nothing here, or an old version: the peer's state stands...
        if theirs and not old_here and dead(path):  # ...unless it is old news too
            replica.to_backup(root, path)
            again += ["-path", path]
            return Settled(path, "", "", "the other version was old news")
        note = "this node's version was old news" if old_here else ""
        return Settled(path, peer if theirs else "", "", note)
    copy, local_mtime = kept
    if not theirs:  # changed here, deleted there: the change stands
        os.rename(os.path.join(root, copy), local)
        again += ["-path", path, "-path", copy]
        return Settled(path, cfg.node, "")
    if dead(path):  # the peer's version is old news: ours stands, no copy of theirs
        os.replace(os.path.join(root, copy), local)
        again += ["-path", path, "-path", copy]
        return Settled(path, cfg.node, "", f"{peer}'s version was old news")
    remote_mtime = os.lstat(local).st_mtime
    if winner(cfg.conflict_policy, cfg.node, peer, local_mtime, remote_mtime) == peer:
        return Settled(path, peer, copy)
    peer_copy = _free(root, copy_name(path, peer, remote_mtime))
    os.rename(local, os.path.join(root, peer_copy))
    os.rename(os.path.join(root, copy), local)
    again += ["-path", path, "-path", copy, "-path", peer_copy]
    return Settled(path, cfg.node, peer_copy)


def _undo(root: str, paths: list[str], kept: dict, error: str) -> list[Settled]:
    """The first session failed: drop the copies that are still the version in place;
    one whose original the session replaced stays, the only place that version is."""
    settled = []
    for path in paths:
        copy = kept.get(path, ("", 0))[0]
        if copy:
            with contextlib.suppress(OSError):
                if os.path.samefile(os.path.join(root, path), os.path.join(root, copy)):
                    os.unlink(os.path.join(root, copy))
                    copy = ""
        settled.append(Settled(path, "", copy, f"not settled: {error or 'session failed'}"))
    return settled


def _duplicate(root: str, path: str, name: str) -> str:
    """A copy of path that survives Unison replacing it (a hard link where possible:
    Unison writes a new file and renames it over the old one), under name or, if that is
    taken by another file, a free variant of it; the name used."""
    source = os.path.join(root, path)
    target = os.path.join(root, name)
    if os.path.lexists(target):
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target) or _same_content(source, target):
                return name  # left by an earlier attempt: reuse it
        name = _free(root, name)
        target = os.path.join(root, name)
    if os.path.islink(source) or not os.path.isdir(source):
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError:
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
    else:
        shutil.copytree(source, target, symlinks=True)
    return name


def _free(root: str, name: str) -> str:
    """name, or name with -2, -3... before its extension: the first not taken."""
    stem, ext = os.path.splitext(name)
    candidate, number = name, 2
    while os.path.lexists(os.path.join(root, candidate)):
        candidate = f"{stem}-{number}{ext}"
        number += 1
    return candidate


def _same_content(a: str, b: str) -> bool:
    if os.path.islink(a) or os.path.islink(b) or os.path.isdir(a) or os.path.isdir(b):
        return False
    return os.path.getsize(a) == os.path.getsize(b) and filecmp.cmp(a, b, shallow=False)
