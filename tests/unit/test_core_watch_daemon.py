"""The watcher's loop on this kernel's inotify, its rounds stood in for by a recorder: the
first round is a full one, a change makes a round for its path only, what a session
wrote makes none, connections are opened as a change made here comes (not for a
session's writes), a root that comes back is synced in full, and when the kernel's limit
runs out the watcher says so once and falls back to full rounds on a timer. (The lab
tests run it with real rounds: tests/integration/test_watch.py.)"""

import os
import threading
import time

import pytest

from plugins.module_utils.replimesh import inotify, watch_daemon
from plugins.module_utils.replimesh.round import FAILED, PeerResult

from .support import write_node

DEADLINE_S = 10.0


@pytest.fixture
def watching(tmp_path, monkeypatch):
    """Start a watcher with settings; (its config, the scopes of its rounds so far)."""
    started = []

    def start(**settings):
        cfg, _ = write_node(tmp_path, [], **{"watch_quiet_s": 0.2, "watch_max_wait_s": 1.0,
                                             **settings})
        scopes = []
        monkeypatch.setattr(watch_daemon, "run_round",
                            lambda _cfg, scope: scopes.append(scope) or [])
        monkeypatch.setattr(watch_daemon, "open_connections",
                            lambda _cfg: start.warm_ups.append(len(scopes)))
        watcher = watch_daemon.Watcher(cfg)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        started.append((watcher, thread))
        return cfg, scopes
    start.started = started
    start.warm_ups = []   # for each: how many rounds had started when it was asked
    yield start
    for watcher, thread in started:
        watcher.stop()
        thread.join(timeout=10)


def wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s"
        time.sleep(0.05)


def log(cfg):
    path = os.path.join(cfg.log_dir, watch_daemon.LOG)
    return open(path, encoding="utf-8").read() if os.path.exists(path) else ""


def test_a_full_round_first_then_one_for_each_change_made_here(watching):
    cfg, scopes = watching()
    root = cfg.roots[0]
    wait_for(lambda: scopes == [{root: None}], "first full round")
    os.makedirs(os.path.join(root, "sub"))
    with open(os.path.join(root, "sub", "new.txt"), "w", encoding="utf-8") as out:
        out.write("x")
    wait_for(lambda: len(scopes) == 2, "round for the change")
    assert scopes[1] == {root: ["sub"]}


def test_a_file_still_open_for_writing_holds_its_round_until_closed(watching):
    cfg, scopes = watching(watch_settle_s=0.1, watch_quiet_s=4.0, watch_max_wait_s=60.0)
    root = cfg.roots[0]
    wait_for(lambda: len(scopes) == 1, "first full round")
    with open(os.path.join(root, "growing.bin"), "wb") as out:
        out.write(b"first half")
        out.flush()
        time.sleep(1.0)   # ten times the settle time: a closed file's round would be due
        assert len(scopes) == 1, "a round started while the file was still open"
        out.write(b", second half")
    closed = time.monotonic()
    wait_for(lambda: len(scopes) == 2, "round once the file was closed")
    assert time.monotonic() - closed < 4.0, "closed, it waited the quiet time"
    assert scopes[1] == {root: ["growing.bin"]}


