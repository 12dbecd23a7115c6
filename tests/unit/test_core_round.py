"""One sync round: per-peer outcomes, byte counts, exit codes, the recorded state, and the
peer-list exchange that starts every session."""

import os

import pytest

from plugins.module_utils.replimesh import membership, replica, state
from plugins.module_utils.replimesh import round as sync_round
from plugins.module_utils.replimesh.round import (
    FAILED,
    OK,
    REMOVED,
    UNREACHABLE,
    PeerResult,
    Removed,
)

from .support import (
    BUSY,
    CONFLICT,
    FATAL,
    INCOMING,
    SOME_FAILED,
    TRANSFERRED,
    authorized,
    calls_of,
    closed_port,
    entry,
    fake_ssh,
    fake_unison,
    script,
    write_node,
    write_peers,
)


def peer_list(*names, address="127.0.0.1"):
    return [{"name": name, "address": address if name != "node1" else "127.0.0.11"}
            for name in names]


def outcome(result, **fields):
    return PeerResult("node2", "a", result, 0.0, **fields)


def test_exit_code_is_zero_when_nothing_failed():
    assert sync_round.exit_code([outcome(OK), outcome(UNREACHABLE)]) == 0
    assert sync_round.exit_code([]) == 0


def test_exit_code_is_one_when_any_peer_failed():
    assert sync_round.exit_code([outcome(OK), outcome(FAILED)]) == 1


def test_transferred_bytes_counts_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * 10)
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "b").write_bytes(b"y" * 5)
    (tmp_path / "dir" / "sub" / "c").write_bytes(b"z" * 7)
    assert sync_round.transferred_bytes(str(tmp_path), ["a.txt"]) == 10
    assert sync_round.transferred_bytes(str(tmp_path), ["a.txt", "dir"]) == 22


def test_transferred_bytes_counts_nothing_for_deleted_paths(tmp_path):
    assert sync_round.transferred_bytes(str(tmp_path), ["gone.txt", "gone/dir"]) == 0


def test_transferred_bytes_survives_a_dangling_symlink_in_a_folder(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "f").write_bytes(b"abc")
    os.symlink(tmp_path / "missing", tmp_path / "dir" / "link")
    assert sync_round.transferred_bytes(str(tmp_path), ["dir"]) == 3


def test_reachable_tells_a_listening_port_from_a_closed_one(listening_port):
    assert sync_round.reachable("127.0.0.1", listening_port, 1) is True
    assert sync_round.reachable("127.0.0.1", closed_port(), 1) is False


def test_first_reachable_tries_the_addresses_in_order(listening_port):
    assert sync_round.first_reachable(("127.0.0.2", "127.0.0.1"), listening_port, 1) == \
        "127.0.0.1"
    assert sync_round.first_reachable(("127.0.0.1", "127.0.0.2"), listening_port, 1) == \
        "127.0.0.1"
    assert sync_round.first_reachable(("127.0.0.2", "127.0.0.3"), listening_port, 1) is None


def test_a_missing_root_is_not_synced_and_fails_the_peer(tmp_path, listening_port):
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, "")})
    cfg, _ = write_node(tmp_path, [], roots=[str(tmp_path / "data"), "/nonexistent/replimesh"],
                        ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"), exchange=False)
    assert result.result == FAILED
    assert result.message == ("/nonexistent/replimesh: root /nonexistent/replimesh does not "
                              "exist on node1 (disk not mounted?): not synced; mount it or "
                              "create it")
    assert [call["argv"][0] for call in calls_of(calls)] == [str(tmp_path / "data")]


def test_closed_port_is_unreachable(tmp_path):
    port = closed_port()
    cfg, _ = write_node(tmp_path, [], ssh_port=port)
    result = sync_round.sync_peer(cfg, entry("node2", addresses=("127.0.0.1", "127.0.0.2")))
    assert (result.result, result.files, result.address) == (UNREACHABLE, 0, "127.0.0.1")
    assert result.message == f"no answer on 127.0.0.1, 127.0.0.2 port {port} within 1 s"


def test_the_first_address_that_answers_is_synced(tmp_path, listening_port):
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, "")})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, entry("node2", addresses=("127.0.0.2", "127.0.0.1")),
                                  exchange=False)
    assert (result.result, result.address) == (OK, "127.0.0.1")
    call, = calls_of(calls)
    assert call["argv"][1] == f"ssh://replimesh@127.0.0.1/{tmp_path / 'data'}"


