"""One sync round: this node against every active peer, one after the other."""

from __future__ import annotations

import os
import socket
import stat
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from . import membership, state, unison
from . import peers as peer_list
from .config import Config
from .errors import ConfigError, ReplimeshError
from .peers import Entry

OK, UNREACHABLE, FAILED, REMOVED = "ok", "unreachable", "failed", "removed"


@dataclass
class PeerResult:
    peer: str
    address: str
    result: str          # ok | unreachable | failed | removed (learned in this session)
    duration: float      # seconds
    files: int = 0       # files transferred, both ways, all roots
    bytes: int = 0       # size of the files transferred (Unison may send less: rsync deltas)
    conflicts: int = 0   # paths changed on both sides, left as they were
    learned: list[str] = field(default_factory=list)  # peer-list entries taken in
    message: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class Removed(ReplimeshError):
    """This node is removed from the mesh: it syncs with nobody."""


def run_round(cfg: Config, progress: Callable[[PeerResult], None] | None = None,
              exchange: bool = True) -> list[PeerResult]:
    """Sync every root with every active peer in this node's rotated order; record it.

    Each session starts with a peer-list exchange; the list is read again after each
    peer, so a peer learned in this round is synced in this round, and one that became
    removed is not contacted.
    """
    peers = membership.load(cfg)
    results: list[PeerResult] = []
    done: set[str] = set()
    while True:
        _refuse_if_removed(cfg, peers)
        pending = [e for e in peer_list.rotated(peers, cfg.node) if e.name not in done]
        if not pending:
            break
        done.add(pending[0].name)
        result = sync_peer(cfg, pending[0], exchange)
        results.append(result)
        if progress:
            progress(result)
        peers = membership.load(cfg)
    state.record(cfg.state_file, cfg.node, now(), [r.as_dict() for r in results])
    return results


def _refuse_if_removed(cfg: Config, peers: peer_list.Peers) -> None:
    if cfg.node in peers and not peers[cfg.node].active:
        raise Removed(f"{cfg.node} is removed from the mesh: it syncs with nobody "
                      "(its data is left as it is)")


def sync_peer(cfg: Config, peer: Entry, exchange: bool = True) -> PeerResult:
    started = time.monotonic()
    missing = [root for root in cfg.roots if not os.path.isdir(root)]
    if missing:
        # A missing root (unmounted disk?) is not an empty one: never sync it.
        return PeerResult(peer.name, peer.addresses[0], FAILED, 0.0,
                          message=f"local root {missing[0]} does not exist: not syncing it")
    address = first_reachable(peer.addresses, cfg.ssh_port, cfg.connect_timeout)
    if address is None:
        return PeerResult(peer.name, peer.addresses[0], UNREACHABLE,
                          round(time.monotonic() - started, 2),
                          message=f"no answer on {', '.join(peer.addresses)} port "
                                  f"{cfg.ssh_port} within {cfg.connect_timeout} s")
    result = PeerResult(peer.name, address, OK, 0.0)
    problems = []
    if exchange:
        try:
            taken = membership.exchange(cfg, address)
            result.learned = taken.changed
            _refuse_if_removed(cfg, taken.after)  # the peer would refuse the sessions
            if taken.ignored:
                problems.append(f"ignored entries not signed by the operator: "
                                f"{', '.join(taken.ignored)}")
            if not taken.after[peer.name].active:
                result.result = REMOVED
                result.message = f"{peer.name} is removed from the mesh: not synced"
                result.duration = round(time.monotonic() - started, 2)
                return result
        except ConfigError as error:
            problems.append(str(error))
    for root in cfg.roots:
        session = unison.run_when_unlocked(cfg, root, address)
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


def first_reachable(addresses: tuple[str, ...], port: int, timeout: float) -> str | None:
    """The first of a peer's addresses whose SSH port answers, or None."""
    return next((a for a in addresses if reachable(a, port, timeout)), None)


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
