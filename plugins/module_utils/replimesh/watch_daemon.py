"""`replimesh watch`: the node's watcher. It watches every root (watch.Tree) and starts
a round for what changed here within about a second of a burst's end, syncing only the
changed paths with each peer; what incoming sessions wrote starts no round.

It starts with a full round (what changed while no watcher ran is not known), makes a
full one whenever events were lost or a root was replaced, and falls back to full rounds
every watch_fallback_s seconds when the kernel's inotify limits run out (said once, with
the sysctl to raise). Cron's rounds stay the safety net.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

from . import daemons, inotify, journal, markers, peer_ssh, replica, replica_history, watch
from .config import Config
from .errors import ReplimeshError
from .round import FAILED, PeerResult, open_connections, run_round

LOG = "watch.log"
# How often the watcher looks again for a root that was missing (an unmounted disk),
# and, in fallback, tries its watches again (the limit may have been raised).
HOUSEKEEPING_S = 5.0
RETRY_WATCHES_S = 600.0
# A round that failed with a peer runs again after this, doubling up to RETRY_LAST_S.
RETRY_FIRST_S, RETRY_LAST_S = 2.0, 60.0
# A peer's SSH connection stays open this long after the watcher's last use of it: a
# burst of rounds pays one handshake per peer, not one per round (over a second each on
# a busy node).
KEEP_CONNECTIONS_S = 120.0
# Asked to stop mid-round, the watcher lets the round end for this long, then cuts it
# short as a killed watcher would be: every session is safe to interrupt, each child ends
# with this process (children.tied), and the next start syncs in full.
STOP_GRACE_S = 5.0


def lock_path(cfg: Config) -> str:
    return os.path.join(os.path.dirname(cfg.state_file), "watch.lock")


class Watcher:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.notify: inotify.Inotify | None = None   # made by watch_all()
        self.trees: dict[str, watch.Tree] = {}
        self.bursts = {root: watch.Burst(cfg.watch_quiet_s, cfg.watch_max_wait_s,
                                         cfg.watch_settle_s)
                       for root in cfg.roots}
        self.fallback = False    # the watches could not all be made: periodic rounds
        self.retry_at = 0.0      # when to try the watches again, in fallback
        self.retry_s = RETRY_FIRST_S   # the wait before a failed round runs again
        self.stopping = False
        self.stopped = threading.Event()    # run() is done: nothing left to cut short
        self.wake, self.waker = os.pipe()   # stop() wakes the wait for events
        self.markers: markers.Keeper | None = None   # while every root is watched
        self.warming: threading.Thread | None = None   # opening connections ahead
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def log(self, line: str) -> None:
        journal.append(self.cfg, LOG, line)

    def run(self) -> int:
        self.watch_all()
        for burst in self.bursts.values():   # what changed while no watcher ran
            burst.in_full(time.monotonic())
        while not self.stopping:
            if self.fallback:
                self.round({root: None for root in self.cfg.roots})
                self.pause(self.cfg.watch_fallback_s)
                if time.monotonic() >= self.retry_at:
                    self.watch_all()
                continue
            self.wait_for_events()
            peer_ssh.close_idle(KEEP_CONNECTIONS_S)
            self.look_for_missing_roots()
            due = self.take_due()
            if due:
                self.round(due)
        if self.warming is not None:   # its connections close with sharing()
            self.warming.join()
        self.forget_markers()
        if self.notify is not None:
            self.notify.close()
        self.log("stopped")
        self.stopped.set()
        return 0

    def watch_all(self) -> None:
        """(Re)make the watches of every root; fallback when the kernel's limit ran out."""
        try:
            if self.notify is None:
                self.notify = inotify.Inotify()
                self.trees = {root: watch.Tree(self.notify, root) for root in self.cfg.roots}
            for tree in self.trees.values():
                tree.stop()
            for tree in self.trees.values():
                tree.start()
        except inotify.Exhausted as error:
            self.fall_back(error)
            return
        self.markers = markers.Keeper(self.cfg)   # a new epoch: nothing missed is counted
        self.markers.start()
        if self.fallback:
            self.log("the inotify limit is high enough now: watching again")
            for burst in self.bursts.values():   # changed since the last full round
                burst.in_full(time.monotonic())
        self.fallback = False
        folders = sum(len(tree.folders) for tree in self.trees.values())
        self.log(f"watching {folders} folder(s) of {len(self.trees)} root(s)")

    def fall_back(self, error: inotify.Exhausted) -> None:
        """The kernel's limit ran out: drop every watch (a partial set would miss changes
        silently) and run full rounds on a timer; say so once, with what to raise."""
        self.forget_markers()
        for tree in self.trees.values():
            tree.stop()
        self.retry_at = time.monotonic() + RETRY_WATCHES_S
        if self.fallback:
            return
        self.fallback = True
        folders = sum(1 for root in self.cfg.roots for _ in os.walk(root))
        now = inotify.limit(inotify.MAX_USER_WATCHES) or 0
        wanted = max(2 * folders + 8192, now * 2)
        self.log(f"{error.setting} ran out watching {folders} folder(s): set it to "
                 f"{wanted} or more (sysctl -w {error.setting}={wanted}; the deploy sets "
                 f"replimesh_watch_max_user_watches). Until then a full round runs every "
                 f"{self.cfg.watch_fallback_s} s")

    def wait_for_events(self) -> None:
        now = time.monotonic()
        waits = [d for d in (b.due_in(now) for b in self.bursts.values()) if d is not None]
        timeout = min([HOUSEKEEPING_S, *waits])
        try:
            ready, _, _ = select.select([self.notify, self.wake], [], [], timeout)
        except InterruptedError:
            return
        if self.notify not in ready:
            return
        made_before = self.made_here()
        try:
            self.handle(self.notify.read())
        except inotify.Exhausted as error:   # a new folder's watch: the limit ran out
            self.fall_back(error)
        now = time.monotonic()
        for burst in self.bursts.values():
            burst.noted(now)
        if not made_before and self.made_here():   # once per burst, not per event
            self.warm_up()

    def made_here(self) -> bool:
        return any(b.changes.made_here for b in self.bursts.values())

    def warm_up(self) -> None:
        """A change made here will start a round: open the connections it needs now, in
        the background, while the burst settles (a round after a quiet spell would pay
        every handshake first). Not for what sessions wrote: no round follows it."""
        if self.warming is not None and self.warming.is_alive():
            return
        self.warming = threading.Thread(target=self._open_connections, daemon=True)
        self.warming.start()

    def _open_connections(self) -> None:
        try:
            open_connections(self.cfg)
        except (ReplimeshError, OSError) as error:   # the round will say it again
            self.log(f"connections not opened ahead of the round: {error}")

    def handle(self, events: list[inotify.Event]) -> None:
        touched: dict[str, set[str]] = {}   # root -> the paths that may have changed
        for event in events:
            if event.mask & inotify.Q_OVERFLOW:   # lost events: every root in full
                for root, burst in self.bursts.items():
                    burst.changes.everything = True
                    touched.setdefault(root, set()).add("")
                continue
            for root, tree in self.trees.items():
                if event.wd in tree.folders:
                    path = tree.handle(event, self.bursts[root].changes)
                    if path is not None:
                        touched.setdefault(root, set()).add(path)
                    break
        for root, paths in touched.items():   # whoever changed it: sessions too
            self.count(root, paths)

    def count(self, root: str, paths: set[str]) -> None:
        """The root's marker moves on, its journal naming paths ("": all of it)."""
        if self.markers is not None:
            self.markers.changed(root, paths)

    def forget_markers(self) -> None:
        if self.markers is not None:
            self.markers.stop()
            self.markers = None

    def _heartbeat(self) -> None:
        """Touch the markers while this process lives, rounds or not."""
        while not self.stopping:
            keeper = self.markers
            if keeper is not None:
                keeper.heartbeat()
            time.sleep(markers.HEARTBEAT_S / 2)

    def look_for_missing_roots(self) -> None:
        """A root that was missing (or replaced by a non-folder) and is back: watch it,
        and sync it in full."""
        for root, tree in self.trees.items():
            if "" not in tree.watches and os.path.isdir(root):
                try:
                    tree.restart()
                except inotify.Exhausted as error:
                    self.fall_back(error)
                    return
                self.bursts[root].in_full(time.monotonic())
                self.count(root, {""})

    def take_due(self) -> dict[str, list[str] | None]:
        """{root: the paths to sync, None for all} of the bursts due now, changes that
        sessions made taken out."""
        now = time.monotonic()
        due: dict[str, list[str] | None] = {}
        for root, burst in self.bursts.items():
            if burst.due_in(now) != 0:
                continue
            changes = burst.take()
            if changes.everything:
                due[root] = None
                continue
            changed, unsure = changes.candidates()
            if unsure:
                changed |= self.news(root, unsure)
            if changed:
                due[root] = watch.scope(changed)
        return due

    def news(self, root: str, unsure: set[str]) -> set[str]:
        """What of unsure differs from the root's index; under the replica's lock, so a
        session under way has ended and indexed what it wrote."""
        try:
            with replica.held(self.cfg, root, f"watcher of {self.cfg.node}",
                              self.cfg.lock_wait), \
                    replica_history.index_of(self.cfg, root) as index:
                return watch.news(root, index, unsure)
        except replica.Busy:
            return unsure   # a session still holds it: count it all as news

    def round(self, scope: dict[str, list[str] | None]) -> None:
        started = time.monotonic()
        try:
            results = run_round(self.cfg, scope=scope)
        except (ReplimeshError, OSError) as error:
            self.log(f"round not run: {error}")
            return
        self.log(f"round for {describe(scope)}: {summary(results)} "
                 f"({time.monotonic() - started:.2f} s)")
        if any(r.result == FAILED for r in results) and not self.fallback:
            self.again(scope)
        else:
            self.retry_s = RETRY_FIRST_S
        if any(r.settled for r in results):
            self.in_full(scope)

    def in_full(self, scope: dict[str, list[str] | None]) -> None:
        """A conflict was settled: the roots in full next. Settling writes copies on both
        sides of one session, and when three or more nodes settle one conflict at once,
        a copy can end up on a node whose maker swapped it away meanwhile; what sessions
        wrote is news to no watcher, so only a full round finds it."""
        now = time.monotonic()
        for root, paths in scope.items():
            if paths is not None:
                self.bursts[root].in_full(now)

    def again(self, scope: dict[str, list[str] | None]) -> None:
        """A peer failed (busy, a conflict not passed on...): the same round again later,
        backing off, with whatever changed meanwhile (a peer that is down catches up by
        its own full round when it is back)."""
        now = time.monotonic()
        for root, paths in scope.items():
            burst = self.bursts[root]
            if paths is None:
                burst.changes.everything = True
            else:
                burst.changes.paths.update(paths)
            burst.hold(now, self.retry_s)
        self.retry_s = min(self.retry_s * 2, RETRY_LAST_S)

    def pause(self, seconds: float) -> None:
        select.select([self.wake], [], [], seconds)

    def stop(self, *_) -> None:
        """SIGTERM: stop after the round under way, or within STOP_GRACE_S all the same
        (`replimesh watch --stop`, systemd and a redeploy wait on it)."""
        if self.stopping:
            return
        self.stopping = True
        os.write(self.waker, b"x")
        threading.Thread(target=self._cut_short, daemon=True).start()

    def _cut_short(self) -> None:
        if self.stopped.wait(STOP_GRACE_S):
            return
        self.log(f"stopped mid-round: the round under way was cut short after "
                 f"{STOP_GRACE_S:g} s (the next start syncs in full)")
        self.forget_markers()
        os._exit(0)