def test_reachable_peer_sums_files_bytes_and_conflicts(tmp_path, listening_port):
    second = tmp_path / "more"
    second.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "node1.txt").write_bytes(b"hello\n")
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, TRANSFERRED),
                                            str(second): (1, CONFLICT)})
    cfg, _ = write_node(tmp_path, [], roots=[str(tmp_path / "data"), str(second)],
                        ssh_port=listening_port, unison=program, conflict_policy="keep-both")
    result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"), exchange=False)
    assert (result.result, result.files, result.bytes, result.conflicts) == (OK, 1, 6, 1)
    assert result.message == (f"{second}: 1 conflict(s) left as they are (policy keep-both): "
                              "a.txt")
    assert len(calls_of(calls)) == 2


def test_a_failed_exchange_is_reported_but_does_not_fail_the_peer(tmp_path, listening_port):
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, TRANSFERRED)})
    cfg, _ = write_node(tmp_path, peer_list("node1", "node2"), ssh_port=listening_port,
                        unison=program)   # its ssh is /bin/false
    result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"))
    assert (result.result, result.files, result.learned) == (OK, 1, [])
    assert result.message == "peer list not exchanged: exit 1"
    assert len(calls_of(calls)) == 1


def test_failed_session_fails_the_peer_with_unisons_reason(tmp_path, listening_port):
    program, _ = fake_unison(tmp_path, {str(tmp_path / "data"): (3, FATAL)})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"), exchange=False)
    assert result.result == FAILED
    assert result.message == (f"{tmp_path / 'data'}: Error in canonizing path: "
                               "/srv/replimesh/data: No such file or directory")


def test_round_records_an_unreachable_peer(tmp_path):
    cfg, _ = write_node(tmp_path, peer_list("node1", "node2"), ssh_port=closed_port())
    seen = []
    results = sync_round.run_round(cfg, progress=seen.append)
    assert [r.peer for r in results] == ["node2"]
    assert seen == results
    recorded = state.load(cfg.state_file)
    assert recorded["node"] == "node1"
    entry_ = recorded["peers"]["node2"]
    assert (entry_["result"], entry_["last_ok"], entry_["learned"]) == (UNREACHABLE, None, [])
    assert entry_["at"] == recorded["last_round"]


def test_round_goes_through_peers_in_rotated_order(tmp_path):
    peers = [{"name": f"node{i}", "address": f"127.0.0.{i}"} for i in (1, 2, 3, 4)]
    peers.append({"name": "node5", "state": "removed"})
    cfg, _ = write_node(tmp_path, peers, node="node3", ssh_port=closed_port())
    results = sync_round.run_round(cfg)
    assert [r.peer for r in results] == ["node4", "node1", "node2"]
    assert sorted(state.load(cfg.state_file)["peers"]) == ["node1", "node2", "node4"]


def test_a_node_removed_in_its_own_list_syncs_with_nobody(tmp_path):
    cfg, _ = write_node(tmp_path, [{"name": "node1", "state": "removed", "version": 2},
                                   {"name": "node2"}], ssh_port=closed_port())
    with pytest.raises(Removed, match=r"^node1 is removed from the mesh: it syncs with nobody"):
        sync_round.run_round(cfg)
    assert not os.path.exists(cfg.state_file)


# Rounds with a peer that answers the exchange: node2 at 127.0.0.1, its own files in
# tmp_path/node2, reached by a stand-in ssh that runs its `replimesh serve`.

NODE2 = {"name": "node2", "address": "127.0.0.1"}
ME = {"name": "node1", "address": "127.0.0.11"}


def with_node2(tmp_path, port, mine, theirs):
    """(node1's Config, unison calls, ssh calls)."""
    (tmp_path / "node2").mkdir()
    _, config2 = write_node(tmp_path / "node2", theirs, node="node2")
    ssh, ssh_calls = fake_ssh(tmp_path, "node1", {"127.0.0.1": config2})
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, TRANSFERRED)})
    cfg, _ = write_node(tmp_path, mine, ssh=ssh, ssh_port=port, unison=program)
    return cfg, calls, ssh_calls


def test_a_peer_learned_in_the_exchange_is_synced_in_the_same_round(tmp_path, listening_port):
    node3 = {"name": "node3", "address": "127.0.0.3"}   # nobody listens there
    cfg, calls, _ = with_node2(tmp_path, listening_port, [ME, NODE2], [ME, NODE2, node3])
    results = sync_round.run_round(cfg)
    assert [(r.peer, r.result, r.learned, r.message) for r in results] == [
        ("node2", OK, ["node3"], ""), ("node3", UNREACHABLE, [], results[1].message)]
    assert results[1].message.startswith("no answer on 127.0.0.3 port")
    assert len(calls_of(calls)) == 1
    assert "node3" in membership.load(cfg)
    assert state.load(cfg.state_file)["peers"]["node2"]["learned"] == ["node3"]


