"""The watches of a root, on the real inotify of this kernel: what a change of each kind
reports, folders made, moved and removed, the root replaced, the kernel's limit; and how
a burst of changes is gathered into one round."""

import os
import select
import shutil
import time

import pytest

from plugins.module_utils.replimesh import inotify, tree, watch
from plugins.module_utils.replimesh.tree import outermost
from plugins.module_utils.replimesh.watch import Burst, Changes, Tree


@pytest.fixture
def notify():
    instance = inotify.Inotify()
    yield instance
    instance.close()


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "data"
    (path / "a" / "b").mkdir(parents=True)
    (path / "a" / "b" / "old.txt").write_text("old")
    (path / ".replimesh-backup" / "x").mkdir(parents=True)
    return path


def settle(notify, tree, deadline_s=2.0, changes=None):
    """Every change the tree reports until the queue stays empty for 0.2 s (added to
    changes, if given)."""
    changes, end = changes or Changes(), time.monotonic() + deadline_s
    while time.monotonic() < end:
        ready, _, _ = select.select([notify], [], [], 0.2)
        if not ready:
            break
        for event in notify.read():
            tree.handle(event, changes)
    return changes


def test_every_folder_but_the_backup_area_is_watched(notify, root):
    tree = Tree(notify, str(root))
    assert tree.start() == 3
    assert set(tree.watches) == {"", "a", "a/b"}


@pytest.mark.parametrize("change, expected", [
    (lambda r: (r / "new.txt").write_text("x"), {"new.txt"}),
    (lambda r: (r / "a" / "b" / "old.txt").write_text("changed"), {"a/b/old.txt"}),
    (lambda r: (r / "a" / "b" / "old.txt").unlink(), {"a/b/old.txt"}),
    (lambda r: os.rename(r / "a" / "b" / "old.txt", r / "a" / "moved.txt"),
     {"a/b/old.txt", "a/moved.txt"}),
    (lambda r: os.symlink("/etc", r / "link"), {"link"}),
    (lambda r: (r / ".replimesh-backup" / "x" / "kept").write_text("x"), set()),
    (lambda r: (r / "a" / ".unison.f.123.unison.tmp").write_text("x"), set()),
], ids=["create", "modify", "delete", "move", "symlink", "backup", "unison-temp"])
def test_a_change_reports_its_paths(notify, root, change, expected):
    tree = Tree(notify, str(root))
    tree.start()
    change(root)
    changes = settle(notify, tree)
    assert changes.paths == expected and not changes.everything


def test_a_new_folder_is_watched_and_reported_whole(notify, root):
    tree = Tree(notify, str(root))
    tree.start()
    (root / "n" / "m").mkdir(parents=True)   # its files may come before its watch
    (root / "n" / "m" / "early.txt").write_text("x")
    changes = settle(notify, tree)
    assert "n" in changes.paths
    assert {"n", "n/m"} <= set(tree.watches)
    (root / "n" / "m" / "late.txt").write_text("y")
    assert settle(notify, tree).paths == {"n/m/late.txt"}


def test_a_folder_unreadable_when_it_came_is_watched_once_readable(notify, root,
                                                                   monkeypatch):
    """`install -d -o` and tar make a folder owner-only first: the sync user's watch is
    refused (as root here, the refusal is stood in for), and files land in it unseen."""
    tree = Tree(notify, str(root))
    tree.start()
    add = notify.add

    def refused(path, *_):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(notify, "add", refused)
    (root / "late").mkdir()
    (root / "late" / "unseen.txt").write_text("x")
    assert settle(notify, tree).paths == {"late"} and "late" not in tree.watches
    monkeypatch.setattr(notify, "add", add)
    os.chmod(root / "late", 0o755)   # what the chown or chmod that follows tells
    changes = settle(notify, tree)
    assert "late" in changes.paths and "late" in tree.watches
    (root / "late" / "seen.txt").write_text("y")
    assert settle(notify, tree).paths == {"late/seen.txt"}


def test_a_folder_moved_within_the_root_is_watched_under_its_new_name(notify, root):
    tree = Tree(notify, str(root))
    tree.start()
    os.rename(root / "a", root / "z")
    assert settle(notify, tree).paths == {"a", "z"}
    assert set(tree.watches) == {"", "z", "z/b"}
    (root / "z" / "b" / "new.txt").write_text("x")
    assert settle(notify, tree).paths == {"z/b/new.txt"}


