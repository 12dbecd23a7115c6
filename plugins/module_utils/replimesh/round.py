"""One sync round: this node against every active peer, one after the other."""

from __future__ import annotations

import os
import socket
import stat
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable

from . import peers as peer_list
from . import state, unison
from .config import Config
from .peers import Peer

OK, UNREACHABLE, FAILED = "ok", "unreachable", "failed"


@dataclass
class PeerResult:
    peer: str
    address: str
    result: str          # ok | unreachable | failed
    duration: float      # seconds
    files: int = 0       # files transferred, both ways, all roots
    bytes: int = 0       # size of the files transferred (Unison may send less: rsync deltas)
    conflicts: int = 0   # paths changed on both sides, left as they were
    message: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def run_round(cfg: Config, peers: list[Peer] | None = None,
              progress: Callable[[PeerResult], None] | None = None) -> list[PeerResult]:
    """Sync every root with every active peer in this node's rotated order; record it."""
    if peers is None:
        peers = peer_list.load(cfg.peers_file)
    results = []
    for peer in peer_list.rotated(peers, cfg.node):
        result = sync_peer(cfg, peer)
        results.append(result)
        if progress:
            progress(result)
    state.record(cfg.state_file, cfg.node, now(), [r.as_dict() for r in results])
    return results


def sync_peer(cfg: Config, peer: Peer) -> PeerResult:
    started = time.monotonic()
    missing = [root for root in cfg.roots if not os.path.isdir(root)]
    if missing:
        # A missing root (unmounted disk?) is not an empty one: never sync it.
        return PeerResult(peer.name, peer.address, FAILED, 0.0,
                          message=f"local root {missing[0]} does not exist: not syncing it")
    if not reachable(peer.address, cfg.ssh_port, cfg.connect_timeout):
        return PeerResult(peer.name, peer.address, UNREACHABLE,
                          round(time.monotonic() - started, 2),
                          message=f"no answer on {peer.address}:{cfg.ssh_port} within "
                                  f"{cfg.connect_timeout} s")
    result = PeerResult(peer.name, peer.address, OK, 0.0)
    problems = []
    for root in cfg.roots:
        session = unison.run_when_unlocked(cfg, root, peer)
        result.files += len(session.transferred)
        result.bytes += transferred_bytes(root, session.transferred)
        result.conflicts += len(session.conflicts)
        if session.exit_code not in (unison.EXIT_OK, unison.EXIT_SKIPPED):
            result.result = FAILED
            failed = (f" ({len(session.failed)} path(s) failed: "
                      f"{', '.join(session.failed[:3])})" if session.failed else "")
            problems.append(f"{root}: {session.error}{failed}")
        elif session.conflicts:
            problems.append(f"{root}: {len(session.conflicts)} conflict(s) left as they are: "
                            + ", ".join(session.conflicts[:3]))
    result.message = "; ".join(problems)
    result.duration = round(time.monotonic() - started, 2)
    return result


def reachable(address: str, port: int, timeout: float) -> bool:
    """Whether the peer's SSH port takes a connection: a dead peer costs at most timeout."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def transferred_bytes(root: str, paths: list[str]) -> int:
    """Size now held locally of the regular files among the transferred paths (deleted
    ones, symlinks, and files gone since the session count nothing)."""
    total = 0
    for relative in paths:
        path = os.path.join(root, relative)
        if os.path.isdir(path) and not os.path.islink(path):
            for folder, _, files in os.walk(path):
                total += sum(_size(os.path.join(folder, f)) for f in files)
        else:
            total += _size(path)
    return total


def _size(path: str) -> int:
    try:
        status = os.lstat(path)
    except OSError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def exit_code(results: list[PeerResult]) -> int:
    """0 when every reachable peer synced, 1 when any peer failed."""
    return 1 if any(r.result == FAILED for r in results) else 0


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
