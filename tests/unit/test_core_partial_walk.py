"""A walk of only what changed: with the paths the watcher's events name (real inotify on
this kernel), tree.walk_paths finds what a walk of the whole root finds, for a seeded
random run of edits, deletions, moves and new folders; and the journal that carries those
paths from the watcher to whoever walks the replica next."""

import os
import random
import select
import shutil
import time

import pytest

from plugins.module_utils.replimesh import inotify, markers, replica_history, tree
from plugins.module_utils.replimesh.watch import Changes, Tree

from .support import write_node

SEEDS = range(8)
STEPS = 40


def settle(notify, watched):
    """The paths the events queued so far name (the kernel queues an event within the
    call that made it: all of them are in the queue once the changes are made)."""
    paths, end = set(), time.monotonic() + 5.0
    while time.monotonic() < end:
        ready, _, _ = select.select([notify], [], [], 0.02)
        if not ready:
            break
        for event in notify.read():
            path = watched.handle(event, Changes())
            if path is not None:
                paths.add(path)
    return paths


def entries(root):
    """Every file and folder below root, relative, backups left out."""
    found = []
    for folder, names, files in os.walk(root):
        relative = os.path.relpath(folder, root)
        names[:] = [n for n in names if n != tree.BACKUP_DIR]
        for name in names + files:
            found.append(name if relative == "." else f"{relative}/{name}")
    return found


def change(root, rng, step):
    """One random change of the kinds people and sessions make."""
    existing = entries(root)
    files = [p for p in existing if os.path.isfile(os.path.join(root, p))]
    folders = [p for p in existing if os.path.isdir(os.path.join(root, p))]
    where = rng.choice(["", *folders])
    kind = rng.choice(["new", "new", "edit", "delete", "move", "mkdir", "rmtree",
                       "move-folder", "link", "temporary-rename"])
    target = os.path.join(root, where, f"n{step}")
    if kind == "new" or (not files and kind in ("edit", "delete", "move")):
        with open(target, "w", encoding="utf-8") as out:
            out.write(f"new {step}")
    elif kind == "edit":
        with open(os.path.join(root, rng.choice(files)), "a", encoding="utf-8") as out:
            out.write(f" edit {step}")
    elif kind == "delete":
        os.unlink(os.path.join(root, rng.choice(files)))
    elif kind == "move":
        os.rename(os.path.join(root, rng.choice(files)), target)
    elif kind == "mkdir":
        os.makedirs(os.path.join(target, "inner"))
        with open(os.path.join(target, "inner", "f"), "w", encoding="utf-8") as out:
            out.write("in a new folder")
    elif kind == "rmtree" and folders:
        shutil.rmtree(os.path.join(root, rng.choice(folders)))
    elif kind == "move-folder" and folders:
        source = rng.choice(folders)
        if not (where + "/").startswith(source + "/"):
            os.rename(os.path.join(root, source), target)
    elif kind == "link":
        os.symlink(f"/nowhere/{step}", target)
    elif kind == "temporary-rename":   # what a Unison session does
        temporary = os.path.join(root, where, f".unison.n{step}.123.unison.tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(f"brought {step}")
        os.rename(temporary, target)


def compare(partial, previous, full):
    """A partial walk, applied to the index it started from, against a whole walk."""
    applied = {p: e for p, e in previous.items() if p not in partial.removed}
    applied.update(partial.index)
    assert applied == full.index
    assert partial.files == full.files
    assert sorted(partial.gone) == sorted(full.gone)
    assert sorted(partial.replaced) == sorted(full.replaced)
    assert partial.changed == full.changed


@pytest.mark.parametrize("seed", SEEDS)
def test_a_walk_of_what_the_events_name_finds_what_a_whole_walk_finds(tmp_path, seed):
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "old.txt").write_text("old")
    (root / tree.BACKUP_DIR).mkdir()
    notify = inotify.Inotify()
    try:
        watched = Tree(notify, str(root))
        watched.start()
        rng = random.Random(seed)
        previous = tree.Indexed(tree.walk(str(root), {}).index)
        for step in range(STEPS):
            for number in range(rng.randint(1, 3)):
                change(str(root), rng, f"{step}-{number}")
            paths = settle(notify, watched)
            assert "" not in paths   # no event lost
            partial = tree.walk_paths(str(root), previous, paths,
                                      sum(1 for e in previous.values() if e[0] != "d"))
            whole = tree.walk(str(root), previous)
            compare(partial, previous, whole)
            previous = tree.Indexed(whole.index)
    finally:
        notify.close()


@pytest.fixture
def cfg(tmp_path):
    return write_node(tmp_path, [{"name": "node1", "address": "127.0.0.11"}])[0]


def test_the_journal_gives_what_changed_since_the_last_walk_and_nothing_else(cfg):
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    first = markers.read(cfg, root)
    assert markers.journaled(cfg, root, first, None)[0] is None   # no walk yet: all of it
    _, offset = markers.journaled(cfg, root, first, None)
    keeper.changed(root, {"a", "b/c"})
    now = markers.read(cfg, root)
    paths, later = markers.journaled(cfg, root, now, (first, offset))
    assert paths == {"a", "b/c"} and later > offset
    keeper.changed(root, {"d\nnewline", "\udcff-not-utf8"})
    assert markers.journaled(cfg, root, markers.read(cfg, root), (now, later))[0] == {
        "d\nnewline", "\udcff-not-utf8"}
    keeper.changed(root, {""})   # lost events: the whole root
    assert markers.journaled(cfg, root, markers.read(cfg, root), (now, later))[0] is None