def write_as_a_session(root, name):
    """As Unison and pushes write: a temporary file renamed into place."""
    temporary = os.path.join(root, f".unison.{name}.1.unison.tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        out.write("brought by a peer")
    os.rename(temporary, os.path.join(root, name))


def test_what_a_session_wrote_starts_no_round(watching):
    cfg, scopes = watching()
    root = cfg.roots[0]
    wait_for(lambda: len(scopes) == 1, "first full round")
    write_as_a_session(root, "in.txt")
    with open(os.path.join(root, "mine.txt"), "w", encoding="utf-8") as out:
        out.write("made here after it")
    wait_for(lambda: len(scopes) == 2, "round for the change made here")
    assert scopes[1] == {root: ["mine.txt"]}


def test_connections_are_opened_as_a_change_made_here_comes_not_after_its_burst(watching):
    cfg, scopes = watching(watch_settle_s=1.0, watch_quiet_s=1.0)
    root = cfg.roots[0]
    wait_for(lambda: len(scopes) == 1, "first full round")
    write_as_a_session(root, "in.txt")
    time.sleep(0.5)   # what a session wrote: no round follows, so no connection either
    assert watching.warm_ups == []
    with open(os.path.join(root, "mine.txt"), "w", encoding="utf-8") as out:
        out.write("made here")
    wait_for(lambda: watching.warm_ups, "connections opened for the change")
    assert watching.warm_ups == [1], "opened only once its round had started"
    wait_for(lambda: len(scopes) == 2, "round for the change")


def test_a_root_that_comes_back_is_synced_in_full(watching, tmp_path):
    root = tmp_path / "data"
    _, scopes = watching()
    wait_for(lambda: len(scopes) == 1, "first full round")
    os.rename(root, tmp_path / "unmounted")
    wait_for(lambda: len(scopes) == 2, "a full round when the root went")
    (tmp_path / "unmounted").rename(root)
    wait_for(lambda: len(scopes) == 3, "a full round when it came back")
    assert scopes[1:] == [{str(root): None}] * 2
    (root / "after.txt").write_text("x")
    wait_for(lambda: scopes[-1] == {str(root): ["after.txt"]}, "the root watched again")


def test_when_the_limit_runs_out_it_says_so_once_and_rounds_go_on(watching, monkeypatch):
    real_add, added = inotify.Inotify.add, []

    def add(self, path, *args):
        if added:
            raise inotify.Exhausted("fs.inotify.max_user_watches")
        added.append(path)
        return real_add(self, path, *args)
    monkeypatch.setattr(inotify.Inotify, "add", add)
    cfg, scopes = watching(watch_fallback_s=1)
    os.makedirs(os.path.join(cfg.roots[0], "a"))   # a second folder: one watch too many
    wait_for(lambda: len(scopes) >= 3, "full rounds on a timer")
    assert all(scope == {cfg.roots[0]: None} for scope in scopes)
    said = [line for line in log(cfg).splitlines() if "ran out" in line]
    assert len(said) == 1
    assert "fs.inotify.max_user_watches ran out watching 2 folder(s)" in said[0]
    assert "sysctl -w fs.inotify.max_user_watches=" in said[0]
    assert "a full round runs every 1 s" in said[0]


def a_change_whose_round_gives(watching, monkeypatch, results):
    """After the first full round, f.txt changed, its round answering results (the
    rounds after it, none); (config, root, scopes so far)."""
    cfg, scopes = watching()
    root = cfg.roots[0]
    wait_for(lambda: len(scopes) == 1, "first full round")
    monkeypatch.setattr(watch_daemon, "run_round",
                        lambda _cfg, scope: scopes.append(scope) or
                        (results if len(scopes) == 2 else []))
    with open(os.path.join(root, "f.txt"), "w", encoding="utf-8") as out:
        out.write("x")
    return cfg, root, scopes


def test_a_round_that_failed_with_a_peer_runs_again(watching, monkeypatch):
    _, root, scopes = a_change_whose_round_gives(
        watching, monkeypatch, [PeerResult("node2", "a", FAILED, 0.1, message="busy")])
    wait_for(lambda: len(scopes) == 3, "the failed round run again")
    assert scopes[1] == scopes[2] == {root: ["f.txt"]}
    time.sleep(watch_daemon.RETRY_FIRST_S * 2)   # and not again once it went through
    assert len(scopes) == 3


def test_a_round_that_settled_a_conflict_is_followed_by_a_full_round(watching, monkeypatch):
    settled = [PeerResult("node2", "a", "ok", 0.1, settled=["f.txt: node2's version in place"])]
    cfg, root, scopes = a_change_whose_round_gives(watching, monkeypatch, settled)
    wait_for(lambda: len(scopes) == 3, "a round after the one that settled a conflict")
    assert scopes[1:] == [{root: ["f.txt"]}, {root: None}]
    time.sleep(cfg.watch_quiet_s * 4)   # and no more once the full round settled nothing
    assert len(scopes) == 3


def a_round_under_way(watching, monkeypatch, lasting_s):
    """A watcher whose round for a change takes lasting_s; (watcher, its thread, its
    config, the exit codes it cut itself short with) once that round is under way."""
    cfg, scopes = watching()
    watcher, thread = watching.started[-1]
    wait_for(lambda: len(scopes) == 1, "first full round")
    under_way, cut = threading.Event(), []
    monkeypatch.setattr(watch_daemon, "STOP_GRACE_S", 0.5)
    monkeypatch.setattr(watch_daemon, "run_round",
                        lambda _cfg, scope: under_way.set() or time.sleep(lasting_s) or [])
    monkeypatch.setattr(os, "_exit", cut.append)
    with open(os.path.join(cfg.roots[0], "f.txt"), "w", encoding="utf-8") as out:
        out.write("x")
    assert under_way.wait(DEADLINE_S), "no round under way"
    return watcher, thread, cfg, cut


def test_asked_to_stop_mid_round_it_cuts_a_long_round_short(watching, monkeypatch):
    watcher, _, cfg, cut = a_round_under_way(watching, monkeypatch, lasting_s=3.0)
    watcher.stop()
    wait_for(lambda: cut, "the round cut short")
    assert cut == [0]
    assert "stopped mid-round: the round under way was cut short after 0.5 s" in log(cfg)


def test_asked_to_stop_mid_round_it_lets_a_short_round_end(watching, monkeypatch):
    watcher, thread, cfg, cut = a_round_under_way(watching, monkeypatch, lasting_s=0.1)
    watcher.stop()
    thread.join(timeout=DEADLINE_S)
    time.sleep(0.6)   # past the grace: nothing is cut once the watcher is done
    assert cut == [] and log(cfg).splitlines()[-1].endswith("stopped")