def test_a_folder_moved_out_or_removed_leaves_no_watch(notify, root, tmp_path):
    tree = Tree(notify, str(root))
    tree.start()
    os.rename(root / "a", tmp_path / "outside")
    assert settle(notify, tree).candidates() == (set(), {"a"})   # a session's deletion?
    (tmp_path / "outside" / "b" / "elsewhere.txt").write_text("x")
    assert not settle(notify, tree)
    (root / "c").mkdir()
    (root / "c" / "f").write_text("x")
    settle(notify, tree)
    shutil.rmtree(root / "c")
    assert settle(notify, tree).candidates() == ({"c/f"}, {"c"})
    assert set(tree.watches) == {""}


@pytest.mark.parametrize("change, sure, unsure", [
    # What a Unison session does: writes to a temporary name and renames it into place;
    # moves what it deletes or overwrites to the backup area; removes emptied folders.
    (lambda r: (r / "a" / ".unison.new.1.unison.tmp").write_text("x") or os.rename(
        r / "a" / ".unison.new.1.unison.tmp", r / "a" / "new"), set(), set()),
    (lambda r: (r / "a" / "b" / ".unison.old.txt.1.unison.tmp").write_text("y") or os.rename(
        r / "a" / "b" / ".unison.old.txt.1.unison.tmp", r / "a" / "b" / "old.txt"),
     set(), set()),
    (lambda r: os.rename(r / "a" / "b" / "old.txt", r / ".replimesh-backup" / "old.txt"),
     set(), {"a/b/old.txt"}),
    (lambda r: os.chmod(r / "a" / "b" / "old.txt", 0o600), set(), {"a/b/old.txt"}),
    # What only a process of this node does.
    (lambda r: os.rename(r / "a" / "b" / "old.txt", r / "renamed"),
     {"a/b/old.txt", "renamed"}, set()),
    (lambda r: (r / "a" / "b" / "old.txt").unlink(), {"a/b/old.txt"}, set()),
], ids=["session-writes", "session-replaces", "session-deletes", "chmod", "renamed-here",
        "removed-here"])
def test_what_a_session_may_have_done_is_told_from_what_only_this_node_does(
        notify, root, change, sure, unsure):
    tree = Tree(notify, str(root))
    tree.start()
    change(root)
    assert settle(notify, tree).candidates() == (sure, unsure)


def test_a_folder_a_session_renamed_into_place_is_watched(notify, root):
    tree = Tree(notify, str(root))
    tree.start()
    (root / ".unison.n.1.unison.tmp" / "m").mkdir(parents=True)
    (root / ".unison.n.1.unison.tmp" / "m" / "f").write_text("x")
    os.rename(root / ".unison.n.1.unison.tmp", root / "n")
    changes = settle(notify, tree)
    assert changes.candidates() == (set(), set()) and changes.synced == {"n"}
    assert {"n", "n/m"} <= set(tree.watches)
    (root / "n" / "m" / "late.txt").write_text("y")
    assert settle(notify, tree).paths == {"n/m/late.txt"}


def test_a_replaced_root_means_everything_and_is_watched_again(notify, root, tmp_path):
    tree = Tree(notify, str(root))
    tree.start()
    os.rename(root, tmp_path / "old-root")
    (tmp_path / "data" / "fresh").mkdir(parents=True)
    changes = settle(notify, tree)
    assert changes.everything
    assert set(tree.watches) == {"", "fresh"}
    (root / "fresh" / "f.txt").write_text("x")
    assert settle(notify, tree).paths == {"fresh/f.txt"}


def test_the_kernels_limit_is_named(notify, root, monkeypatch):
    def exhausted(*_args):
        raise inotify.Exhausted("fs.inotify.max_user_watches")
    monkeypatch.setattr(notify, "add", exhausted)
    with pytest.raises(inotify.Exhausted) as caught:
        Tree(notify, str(root)).start()
    assert caught.value.setting == "fs.inotify.max_user_watches"
    assert isinstance(inotify.limit(), int)


def test_parse_reads_several_events_and_their_names():
    data = (inotify._HEADER.pack(1, inotify.CREATE, 0, 16) + b"name\0".ljust(16, b"\0")
            + inotify._HEADER.pack(-1, inotify.Q_OVERFLOW, 0, 0))
    assert inotify.parse(data) == [inotify.Event(1, inotify.CREATE, 0, "name"),
                                   inotify.Event(-1, inotify.Q_OVERFLOW, 0, "")]


