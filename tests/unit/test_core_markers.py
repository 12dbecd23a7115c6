"""Change markers: what the watcher keeps, what a walk and a round take from them (no walk
and no session while nothing changed on either side), and a peer's markers as hostile
input."""

import os
import time

import pytest

from plugins.module_utils.replimesh import markers, replica_history
from plugins.module_utils.replimesh import round as sync_round

from .support import INCOMING, SOME_FAILED, calls_of, fake_unison, script, write_node, write_peers

ME = {"name": "node1", "address": "127.0.0.11"}
NODE2 = {"name": "node2", "address": "127.0.0.1"}
EQUAL = (0, "Nothing to do: replicas have not changed since last sync.\n")


@pytest.fixture
def cfg(tmp_path):
    return write_node(tmp_path, [ME, NODE2])[0]


def test_a_marker_is_read_while_its_watcher_keeps_it(cfg):
    root = cfg.roots[0]
    assert markers.read(cfg, root) is None   # no watcher
    keeper = markers.Keeper(cfg)
    keeper.start()
    first = markers.read(cfg, root)
    epoch = keeper.epochs[root]
    assert first == f"{epoch}:0"
    keeper.changed(root, {"a.txt"})
    assert markers.read(cfg, root) == f"{epoch}:1"
    stale = time.time() - markers.STALE_S - 1
    os.utime(markers.path(cfg, root), (stale, stale))
    assert markers.read(cfg, root) is None   # a watcher that stopped touching it
    keeper.touched = 0.0
    keeper.heartbeat()
    assert markers.read(cfg, root) == f"{epoch}:1"
    keeper.stop()
    assert markers.read(cfg, root) is None
    again = markers.Keeper(cfg)
    again.start()
    assert again.epochs[root] != epoch   # each start: a new epoch


@pytest.mark.parametrize("sent", [
    {"changes": {"/srv/x": "ab:1\n"}}, {"changes": {"/srv/x": 7}}, {"changes": ["ab:1"]},
    {"changes": {"/srv/x": "a" * 40 + ":1"}}, {"changes": {"/srv/x": "AB:1"}}, {}])
def test_a_peers_marker_that_is_not_one_counts_as_none(sent):
    assert markers.sent(sent, "/srv/x") is None
    assert markers.sent({"changes": {"/srv/x": "ab12:3"}}, "/srv/x") == "ab12:3"


def test_a_walk_is_skipped_while_the_marker_is_the_one_read_before_the_last(cfg):
    root = cfg.roots[0]
    with open(os.path.join(root, "a.txt"), "w", encoding="utf-8") as out:
        out.write("a")
    keeper = markers.Keeper(cfg)
    keeper.start()
    first = replica_history.observe(cfg, root)
    assert not first.unchanged and "a.txt" in first.walk.index
    again = replica_history.observe(cfg, root)
    assert again.unchanged and again.walk.files == 1
    os.unlink(os.path.join(root, "a.txt"))
    keeper.changed(root, {"a.txt"})   # what the watcher does on the deletion's event
    walked = replica_history.observe(cfg, root, guard=False)
    assert not walked.unchanged and walked.seen_go == 1   # the deletion is in the history


def node_with_peer(tmp_path, their_marker, plan):
    """node1, whose ssh stands in for node2 answering every call with a list carrying
    their_marker for the root, and whose unison follows plan."""
    answer = tmp_path / "answer.json"
    write_peers(answer, [ME, NODE2])
    data = answer.read_text(encoding="utf-8").rstrip()
    root = str(tmp_path / "data")
    answer.write_text(data[:-1] + f', "changes": {{"{root}": "{their_marker}"}}}}\n',
                      encoding="utf-8")
    ssh = script(tmp_path, "stand-in-ssh", f"cat >/dev/null\ncat {answer}\n")
    program, calls = fake_unison(tmp_path, {root: plan})
    cfg, _ = write_node(tmp_path, [ME, NODE2], ssh=ssh, unison=program)
    return cfg, calls


def sessions(calls):
    return len(calls_of(calls)) if calls.exists() else 0


def test_a_round_skips_a_pair_whose_replicas_did_not_change_since_they_were_equal(
        tmp_path, listening_port):
    cfg, calls = node_with_peer(tmp_path, "be:5", EQUAL)
    cfg = cfg.__class__(**{**cfg.__dict__, "ssh_port": listening_port})
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    first, = sync_round.run_round(cfg)
    assert first.sessions == 1 and first.unchanged == []
    second, = sync_round.run_round(cfg)
    assert second.sessions == 0 and second.unchanged == [root] and second.result == "ok"
    assert sessions(calls) == 1
    keeper.changed(root, {"new.txt"})   # something changed here: the pair syncs again
    third, = sync_round.run_round(cfg)
    assert third.sessions == 1 and sessions(calls) == 2


def test_no_pair_is_skipped_without_a_watcher_or_after_a_session_that_failed(
        tmp_path, listening_port):
    cfg, calls = node_with_peer(tmp_path, "be:5", [(2, SOME_FAILED), EQUAL])
    cfg = cfg.__class__(**{**cfg.__dict__, "ssh_port": listening_port})
    for _ in range(2):   # no watcher here: no marker, every round runs its session
        assert sync_round.run_round(cfg)[0].sessions == 1
    keeper = markers.Keeper(cfg)
    keeper.start()
    calls.write_text("", encoding="utf-8")   # the plan starts again: a failed session
    assert sync_round.run_round(cfg)[0].sessions == 1   # failed: not taken as equal
    assert sync_round.run_round(cfg)[0].sessions == 1   # equal this time
    assert sync_round.run_round(cfg)[0].sessions == 0
    assert sessions(calls) == 2


def test_a_root_that_changed_earlier_in_the_round_is_synced_with_every_later_peer(
        tmp_path, listening_port):
    node3 = {"name": "node3", "address": "localhost"}   # 127.0.0.1 too: the port listens
    cfg, _ = node_with_peer(tmp_path, "be:5", [(0, INCOMING), EQUAL])
    write_peers(cfg.peers_file, [ME, NODE2, node3])
    cfg = cfg.__class__(**{**cfg.__dict__, "ssh_port": listening_port})
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    # node3's pair was found equal with the markers as they read now; node2's was not.
    markers.remember(cfg, root, "node3", markers.read(cfg, root), "be:5")
    first, second = sync_round.run_round(cfg, second_pass=False)
    assert (first.peer, first.sessions) == ("node2", 1)   # a change came in from node2
    assert (second.peer, second.sessions, second.unchanged) == ("node3", 1, [])
