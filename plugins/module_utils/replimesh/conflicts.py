"""Conflicts (a path changed on both sides since the last session) settled without loss.

Unison skips a conflict in batch mode. Under the policies newer and prefer:NODE, the
round then, on the local side only:
1. keeps the local version as a conflict copy next to it, named for this node and the
   version's modification time (`report.conflict-node1-20261123T101500Z.txt`);
2. runs a session that takes the peer's version in place (and sends the copy along);
3. if the local version wins, swaps the names, so that the peer's version becomes the
   copy named for the peer, and runs one more session to pass that on.
Both versions end up on both nodes. An edit always beats a deletion. Under keep-both,
nothing is settled: each node keeps its own version and the round reports it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from .config import PREFER, Config

KEEP_BOTH = "keep-both"


@dataclass
class Settled:
    path: str       # relative to the root
    winner: str     # the node whose version is in place ("" when both were deletions)
    copy: str       # the loser's conflict copy, relative to the root ("" if none)

    def describe(self) -> str:
        kept = f", the other kept as {self.copy}" if self.copy else ""
        return f"{self.path}: {self.winner or 'nobody'}'s version in place{kept}"


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
           session: Callable[[tuple[str, ...]], object]) -> list[Settled]:
    """Settle the conflicts on paths with one peer; session(extra Unison args) runs a
    session with it. The caller holds the replica's lock."""
    kept = {}  # path -> (copy name, local mtime) of the local versions set aside
    for path in paths:
        local = os.path.join(root, path)
        if os.path.lexists(local):
            mtime = os.lstat(local).st_mtime
            copy = copy_name(path, cfg.node, mtime)
            _duplicate(local, os.path.join(root, copy))
            kept[path] = (copy, mtime)
    scope = tuple(arg for path in paths for arg in ("-path", path)) + tuple(
        arg for copy, _ in kept.values() for arg in ("-path", copy))
    # -path sessions: a path emptied on purpose here must not stop the session.
    session(("-prefer", remote_root, "-confirmbigdel=false", *scope))
    settled, swapped = [], []
    for path in paths:
        local = os.path.join(root, path)
        if path not in kept:  # deleted here, changed there: the change stands
            settled.append(Settled(path, peer if os.path.lexists(local) else "", ""))
            continue
        copy, local_mtime = kept[path]
        if not os.path.lexists(local):  # changed here, deleted there: the change stands
            os.rename(os.path.join(root, copy), local)
            settled.append(Settled(path, cfg.node, ""))
            swapped += ["-path", path, "-path", copy]
            continue
        remote_mtime = os.lstat(local).st_mtime
        if winner(cfg.conflict_policy, cfg.node, peer, local_mtime, remote_mtime) == peer:
            settled.append(Settled(path, peer, copy))
            continue
        peer_copy = copy_name(path, peer, remote_mtime)
        os.rename(local, os.path.join(root, peer_copy))
        os.rename(os.path.join(root, copy), local)
        settled.append(Settled(path, cfg.node, peer_copy))
        swapped += ["-path", path, "-path", copy, "-path", peer_copy]
    if swapped:
        session(("-confirmbigdel=false", *swapped))
    return settled


def _duplicate(source: str, target: str) -> None:
    """A copy that survives Unison replacing the source (a hard link where possible:
    Unison writes a new file and renames it over the old one)."""
    if os.path.islink(source) or not os.path.isdir(source):
        try:
            os.link(source, target, follow_symlinks=False)
            return
        except OSError:
            pass
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    else:
        shutil.copytree(source, target, symlinks=True)
