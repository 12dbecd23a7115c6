"""The chaos run's model on hand-made histories: what counts as seen, and what each end
check reports, without a lab."""

from tests.integration.chaos import (
    History,
    differing_trees,
    leftovers,
    parse_dump,
    split_dump,
)

ALL_OK = {"node2": "ok", "node3": "ok", "node4": "ok"}


def test_a_write_is_seen_by_a_round_on_its_node_with_a_peer_ok():
    history = History()
    write = history.write(1, "node1", "a.txt", "c1")
    history.round(2, "node1", {"node2": "unreachable", "node3": "ok"})
    assert write.seen == "step 2, round on node1"


def test_a_write_is_seen_by_another_nodes_round_only_if_that_peer_was_ok():
    history = History()
    write = history.write(1, "node1", "a.txt", "c1")
    history.round(2, "node2", {"node1": "failed", "node3": "ok"})
    assert not write.seen
    history.round(3, "node3", {"node1": "ok"})
    assert write.seen == "step 3, round on node3"


def test_a_round_with_no_peer_ok_or_no_json_sees_nothing():
    history = History()
    write = history.write(1, "node1", "a.txt", "c1")
    history.round(2, "node1", {"node2": "unreachable", "node3": "failed"})
    history.round(3, "node2", None)
    assert not write.seen


def test_a_seen_write_missing_at_the_end_is_reported():
    history = History()
    history.write(1, "node1", "d0/a.txt", "c1")
    history.round(2, "node1", ALL_OK)
    lost = history.lost_writes({"node1": {"other"}, "node2": set()})
    assert len(lost) == 1
    assert "invariant 2" in lost[0] and "d0/a.txt" in lost[0] and "'c1'" in lost[0]


def test_a_seen_write_in_a_backup_or_a_conflict_copy_is_not_lost():
    history = History()
    history.write(1, "node1", "a.txt", "c1")
    history.round(2, "node1", ALL_OK)
    assert history.lost_writes({"node1": set(), "node3": {"c1"}}) == []


def test_an_unseen_write_overwritten_locally_is_not_reported():
    history = History()
    history.write(1, "node1", "a.txt", "c1")
    history.write(2, "node1", "a.txt", "c2", replaced="c1")
    history.round(3, "node1", ALL_OK)
    assert history.lost_writes({"node1": {"c2"}}) == []


def test_a_seen_write_removed_by_the_workload_on_two_nodes_is_excused():
    history = History()
    history.write(1, "node1", "a.txt", "c1")
    history.round(2, "node1", ALL_OK)
    history.write(3, "node1", "a.txt", "c2", replaced="c1")
    assert len(history.lost_writes({"node1": {"c2"}})) == 1  # node2.. kept it
    history.delete(4, "node2", "a.txt", "c1")
    assert history.lost_writes({"node1": {"c2"}}) == []


def test_a_seen_deletion_whose_content_is_live_again_is_reported():
    history = History()
    history.write(1, "node1", "a.txt", "c1")
    history.round(2, "node1", ALL_OK)
    history.delete(3, "node2", "a.txt", "c1")
    history.round(4, "node2", {"node1": "ok", "node3": "ok", "node4": "ok"})
    back = history.resurrected({"node1": {"a.txt": "c1"}, "node2": {"a.txt": "c1"},
                                "node3": {}})
    assert len(back) == 1
    assert "invariant 3" in back[0] and "node1, node2" in back[0] and "step 3" in back[0]


def test_an_unseen_deletion_or_a_newer_version_at_the_path_is_not_reported():
    history = History()
    history.write(1, "node1", "a.txt", "c1")
    history.round(2, "node1", ALL_OK)
    history.delete(3, "node2", "a.txt", "c1")
    history.write(4, "node2", "a.txt", "c2")  # before any round: the deletion was unseen
    history.round(5, "node2", {"node1": "ok"})
    assert history.resurrected({"node1": {"a.txt": "c1"}}) == []
    history.delete(6, "node3", "a.txt", "c1")
    history.round(7, "node3", {"node1": "ok"})
    assert history.resurrected({"node1": {"a.txt": "c2"}}) == []


def test_a_rename_is_a_deletion_of_the_old_path_and_keeps_the_content():
    history = History()
    history.write(1, "node1", "a.txt", "c1")
    history.rename(2, "node1", "a.txt", "d1/m2.txt", "c1")
    history.round(3, "node1", ALL_OK)
    assert history.lost_writes({"node2": {"c1"}}) == []
    assert len(history.resurrected({"node2": {"a.txt": "c1", "d1/m2.txt": "c1"}})) == 1


def test_trees_that_differ_are_reported_path_by_path():
    same = {"a.txt": "c1"}
    assert differing_trees({"node1": same, "node2": dict(same)}) == []
    found = differing_trees({"node1": same, "node2": {}, "node3": {"a.txt": "c1", "b": "x"}})
    assert len(found) == 2
    assert "a.txt: node1: 'c1', node2: None, node3: 'c1'" in found[0]


def test_leftovers_processes_temporary_files_and_failed_final_rounds():
    found = leftovers({"node1": "", "node2": "412 unison -server\n"},
                      {"node1": [".unison.a.txt.123.unison.tmp"], "node2": []},
                      [("node1", 0, "fine"), ("node3", 1, "SameFileError")])
    assert [f.split(":")[0] for f in found] == [
        "invariant 4 (unison left running) on node2",
        "invariant 4 (temporary files left) on node1",
        "invariant 4 (final round failed)"]
    assert "SameFileError" in found[2]


def test_a_dump_splits_into_the_live_tree_what_is_held_and_temporary_files():
    dump = ("./a.txt\0c1\0./.replimesh-backup/b.txt\0c0\0./d0/.unison.x.tmp\0part\0"
            "./d0/a.conflict-node2-20261201T101500Z.txt\0c2\0")
    tree, held, temporary = split_dump(parse_dump(dump))
    assert tree == {"a.txt": "c1", "d0/a.conflict-node2-20261201T101500Z.txt": "c2"}
    assert held == {"c1", "c0", "part", "c2"}
    assert temporary == ["d0/.unison.x.tmp"]