def describe(scope: dict[str, list[str] | None]) -> str:
    return ", ".join(f"{root} (all)" if paths is None else f"{root} ({len(paths)} path(s))"
                     for root, paths in scope.items())


def summary(results: list[PeerResult]) -> str:
    if not results:
        return "no active peer"
    return ", ".join(f"{r.peer} {r.result}" + (f" {r.files} file(s)" if r.files else "")
                     + (f" ({r.message})" if r.message and (r.result != "ok" or r.settled)
                        else "")
                     for r in results)


def run(cfg: Config, detach: bool = False, replace: bool = False, stop: bool = False) -> int:
    """The node's watcher, unless one already runs (daemons.run)."""
    os.makedirs(os.path.dirname(lock_path(cfg)), mode=0o700, exist_ok=True)
    return daemons.run("watcher", cfg.node, lock_path(cfg), journal.path(cfg, LOG),
                       lambda: _main(cfg), detach=detach, replace=replace, stop=stop)


def _main(cfg: Config) -> int:
    watcher = Watcher(cfg)
    signal.signal(signal.SIGTERM, watcher.stop)
    signal.signal(signal.SIGINT, watcher.stop)
    with peer_ssh.sharing(cfg, keep=True):   # its connections outlive each round, shared
        return watcher.run()