def test_a_file_still_open_for_writing_is_told_from_one_closed(notify, root):
    tree = Tree(notify, str(root))
    tree.start()
    with open(root / "a" / "growing.bin", "wb") as growing:
        growing.write(b"x" * 4096)
        growing.flush()
        (root / "a" / "done.txt").write_text("closed at once")
        os.rename(root / "a" / "b" / "old.txt", root / "a" / "b" / "renamed.txt")
        changes = settle(notify, tree)
        assert changes.writing == {"a/growing.bin"} and not changes.settled
        growing.write(b"more")
        growing.flush()
        settle(notify, tree, changes=changes)
        assert changes.writing == {"a/growing.bin"}
    settle(notify, tree, changes=changes)
    assert not changes.writing and changes.settled
    assert changes.paths == {"a/growing.bin", "a/done.txt", "a/b/old.txt", "a/b/renamed.txt"}


def test_a_file_renamed_while_open_is_closed_under_its_new_name(notify, root):
    tree = Tree(notify, str(root))
    tree.start()
    with open(root / "a" / "part", "wb") as part:
        part.write(b"x")
        part.flush()
        os.rename(root / "a" / "part", root / "a" / "whole")
        changes = settle(notify, tree)
        assert changes.writing == {"a/whole"}
    settle(notify, tree, changes=changes)
    assert changes.settled


def test_a_burst_waits_the_short_time_once_every_file_is_closed():
    burst = Burst(quiet_s=1.0, max_wait_s=5.0, settle_s=0.2)
    burst.changes.paths.add("a")
    burst.changes.writing.add("a")
    burst.noted(10.0)
    assert burst.due_in(10.0) == 1.0   # still being written
    burst.changes.writing.clear()      # its CLOSE_WRITE came
    burst.noted(10.5)
    assert burst.due_in(10.5) == pytest.approx(0.2)
    burst.take()
    burst.in_full(20.0)                # lost events, a start: whether closed is unknown
    assert burst.due_in(20.0) == 1.0
    burst.take()
    burst.changes.paths.add("b")       # a round to run again: when it was asked for
    burst.hold(30.0, 4.0)
    assert burst.due_in(30.0) == pytest.approx(4.0)


def test_a_burst_is_due_after_its_quiet_time_or_its_longest_wait():
    burst = Burst(quiet_s=1.0, max_wait_s=5.0)
    assert burst.due_in(0.0) is None
    burst.changes.paths.add("a")
    burst.changes.writing.add("a")
    burst.noted(10.0)
    assert burst.due_in(10.0) == 1.0
    for now in (10.5, 11.0, 11.5, 12.0, 12.5, 13.0, 13.5, 14.0, 14.5):   # never quiet
        burst.changes.paths.add(f"f{now}")
        burst.noted(now)
    assert burst.due_in(14.5) == pytest.approx(0.5)   # 5 s after the first change
    assert len(burst.take().paths) == 10
    assert burst.due_in(15.0) is None
    burst.noted(20.0)   # nothing gathered: not due
    assert burst.due_in(20.0) is None


def test_a_round_syncs_the_outermost_paths_and_too_many_mean_the_whole_root():
    assert watch.scope({"a", "a/b", "a b", "c/d"}) == ["a", "a b", "c/d"]
    assert watch.scope({f"f{n}" for n in range(watch.MAX_PATHS + 1)}) is None
    assert outermost({"x/y/z", "x/y", "x"}) == ["x"]


def test_news_keeps_what_differs_from_the_last_walk(root):
    index = tree.walk(str(root), {}).index   # as a served session leaves it
    assert watch.news(str(root), index, {"a/b/old.txt", "a", "gone.txt"}) == set()
    (root / "a" / "b" / "old.txt").write_text("edited here")
    (root / "a" / "new.txt").write_text("new")
    assert watch.news(str(root), index, {"a/b/old.txt", "a/new.txt"}) == \
        {"a/b/old.txt", "a/new.txt"}
    (root / "a" / "b" / "old.txt").unlink()
    assert watch.news(str(root), index, {"a/b/old.txt"}) == {"a/b/old.txt"}


def test_only_what_changes_the_replica_counts_for_its_marker(notify, root):
    tree = Tree(notify, str(root))
    tree.start()

    def counted(change):
        change()
        seen, end = [], time.monotonic() + 2.0
        while time.monotonic() < end:
            ready, _, _ = select.select([notify], [], [], 0.2)
            if not ready:
                break
            seen += [tree.handle(event, Changes()) for event in notify.read()]
        return any(path is not None for path in seen)
    temporary = root / "a" / ".unison.n.1.unison.tmp"
    assert not counted(lambda: (root / ".replimesh-backup" / "x" / "old").write_text("x"))
    assert not counted(lambda: temporary.write_text("being written"))
    assert counted(lambda: os.rename(temporary, root / "a" / "n"))
    assert counted(lambda: os.chmod(root / "a" / "n", 0o600))
