"""One sync round: this node against every active peer, one after the other.

A round converges every reachable node by itself: a gather pass syncs with each peer in
turn, so this node ends up holding every change; a second pass then goes back only to
the peers synced before the last change that came in, and only for the roots that
changed. Every session holds the replica's lock on both sides (see replica.py).
"""

from __future__ import annotations

import os
import socket
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from . import (
    conflicts,
    markers,
    membership,
    peer_ssh,
    push,
    replica,
    replica_history,
    state,
    swarm_mesh,
    unison,
)
from . import peers as peer_list
from .config import Config
from .errors import ConfigError, ReplimeshError, Unreachable
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
    conflicts: int = 0   # paths changed on both sides since the last session
    learned: list[str] = field(default_factory=list)  # peer-list entries taken in
    message: str = ""
    sessions: int = 0    # Unison sessions run with this peer
    settled: list[str] = field(default_factory=list)  # how each conflict was settled
    deleted: int = 0     # paths deleted here because another node deleted them (history)
    # Roots with no session: neither replica changed since the pair's last session that
    # found them equal (their change markers say so, markers.py).
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class Removed(ReplimeshError):
    """This node is removed from the mesh: it syncs with nobody."""


# What a round syncs: {root: the paths in it to sync (relative), None for all of it}.
Scope = dict[str, "list[str] | None"]


def run_round(cfg: Config, progress: Callable[[PeerResult], None] | None = None,
              exchange: bool = True, second_pass: bool = True,
              allow_deletions: bool = False, scope: Scope | None = None) -> list[PeerResult]:
    """Sync every root with every active peer in this node's rotated order, then go back
    to the peers that missed a change (second_pass); record it.

    Each peer's sessions start with a peer-list exchange; the list is read again after
    each peer, so a peer learned in this round is synced in this round, and one that
    became removed is not contacted. allow_deletions takes each root as it is now as
    intended, past the deletion guard. scope: the roots and paths to sync (the watcher's
    rounds), every root in full by default. Rounds of this node run one at a time.
    """
    # The node's round lock: a cron round and the watcher's wait on each other.
    with state.locked(os.path.join(os.path.dirname(cfg.state_file), "round.lock")), \
            peer_ssh.sharing():
        return _run_round(cfg, progress, exchange, second_pass, allow_deletions,
                          scope or {root: None for root in cfg.roots})


def _run_round(cfg: Config, progress: Callable[[PeerResult], None] | None, exchange: bool,
               second_pass: bool, allow_deletions: bool, scope: Scope) -> list[PeerResult]:
    peers = membership.load(cfg)
    _refuse_if_removed(cfg, peers)
    extra: tuple[str, ...] = ()
    if allow_deletions:
        accept_deletions(cfg)
        extra = ("-confirmbigdel=false",)  # Unison's own guard would stop an emptied root
    reach = Reach(cfg, [e for e in peer_list.rotated(peers, cfg.node)],
                  share=exchange or len(scope) > 1)
    # A watcher's round: its changed files go to every peer at once (push.py), each
    # peer's exchange and sessions below only for what the push left (mostly nothing).
    pushed = {} if allow_deletions else _push_all(cfg, reach, peer_list.rotated(peers, cfg.node),
                                                  scope)
    results: list[PeerResult] = []
    incoming: dict[str, list[int]] = {}  # root -> changes in from each peer, in order
    histories: dict[str, list[int]] = {}  # root -> history records new from each peer
    while True:
        _refuse_if_removed(cfg, peers)
        done = {r.peer for r in results}
        pending = [e for e in peer_list.rotated(peers, cfg.node) if e.name not in done]
        if not pending:
            break
        came_in: dict[str, int] = {}
        heard: dict[str, int] = {}
        # A root that changed in this round is synced with every later peer: its marker
        # may not have moved yet (the watcher counts the change a moment later).
        changed = {root for root, counts in incoming.items() if any(counts)}
        gave = pushed.get(pending[0].name)   # {root: what the push did}, if pushed
        left = _left(scope, gave)
        if gave is not None and not left:
            result = PeerResult(pending[0].name, reach.address(pending[0]) or "", OK, 0.0)
        else:
            result = sync_peer(cfg, pending[0], exchange, incoming=came_in, heard=heard,
                               extra=extra, scope=left, reach=reach, changed=changed)
        for done in (gave or {}).values():
            result.files, result.bytes = result.files + done.files, result.bytes + done.bytes
            result.duration = round(result.duration + done.duration, 2)
        for root in scope:
            incoming.setdefault(root, []).append(came_in.get(root, 0))
            histories.setdefault(root, []).append(heard.get(root, 0))
        results.append(result)
        if progress:
            progress(result)
        peers = membership.load(cfg)
    if second_pass:
        # Records heard go on to the peers before in a full round; a watcher's round for
        # some paths leaves them to the next exchange (they are the peers' own records
        # of what the push replaced, no news to anyone).
        news = {root: [a + (b if scope[root] is None else 0)
                       for a, b in zip(incoming[root], histories[root])]
                for root in incoming}
        for index, roots in behind(news, results).items():
            result = results[index]
            entry = peers.get(result.peer)
            if entry is None or not entry.active:
                continue
            # A peer synced before records it has not heard of came in hears them now.
            tell = any(n for root in roots for n in histories[root][index + 1:])
            again = sync_peer(cfg, entry, exchange=exchange and tell,
                              address=result.address, extra=extra,
                              scope={root: scope[root] for root in roots}, changed=set(roots))
            merge(result, again)
            if progress:
                again.message = "; ".join(m for m in ("second pass", again.message) if m)
                progress(again)
    reach.pool.shutdown(wait=False)
    state.record(cfg.state_file, cfg.node, now(), [r.as_dict() for r in results])
    return results