def answering(tmp_path, port, mine, answer):
    """node1 whose ssh stands in for a peer answering the exchange with the list answer
    (news that reached the peer, or this node, while the session started)."""
    write_peers(tmp_path / "answer.json", answer)
    ssh = script(tmp_path, "stand-in-ssh", f"cat >/dev/null\ncat {tmp_path / 'answer.json'}\n")
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, TRANSFERRED)})
    cfg, _ = write_node(tmp_path, mine, ssh=ssh, ssh_port=port, unison=program)
    return cfg, calls


def test_a_peer_that_turns_out_removed_is_not_synced(tmp_path, listening_port):
    gone = {**NODE2, "state": "removed", "version": 2}
    cfg, calls = answering(tmp_path, listening_port, [ME, NODE2], [ME, gone])
    result, = sync_round.run_round(cfg)
    assert (result.peer, result.result, result.learned) == ("node2", REMOVED, ["node2"])
    assert result.message == "node2 is removed from the mesh: not synced"
    assert not calls.exists()
    assert state.load(cfg.state_file)["peers"]["node2"]["result"] == REMOVED
    assert "node2" not in authorized(cfg)


def test_a_node_that_learns_it_is_removed_stops_at_once(tmp_path, listening_port):
    cfg, calls = answering(tmp_path, listening_port, [ME, NODE2],
                           [{**ME, "state": "removed", "version": 2}, NODE2])
    with pytest.raises(Removed, match=r"^node1 is removed from the mesh"):
        sync_round.run_round(cfg)
    assert not calls.exists()           # node2 would refuse the session
    assert not membership.load(cfg)["node1"].active


def test_a_removed_peer_refuses_the_exchange(tmp_path, listening_port):
    """node2 knows it is removed, node1 not yet: node2 serves nobody, and says so."""
    cfg, _, _ = with_node2(tmp_path, listening_port, [ME, NODE2],
                           [ME, {**NODE2, "state": "removed", "version": 2}])
    result, = sync_round.run_round(cfg)
    assert result.message.startswith("peer list not exchanged: replimesh: refused: node2 is "
                                     "removed from the mesh: it serves nobody")
    assert membership.load(cfg)["node2"].active


def test_entries_not_signed_by_the_operator_are_reported(tmp_path, listening_port):
    forged = {"name": "node4", "address": "127.0.0.4", "owner": "impostor"}
    cfg, _, _ = with_node2(tmp_path, listening_port, [ME, NODE2], [ME, NODE2, forged])
    result, = sync_round.run_round(cfg)
    assert (result.result, result.learned, result.files) == (OK, [], 1)
    assert result.message == "ignored entries not signed by the operator: node4"
    assert "node4" not in membership.load(cfg)


def test_without_exchange_no_ssh_is_run(tmp_path, listening_port):
    cfg, calls, ssh_calls = with_node2(tmp_path, listening_port, [ME, NODE2],
                                       [ME, NODE2, {"name": "node3"}])
    result, = sync_round.run_round(cfg, exchange=False)
    assert (result.result, result.learned) == (OK, [])
    assert not ssh_calls.exists()
    assert len(calls_of(calls)) == 1


def test_now_is_utc_to_the_second():
    stamp = sync_round.now()
    assert stamp.endswith("+00:00")
    assert "." not in stamp


def test_failed_paths_are_named_in_the_message(tmp_path, listening_port):
    root = str(tmp_path / "data")
    program, _ = fake_unison(tmp_path, {root: (2, SOME_FAILED)})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"), exchange=False)
    assert result.result == FAILED
    assert result.message == f"{root}: failed: b.txt (1 path(s) failed: b.txt)"


# One-round convergence: the second pass goes back only to the peers synced before the
# last change that came in.

@pytest.fixture
def port_on_every_loopback_address():
    import socket
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen(16)
        yield server.getsockname()[1]


def three_peers(tmp_path, port, outcomes):
    peers = [{"name": f"node{i}", "address": f"127.0.0.{i}"} for i in (1, 2, 3, 4)]
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): outcomes})
    cfg, _ = write_node(tmp_path, peers, ssh_port=port, unison=program)
    return cfg, calls


def remote_hosts(calls):
    return [call["argv"][1].split("@")[1].split("/")[0] for call in calls_of(calls)]


def test_the_second_pass_goes_back_to_the_peers_before_the_last_change(
        tmp_path, port_on_every_loopback_address):
    cfg, calls = three_peers(tmp_path, port_on_every_loopback_address,
                             [(0, TRANSFERRED), (0, INCOMING), (0, TRANSFERRED), (0, "")])
    results = sync_round.run_round(cfg, exchange=False)
    assert remote_hosts(calls) == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]
    assert [(r.peer, r.sessions) for r in results] == [("node2", 2), ("node3", 1), ("node4", 1)]


def test_no_change_coming_in_means_no_second_pass(tmp_path, port_on_every_loopback_address):
    cfg, calls = three_peers(tmp_path, port_on_every_loopback_address, [(0, TRANSFERRED)])
    sync_round.run_round(cfg, exchange=False)
    assert len(calls_of(calls)) == 3


