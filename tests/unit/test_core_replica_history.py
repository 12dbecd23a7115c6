"""A replica's history on a node: a walk sees what went (deleted, replaced) and hashes
only what changed; the deletion guard keeps a wiped root from recording anything; what
the history says was deleted is deleted here into the backup area, and nothing newer;
the exchange's records are taken in, a hostile peer's refused."""

import json
import os
import time

import pytest

from plugins.module_utils.replimesh import config, history, replica, replica_history, tree
from plugins.module_utils.replimesh.history import DELETED, REPLACED, Fate, Version

# An hour ago: the records must be younger than the backup retention (they expire), and
# older than what a test makes "now".
T0 = int(time.time()) - 3600


@pytest.fixture
def cfg(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return config.parse({"node": "node1", "roots": [str(root)],
                         "replica_dir": str(tmp_path / "replicas")})


def put(root, relative, text, mtime=T0):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
    os.utime(path, (mtime, mtime))
    return tree.current(root, relative)


def records(cfg):
    return replica_history.load(cfg, cfg.roots[0])


def test_a_walk_sees_what_went_and_what_was_replaced(cfg):
    root = cfg.roots[0]
    kept, gone, edited = put(root, "kept", "k"), put(root, "d/gone", "g"), put(root, "e", "1")
    first = tree.walk(root, {})
    assert (first.files, first.gone, first.replaced) == (3, [], [])
    os.unlink(os.path.join(root, "d/gone"))
    os.rmdir(os.path.join(root, "d"))
    put(root, "e", "2")
    second = tree.walk(root, first.index)
    assert sorted(second.gone) == [Version("d", "dir", 0), gone]
    assert second.replaced == [edited]
    assert second.index["kept"] == first.index["kept"] and kept.path == "kept"


def test_a_walk_hashes_only_what_changed(cfg, monkeypatch):
    root = cfg.roots[0]
    put(root, "a", "a")
    first = tree.walk(root, {})
    monkeypatch.setattr(tree, "digest_of", lambda *a: pytest.fail("hashed again"))
    assert tree.walk(root, first.index).index == first.index


def test_the_backup_area_and_unisons_temporary_files_are_not_the_replica(cfg):
    root = cfg.roots[0]
    put(root, ".replimesh-backup/old", "o")
    put(root, "d/.unison.x.123.unison.tmp", "partial")
    walk = tree.walk(root, {})
    assert sorted(walk.index) == ["d"]
    assert walk.temporary == ["d/.unison.x.123.unison.tmp"]


def test_observe_records_what_this_node_saw_go(cfg):
    root = cfg.roots[0]
    deleted, edited = put(root, "a", "a"), put(root, "b", "1")
    replica_history.observe(cfg, root)
    assert records(cfg) == {}
    os.unlink(os.path.join(root, "a"))
    put(root, "b", "2")
    observed = replica_history.observe(cfg, root)
    assert observed.seen_go == 2
    assert {v: f.kind for v, f in records(cfg).items()} == {deleted: DELETED, edited: REPLACED}
    assert {f.node for f in records(cfg).values()} == {"node1"}
    assert replica.recorded_files(cfg, root) == 1


def test_a_wiped_root_records_nothing(cfg):
    root = cfg.roots[0]
    for number in range(12):
        put(root, f"f{number}", str(number))
    replica_history.observe(cfg, root)
    for name in os.listdir(root):
        os.unlink(os.path.join(root, name))
    observed = replica_history.observe(cfg, root)
    assert observed.refusal.startswith("deletion guard:")
    assert records(cfg) == {}
    assert replica.recorded_files(cfg, root) == 12
    # taken as intended: the deletions are recorded, to spread
    replica_history.observe(cfg, root, guard=False)
    assert len(records(cfg)) == 12


def test_a_killed_sessions_temporary_file_is_removed(cfg):
    root = cfg.roots[0]
    put(root, ".unison.big.5f.unison.tmp", "half a file")
    replica_history.observe(cfg, root)
    assert os.listdir(root) == []


def deleted_elsewhere(cfg, *versions, when=None):
    replica_history.add(cfg, cfg.roots[0], {
        v: Fate(DELETED, int(time.time()) if when is None else when, "node2")
        for v in versions})


def test_what_the_mesh_deleted_is_deleted_here_into_the_backup_area(cfg):
    root = cfg.roots[0]
    doomed, stays = put(root, "d/doomed", "x"), put(root, "stays", "y")
    put(root, ".replimesh-backup/d/doomed", "an older backup")
    deleted_elsewhere(cfg, doomed, Version("d", "dir", 0))
    observed = replica_history.observe(cfg, root)
    assert replica_history.apply(cfg, root, observed) == ["d/doomed", "d"]
    assert sorted(os.listdir(root)) == [".replimesh-backup", "stays"]
    with open(os.path.join(root, ".replimesh-backup/d/doomed.1"), encoding="utf-8") as kept:
        assert kept.read() == "x"
    assert replica.recorded_files(cfg, root) == 1
    with replica_history.index_of(cfg, root) as index:
        assert stays in {tree.version(p, e) for p, e in index.all().items()}


def test_a_newer_version_or_a_newer_file_in_a_deleted_folder_stays(cfg):
    root = cfg.roots[0]
    old = put(root, "a", "old")
    put(root, "a", "edited since", mtime=T0 + 1)
    same_text_other_time = Version("b", old.digest, T0)
    put(root, "b", "old", mtime=T0 + 60)       # the same content made again, later
    put(root, "d/new", "written after the deletion")
    deleted_elsewhere(cfg, old, same_text_other_time, Version("d", "dir", 0))
    observed = replica_history.observe(cfg, root)
    assert replica_history.apply(cfg, root, observed) == []
    assert sorted(os.listdir(root)) == ["a", "b", "d"]


def test_an_empty_folder_made_after_the_deletion_stays(cfg):
    root = cfg.roots[0]
    os.mkdir(os.path.join(root, "old"))
    os.utime(os.path.join(root, "old"), (T0, T0))
    os.mkdir(os.path.join(root, "new"))  # made now, after the deletion below
    deleted_elsewhere(cfg, Version("old", "dir", 0), Version("new", "dir", 0), when=T0 + 10)
    observed = replica_history.observe(cfg, root)
    assert replica_history.apply(cfg, root, observed) == ["old"]


def test_a_file_changed_since_the_walk_is_not_deleted(cfg):
    root = cfg.roots[0]
    doomed = put(root, "a", "x")
    deleted_elsewhere(cfg, doomed)
    observed = replica_history.observe(cfg, root)
    put(root, "a", "written in between", mtime=T0 + 5)
    assert replica_history.apply(cfg, root, observed) == []
    assert os.listdir(root) == ["a"]


def test_dead_says_whether_a_version_is_old_news(cfg):
    root = cfg.roots[0]
    old = put(root, "a", "old")
    replica_history.add(cfg, root, {old: Fate(REPLACED, int(time.time()), "node3")})
    assert replica_history.dead(cfg, root, "a")
    put(root, "a", "new")
    assert not replica_history.dead(cfg, root, "a")
    assert not replica_history.dead(cfg, root, "missing")


def test_the_exchange_carries_every_replicas_history(cfg, tmp_path):
    root = cfg.roots[0]
    version = Version("a", "ab" * 32, T0)
    deleted_elsewhere(cfg, version)
    sent = replica_history.attach(cfg)
    other = config.parse({"node": "node2", "roots": [root],
                          "replica_dir": str(tmp_path / "other")})
    assert replica_history.take(other, sent, "node1") == ({root: 1}, [])
    assert replica_history.take(other, sent, "node1") == ({root: 0}, [])
    assert replica_history.load(other, root) == records(cfg)
    assert replica_history.take(other, {}, "old-node") == ({root: 0}, [])  # older replimesh


@pytest.mark.parametrize("sent, needle", [
    ({"history": []}, "history from node3 is not an object: ignored"),
    ({"history": {"ROOT": [["../x", "ab" * 32, 1, DELETED, "n", T0]]}},
     "is not a clean relative path: ignored"),
    ({"history": {"ROOT": "many"}}, "expected a list of records: ignored"),
])
def test_a_hostile_history_is_refused_with_one_line(cfg, sent, needle):
    root = cfg.roots[0]
    sent = {"history": {root: sent["history"]["ROOT"]}} if isinstance(
        sent["history"], dict) else sent
    new, problems = replica_history.take(cfg, sent, "node3")
    assert not any(new.values()) and len(problems) == 1 and needle in problems[0]
    assert records(cfg) == {}


def test_a_damaged_history_starts_afresh(cfg):
    root = cfg.roots[0]
    os.makedirs(cfg.replica_dir)
    with open(replica.file_path(cfg, root, "history.json"), "w", encoding="utf-8") as out:
        out.write("{not json")
    assert replica_history.load(cfg, root) == {}
    deleted_elsewhere(cfg, Version("a", "ab" * 32, T0))
    assert len(records(cfg)) == 1


def test_records_expire_with_the_backup_retention(cfg):
    root = cfg.roots[0]
    now = int(time.time())
    replica_history.add(cfg, root, {
        Version("old", "ab" * 32, 1): Fate(DELETED, now - 15 * 86400, "node2"),
        Version("young", "ab" * 32, 1): Fate(DELETED, now - 86400, "node2")})
    assert [v.path for v in records(cfg)] == ["young"]
    assert history.valid(Version("young", "ab" * 32, 1))


def test_a_session_right_after_a_walk_takes_it_unless_the_guard_refused(cfg, monkeypatch):
    root = cfg.roots[0]
    for number in range(12):
        put(root, f"f{number}", str(number))
    replica_history.observe(cfg, root)
    walks = []
    real_walk = tree.walk
    monkeypatch.setattr(tree, "walk", lambda *a: walks.append(1) or real_walk(*a))
    assert replica_history.observe(cfg, root, fresh_s=60).walk.files == 12
    assert walks == []
    for name in os.listdir(root):
        os.unlink(os.path.join(root, name))
    assert replica_history.observe(cfg, root).refusal  # the exchange's walk: wiped
    assert replica_history.observe(cfg, root, fresh_s=60).refusal  # walked again, refused
    assert walks == [1, 1]


def test_after_a_session_that_brought_nothing_no_walk_is_needed(cfg, monkeypatch):
    root = cfg.roots[0]
    put(root, "d/a", "a")
    first = tree.walk(root, {})
    assert tree.settled(root, tree.folders(first.index), first.root_mtime)
    put(root, "d/b", "b", mtime=T0)  # what Unison brings: a new name in a folder
    assert not tree.settled(root, tree.folders(first.index), first.root_mtime)
    second = tree.walk(root, first.index)
    os.rename(os.path.join(root, "d/b"), os.path.join(root, "b"))
    assert not tree.settled(root, tree.folders(second.index), second.root_mtime)

    replica_history.observe(cfg, root)
    monkeypatch.setattr(tree, "walk", lambda *a: pytest.fail("walked again"))
    assert replica_history.observe(cfg, root, guard=False, after_session=True).walk.files == 2


def test_the_json_index_of_an_older_release_is_taken_in_so_a_deletion_since_is_seen(cfg):
    root = cfg.roots[0]
    gone = put(root, "gone", "g")
    put(root, "kept", "k")
    walk = tree.walk(root, {})
    os.makedirs(cfg.replica_dir, exist_ok=True)
    old = replica.file_path(cfg, root, "index.json")
    with open(old, "w", encoding="utf-8") as out:   # what the older release wrote
        json.dump({"root": root, "index": walk.index, "root_mtime": walk.root_mtime}, out)
    os.unlink(os.path.join(root, "gone"))
    replica_history.observe(cfg, root)
    assert records(cfg)[gone].kind == DELETED
    assert not os.path.exists(old)