def _push_all(cfg: Config, reach: Reach, entries: list[Entry],
              scope: Scope) -> dict[str, dict[str, push.Pushed]]:
    """{peer: {root: what the push did}} for the roots of scope limited to some paths:
    each root observed and its changed files read once, under its lock (what the peers
    are believed to hold read before: the index at the round's start), then sent to
    every reachable peer at once. A root whose lock is held, or that the deletion guard
    refuses, is not pushed: its sessions say why."""
    messages = {}
    for root, paths in scope.items():
        if not paths or not os.path.isdir(root):
            continue
        before = push.bases(cfg, root, paths)
        try:
            with replica.held(cfg, root, f"round of {cfg.node} (push)", cfg.lock_wait):
                observed = replica_history.observe(cfg, root, fresh_s=replica_history.FRESH_S)
                if observed.refusal:
                    continue
                replica_history.apply(cfg, root, observed)
                messages[root] = push.prepare(root, paths, before)
        except replica.Busy:
            continue
    if not messages or not entries:
        return {}

    def to(entry: Entry) -> dict[str, push.Pushed] | None:
        address = reach.address(entry)
        if address is None:
            return None   # its sessions report it unreachable
        return {root: push.deliver(cfg, address, root, *message)
                for root, message in messages.items()}

    with ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
        futures = {entry.name: pool.submit(to, entry) for entry in entries}
        done = {name: future.result() for name, future in futures.items()}
    return {name: gave for name, gave in done.items() if gave is not None}


def _left(scope: Scope, gave: dict[str, push.Pushed] | None) -> Scope:
    """What of scope a peer's sessions still sync after the push (gave, if any)."""
    left: Scope = {}
    for root, paths in scope.items():
        if paths is None or gave is None or root not in gave:
            left[root] = paths
        elif gave[root].rest:
            left[root] = gave[root].rest
    return left


def behind(incoming: dict[str, list[int]], results: list[PeerResult]) -> dict[int, list[str]]:
    """{index of a peer synced before the last change that came in: the roots to sync
    with it again}. A peer synced after it already holds every change."""
    again: dict[int, list[str]] = {}
    for root, changes in incoming.items():
        last = max((i for i, n in enumerate(changes) if n), default=-1)
        for index in range(last):
            if results[index].result == OK:
                again.setdefault(index, []).append(root)
    return again


def merge(first: PeerResult, again: PeerResult) -> None:
    """Fold a second-pass result into the peer's first one."""
    first.files += again.files
    first.bytes += again.bytes
    first.sessions += again.sessions
    first.conflicts += again.conflicts
    first.settled += again.settled
    first.deleted += again.deleted
    first.duration = round(first.duration + again.duration, 2)
    if again.result != OK:
        first.result = again.result
    first.message = "; ".join(m for m in (first.message, again.message) if m)


def accept_deletions(cfg: Config) -> None:
    """Take every existing root as it is now: its losses are deletions to spread, and
    its count is the guard's reference."""
    for root in cfg.roots:
        if os.path.isdir(root):
            with replica.held(cfg, root, f"{cfg.node} accepting deletions", cfg.lock_wait):
                replica_history.observe(cfg, root, guard=False)


def _refuse_if_removed(cfg: Config, peers: peer_list.Peers) -> None:
    if cfg.node in peers and not peers[cfg.node].active:
        raise Removed(f"{cfg.node} is removed from the mesh: it syncs with nobody "
                      "(its data is left as it is)")