def test_one_pass_is_the_original_scheme(tmp_path, port_on_every_loopback_address):
    cfg, calls = three_peers(tmp_path, port_on_every_loopback_address,
                             [(0, TRANSFERRED), (0, TRANSFERRED), (0, INCOMING)])
    sync_round.run_round(cfg, exchange=False, second_pass=False)
    assert len(calls_of(calls)) == 3


def test_behind_skips_failed_peers_and_roots_without_changes():
    results = [outcome(OK), outcome(FAILED), outcome(OK), outcome(OK)]
    assert sync_round.behind({"/a": [0, 0, 2, 0], "/b": [1, 0, 0, 0]}, results) == \
        {0: ["/a"]}
    assert sync_round.behind({"/a": [0, 0, 0, 3]}, results) == {0: ["/a"], 2: ["/a"]}


def test_a_busy_peer_replica_is_tried_again_with_ours_let_go(tmp_path, listening_port):
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): [(3, BUSY), (0, TRANSFERRED)]})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"), exchange=False)
    assert (result.result, result.files, result.sessions) == (OK, 1, 1)
    assert len(calls_of(calls)) == 2


def test_a_peer_replica_busy_for_too_long_fails_saying_so(tmp_path, listening_port):
    program, _ = fake_unison(tmp_path, {str(tmp_path / "data"): (3, BUSY)})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program, lock_wait=1)
    result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"), exchange=False)
    assert result.result == FAILED
    assert "stayed busy for 2 s" in result.message
    assert result.message.endswith("still so after 1 s, gave up; the next round tries again")


def test_our_replica_held_too_long_fails_the_peer(tmp_path, listening_port):
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, TRANSFERRED)})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program, lock_wait=1)
    with replica.held(cfg, cfg.roots[0], "session from node3", 0):
        result = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"), exchange=False)
    assert result.result == FAILED
    assert "held by session from node3" in result.message
    assert not calls.exists()


def test_a_wiped_root_is_not_synced_until_deletions_are_allowed(tmp_path, listening_port):
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, "")})
    cfg, _ = write_node(tmp_path, [{"name": "node1", "address": "127.0.0.11"}, NODE2],
                        ssh_port=listening_port, unison=program)
    (tmp_path / "data" / "a").write_text("x")
    replica.record(cfg, cfg.roots[0])
    (tmp_path / "data" / "a").unlink()
    result, = sync_round.run_round(cfg, exchange=False)
    assert result.result == FAILED
    assert "deletion guard" in result.message and "--allow-deletions" in result.message
    assert not calls.exists()
    result, = sync_round.run_round(cfg, exchange=False, allow_deletions=True)
    assert result.result == OK
    call, = calls_of(calls)
    assert "-confirmbigdel=false" in call["argv"]  # nor does Unison's own guard stop it


@pytest.mark.parametrize("said, result, sessions", [
    ("ssh: connect to host 127.0.0.1 port 22: Connection refused", UNREACHABLE, 0),
    ("ssh: connect to host 127.0.0.1 port 22: No route to host", UNREACHABLE, 0),
    ("Host key verification failed.", FAILED, 1),   # the session's own failure aside
    ("replimesh@127.0.0.1: Permission denied (publickey).", FAILED, 1),
], ids=["refused", "no-route", "host-key", "login"])
def test_a_peer_ssh_cannot_reach_is_unreachable_and_one_it_refuses_is_failed(
        tmp_path, listening_port, said, result, sessions):
    """The port answered the probe, then ssh failed: gone since (no session tried), or
    there but refusing us (a failure to look into)."""
    ssh = script(tmp_path, "stand-in-ssh", f"cat >/dev/null\necho '{said}' >&2\nexit 255\n")
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, "")})
    cfg, _ = write_node(tmp_path, [], ssh=ssh, unison=program, ssh_port=listening_port)
    outcome = sync_round.sync_peer(cfg, entry("node2", "127.0.0.1"))
    assert (outcome.result == UNREACHABLE) == (result == UNREACHABLE)
    assert said in outcome.message
    assert (len(calls_of(calls)) if calls.exists() else 0) == sessions


def test_a_peer_syncs_by_unison_only_what_the_push_left():
    from plugins.module_utils.replimesh.push import Pushed
    scope = {"/a": ["x", "y"], "/b": None, "/c": ["z"]}
    gave = {"/a": Pushed(done=["x"], rest=["y"]), "/c": Pushed(done=["z"])}
    assert sync_round._left(scope, gave) == {"/a": ["y"], "/b": None}
    assert sync_round._left(scope, None) == scope
    assert sync_round._left({"/c": ["z"]}, {"/c": Pushed(done=["z"])}) == {}
