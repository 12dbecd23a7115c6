"""One sync round: per-peer outcomes, byte counts, exit codes and the recorded state."""

import os

from plugins.module_utils.replimesh import round as sync_round
from plugins.module_utils.replimesh import state
from plugins.module_utils.replimesh.peers import Peer
from plugins.module_utils.replimesh.round import FAILED, OK, UNREACHABLE, PeerResult

from .support import (
    CONFLICT,
    FATAL,
    SOME_FAILED,
    TRANSFERRED,
    calls_of,
    closed_port,
    fake_unison,
    write_node,
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


def test_missing_root_fails_the_peer_without_syncing(tmp_path):
    cfg, _ = write_node(tmp_path, [], roots=[str(tmp_path / "data"), "/nonexistent/replimesh"])
    result = sync_round.sync_peer(cfg, Peer("node2", "127.0.0.1"))
    assert result.result == FAILED
    assert result.message == "local root /nonexistent/replimesh does not exist: not syncing it"


def test_closed_port_is_unreachable(tmp_path):
    port = closed_port()
    cfg, _ = write_node(tmp_path, [], ssh_port=port)
    result = sync_round.sync_peer(cfg, Peer("node2", "127.0.0.1"))
    assert (result.result, result.files) == (UNREACHABLE, 0)
    assert result.message == f"no answer on 127.0.0.1:{port} within 1 s"


def test_reachable_peer_sums_files_bytes_and_conflicts(tmp_path, listening_port):
    second = tmp_path / "more"
    second.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "node1.txt").write_bytes(b"hello\n")
    program, calls = fake_unison(tmp_path, {str(tmp_path / "data"): (0, TRANSFERRED),
                                            str(second): (1, CONFLICT)})
    cfg, _ = write_node(tmp_path, [], roots=[str(tmp_path / "data"), str(second)],
                        ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, Peer("node2", "127.0.0.1"))
    assert (result.result, result.files, result.bytes, result.conflicts) == (OK, 1, 6, 1)
    assert result.message == f"{second}: 1 conflict(s) left as they are: a.txt"
    assert len(calls_of(calls)) == 2


def test_failed_session_fails_the_peer_with_unisons_reason(tmp_path, listening_port):
    program, _ = fake_unison(tmp_path, {str(tmp_path / "data"): (3, FATAL)})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, Peer("node2", "127.0.0.1"))
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
    entry = recorded["peers"]["node2"]
    assert (entry["result"], entry["last_ok"]) == (UNREACHABLE, None)
    assert entry["at"] == recorded["last_round"]


def test_round_goes_through_peers_in_rotated_order(tmp_path):
    peers = [{"name": f"node{i}", "address": f"127.0.0.{i}"} for i in (1, 2, 3, 4)]
    peers.append({"name": "node5", "address": "127.0.0.5", "state": "removed"})
    cfg, _ = write_node(tmp_path, peers, node="node3", ssh_port=closed_port())
    results = sync_round.run_round(cfg)
    assert [r.peer for r in results] == ["node4", "node1", "node2"]
    assert sorted(state.load(cfg.state_file)["peers"]) == ["node1", "node2", "node4"]


def test_now_is_utc_to_the_second():
    stamp = sync_round.now()
    assert stamp.endswith("+00:00")
    assert "." not in stamp


def test_failed_paths_are_named_in_the_message(tmp_path, listening_port):
    root = str(tmp_path / "data")
    program, _ = fake_unison(tmp_path, {root: (2, SOME_FAILED)})
    cfg, _ = write_node(tmp_path, [], ssh_port=listening_port, unison=program)
    result = sync_round.sync_peer(cfg, Peer("node2", "127.0.0.1"))
    assert result.result == FAILED
    assert result.message == f"{root}: failed: b.txt (1 path(s) failed: b.txt)"