def open_connections(cfg: Config) -> None:
    """Open the shared connection to every active peer that has none, side by side, and
    wait for them (within the watcher's peer_ssh.sharing()). The watcher calls it as a
    burst of changes made here starts, so the handshakes overlap the burst's settle time
    instead of adding to its round."""
    entries = [e for e in peer_list.rotated(membership.load(cfg), cfg.node)
               if not any(peer_ssh.is_open(a) for a in e.addresses)]
    if entries:
        reach = Reach(cfg, entries, share=True)
        for entry in entries:
            reach.address(entry)
        reach.pool.shutdown()


class Reach:
    """The first reachable address of every peer of the round, looked for at once when
    the round starts, each peer's shared SSH connection opened with it (share): a round
    pays the handshakes, and a dead peer's connect timeout, side by side rather than
    one peer after the other. A peer learned during the round is looked for when asked."""

    def __init__(self, cfg: Config, entries: list[Entry], share: bool):
        self.cfg, self.share = cfg, share
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(entries))))
        self.found: dict[str, Future] = {e.name: self.pool.submit(self._look, e)
                                         for e in entries}

    def address(self, entry: Entry) -> str | None:
        if entry.name not in self.found:
            self.found[entry.name] = self.pool.submit(self._look, entry)
        return self.found[entry.name].result()

    def _look(self, entry: Entry) -> str | None:
        address = first_reachable(entry.addresses, self.cfg.ssh_port, self.cfg.connect_timeout)
        if address is not None and self.share:
            failed = peer_ssh.connect(self.cfg, address)   # else each call connects itself
            if failed and peer_ssh.unreachable(failed):
                return None   # it took the probe's connection, not ssh's: gone since
        return address


def sync_peer(cfg: Config, peer: Entry, exchange: bool = True, address: str | None = None,
              incoming: dict[str, int] | None = None, heard: dict[str, int] | None = None,
              extra: tuple[str, ...] = (), scope: Scope | None = None,
              reach: Reach | None = None, changed: set[str] = frozenset()) -> PeerResult:
    """Sync the scope (every root in full by default) with one peer; note in
    incoming[root] how many changes came in from it (deletions the history made here
    included), in heard[root] how many history records were new. extra: more Unison
    arguments for every session. reach: the round's search for its peers' addresses.
    changed: roots that changed earlier in the round, synced whatever their markers say."""
    started = time.monotonic()
    scope = scope or {root: None for root in cfg.roots}
    roots = list(scope)
    if not any(os.path.isdir(root) for root in roots):
        # A missing root (unmounted disk?) is not an empty one: never sync it.
        return PeerResult(peer.name, peer.addresses[0], FAILED, 0.0,
                          message=replica.check(cfg, roots[0]))
    if address is None:
        address = (reach.address(peer) if reach else
                   first_reachable(peer.addresses, cfg.ssh_port, cfg.connect_timeout))
    if address is None:
        return PeerResult(peer.name, peer.addresses[0], UNREACHABLE,
                          round(time.monotonic() - started, 2),
                          message=f"no answer on {', '.join(peer.addresses)} port "
                                  f"{cfg.ssh_port} within {cfg.connect_timeout} s")
    result = PeerResult(peer.name, address, OK, 0.0)
    problems = []
    new_records: dict[str, int] = {}
    theirs: dict[str, str | None] = {}   # the peer's change markers, from the exchange
    if exchange:
        for root in roots:  # what was deleted here goes out with the exchange
            replica_history.observe_if_free(cfg, root)
        try:
            taken = membership.exchange(cfg, address, replica_history.attach(cfg))
            new_records, history_problems = replica_history.take(cfg, taken.answer, peer.name)
            problems += history_problems
            theirs = {root: markers.sent(taken.answer, root) for root in roots}
            if heard is not None:
                heard.update(new_records)
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
        except Unreachable as error:   # gone since it answered the probe: no session
            result.result, result.message = UNREACHABLE, str(error)
            result.duration = round(time.monotonic() - started, 2)
            return result
        except ConfigError as error:
            problems.append(str(error))
        try:
            if any(scope[root] is None for root in roots):   # not in the watcher's rounds:
                swarm_mesh.share(cfg, address)   # publishing sends offers to every peer
        except ConfigError as error:
            problems.append(f"swarm offers not passed on: {error}")
    for root in roots:
        full = scope[root] is None
        mine = markers.read(cfg, root) if full else None   # before the session
        if full and root not in changed and not new_records.get(root) and \
                markers.equal_since(cfg, root, peer.name, mine, theirs.get(root)):
            result.unchanged.append(root)
            if incoming is not None:
                incoming[root] = 0
            continue
        outcome = sync_root(cfg, peer.name, address, root, (*extra, *paths(scope[root])))
        session = outcome.failure or outcome.session
        if full:
            equal = (outcome.failure is None and outcome.session.exit_code == unison.EXIT_OK
                     and not outcome.session.conflicts)
            markers.remember(cfg, root, peer.name, mine if equal else None, theirs.get(root))
        if incoming is not None:
            incoming[root] = outcome.incoming + outcome.deleted
        result.sessions += outcome.sessions
        result.files += outcome.files
        result.bytes += outcome.bytes
        result.conflicts += len(outcome.session.conflicts)
        result.settled += [s.describe() for s in outcome.settled]
        result.deleted += outcome.deleted
        if session.exit_code not in (unison.EXIT_OK, unison.EXIT_SKIPPED):
            result.result = FAILED
            failed = (f" ({len(session.failed)} path(s) failed: "
                      f"{', '.join(session.failed[:3])})" if session.failed else "")
            problems.append(f"{root}: {session.error}{failed}")
        elif outcome.settled:
            problems.append(f"{root}: {len(outcome.settled)} conflict(s) settled: "
                            + "; ".join(s.describe() for s in outcome.settled[:3]))
        elif session.conflicts:
            problems.append(f"{root}: {len(session.conflicts)} conflict(s) left as they are "
                            f"(policy {cfg.conflict_policy}): " + ", ".join(session.conflicts[:3]))
        if outcome.settled and session is not outcome.session:
            problems.append(f"{root}: conflicts settled here, not yet passed on: "
                            + "; ".join(s.describe() for s in outcome.settled[:3]))
    result.message = "; ".join(problems)
    result.duration = round(time.monotonic() - started, 2)
    return result