def test_a_line_being_written_is_left_for_the_next_walk(cfg):
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    marker = markers.read(cfg, root)
    _, offset = markers.journaled(cfg, root, marker, None)
    with open(markers.journal_path(cfg, root), "a", encoding="ascii") as journal:
        journal.write('"done"\n"half')
    paths, later = markers.journaled(cfg, root, marker, (marker, offset))
    assert paths == {"done"}
    with open(markers.journal_path(cfg, root), "a", encoding="ascii") as journal:
        journal.write('way"\n')
    assert markers.journaled(cfg, root, marker, (marker, later))[0] == {"halfway"}


@pytest.mark.parametrize("last", [
    lambda marker, offset: None,                      # no walk recorded
    lambda marker, offset: ("0000:3", offset),        # a walk of another epoch
    lambda marker, offset: (marker, 1),               # an offset inside the header
])
def test_without_a_walk_of_this_epoch_the_whole_root_is_walked(cfg, last):
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    marker = markers.read(cfg, root)
    _, offset = markers.journaled(cfg, root, marker, None)
    keeper.changed(root, {"a"})
    assert markers.journaled(cfg, root, markers.read(cfg, root), last(marker, offset))[0] \
        is None


def test_a_journal_that_cannot_be_written_takes_the_marker_away(cfg, monkeypatch):
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    before = markers.read(cfg, root)
    real = open

    def full_disk(path, *args, **kwargs):
        if str(path) == markers.journal_path(cfg, root):
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", full_disk)
    keeper.changed(root, {"a"})
    monkeypatch.setattr("builtins.open", real)
    assert markers.read(cfg, root) is None   # no walk may take the replica as unchanged
    keeper.changed(root, {"b"})
    after = markers.read(cfg, root)
    assert after is not None and after.split(":")[0] != before.split(":")[0]


def test_a_full_journal_starts_a_new_epoch(cfg, monkeypatch):
    monkeypatch.setattr(markers, "JOURNAL_MAX_BYTES", 100)
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    before = markers.read(cfg, root)
    keeper.changed(root, {f"path-{n}" for n in range(20)})
    assert markers.read(cfg, root).split(":")[0] != before.split(":")[0]
    assert os.path.getsize(markers.journal_path(cfg, root)) < 100


def test_observe_walks_only_what_the_journal_names_and_records_it_right(cfg, monkeypatch):
    root = cfg.roots[0]
    for name in ("kept.txt", "gone.txt"):
        with open(os.path.join(root, name), "w", encoding="utf-8") as out:
            out.write(name)
    keeper = markers.Keeper(cfg)
    keeper.start()
    replica_history.observe(cfg, root)   # a full walk: the first of the epoch
    os.unlink(os.path.join(root, "gone.txt"))
    keeper.changed(root, {"gone.txt"})
    whole = tree.walk
    monkeypatch.setattr(tree, "walk", lambda *a: pytest.fail("a whole walk"))
    observed = replica_history.observe(cfg, root, guard=False)
    assert observed.seen_go == 1 and observed.walk.partial
    assert observed.walk.removed == ["gone.txt"] and observed.walk.files == 1
    monkeypatch.setattr(tree, "walk", whole)
    with replica_history.index_of(cfg, root) as index:
        assert index.all().keys() == {"kept.txt"} and index.files() == 1


def test_whole_walks_keep_the_stored_index_equal_to_the_tree(cfg):
    """No watcher: every walk is a whole one, and only the rows that differ are written."""
    root = cfg.roots[0]
    rng = random.Random(3)
    for step in range(15):
        for number in range(rng.randint(1, 3)):
            change(root, rng, f"{step}-{number}")
        replica_history.observe(cfg, root, guard=False)
        with replica_history.index_of(cfg, root) as index:
            assert index.all() == tree.walk(root, {}).index
            assert index.files() == tree.walk(root, {}).files


@pytest.mark.parametrize("reuse", [{"fresh_s": 60}, {"after_session": True}])
def test_what_the_journal_names_is_walked_even_right_after_a_walk(cfg, reuse):
    """A walk may be taken as it is right after another one (a session after the
    exchange's walk), but not past what the journal says changed since: a file made
    then and left out of the index would be pushed as new, and its deletion as nothing
    to delete (a Unison session then brought it back from the peers)."""
    root = cfg.roots[0]
    keeper = markers.Keeper(cfg)
    keeper.start()
    replica_history.observe(cfg, root)
    with open(os.path.join(root, "made.txt"), "w", encoding="utf-8") as out:
        out.write("made just now")
    keeper.changed(root, {"made.txt"})
    replica_history.observe(cfg, root, guard=False, **reuse)
    with replica_history.index_of(cfg, root) as index:
        assert "made.txt" in index.all()