@dataclass
class RootOutcome:
    session: unison.Session   # the first session (its conflicts)
    failure: unison.Session | None = None  # the first session that failed, if any
    sessions: int = 0
    files: int = 0
    bytes: int = 0
    incoming: int = 0
    settled: list[conflicts.Settled] = field(default_factory=list)
    deleted: int = 0


def sync_root(cfg: Config, peer: str, address: str, root: str,
              extra: tuple[str, ...] = ()) -> RootOutcome:
    """One root with one peer, holding the local replica's lock; while the peer's replica
    is busy, let go of ours (so that two rounds never wait on each other) and try again
    after a random pause, for at most cfg.lock_wait seconds in all."""
    def attempt(left_s: float) -> RootOutcome:
        with replica.held(cfg, root, f"round of {cfg.node} with {peer}", left_s) as lock:
            return _sync_root_locked(cfg, peer, address, root, extra, lock)

    try:
        outcome, gave_up = replica.while_busy(attempt, lambda o: o.session.busy,
                                              cfg.lock_wait)
    except replica.Busy as busy:
        return RootOutcome(unison.Session(unison.EXIT_FATAL, error=str(busy)))
    if gave_up:
        outcome.session.error = (f"{outcome.session.error}: still so after "
                                 f"{cfg.lock_wait} s, gave up; the next round tries again")
    return outcome


def _sync_root_locked(cfg: Config, peer: str, address: str, root: str,
                      extra: tuple[str, ...], lock: int) -> RootOutcome:
    observed = replica_history.observe(cfg, root, fresh_s=replica_history.FRESH_S)
    if observed.refusal:  # never sync a root that looks wiped or unmounted
        return RootOutcome(unison.Session(unison.EXIT_FATAL, error=observed.refusal))
    outcome = RootOutcome(unison.Session(unison.EXIT_OK))
    outcome.deleted = len(replica_history.apply(cfg, root, observed))
    replica.prune_backups(cfg, root)

    def session(more: tuple[str, ...] = ()) -> unison.Session:
        done = unison.run(cfg, peer, root, address, (*extra, *more), lock=lock)
        outcome.sessions += 1
        outcome.files += len(done.transferred)
        outcome.bytes += transferred_bytes(root, done.transferred)
        outcome.incoming += done.incoming
        if done.exit_code not in (unison.EXIT_OK, unison.EXIT_SKIPPED) and not outcome.failure:
            outcome.failure = done
        return done

    outcome.session = session()
    if outcome.session.busy:
        return outcome
    if outcome.session.conflicts and cfg.conflict_policy != conflicts.KEEP_BOTH:
        remote_root = unison.command(cfg, root, address)[2]
        known = replica_history.load(cfg, root)
        outcome.settled = conflicts.settle(
            cfg, root, peer, remote_root, outcome.session.conflicts, session,
            dead=lambda path: replica_history.dead(cfg, root, path, known))
    replica_history.observe(cfg, root, guard=False, after_session=True)  # what came in
    # is known, not news
    return outcome


def paths(relative: list[str] | None) -> tuple[str, ...]:
    """Unison's arguments that limit a session to these paths of the root (all: none).
    Unison's own guard would stop a session whose paths were all deleted on one side,
    which is what a round for a deletion is; the deletion guard of the whole root
    (replica.check) still stands."""
    if not relative:
        return ()
    return ("-confirmbigdel=false", *(f"-path={path}" for path in relative))


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
