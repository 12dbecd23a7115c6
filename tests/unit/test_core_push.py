"""The push of a watcher's few changed files (push.py), from one replica's message to
another replica's files: what the peer holds as this node held it is replaced, the old
one kept in the backup area; what the peer changed itself is left to Unison; a hostile
message (paths out of the replica, contents that are not what they claim, a symlink on
the way) writes nothing where it should not."""

import dataclasses
import hashlib
import json
import os
import time

import pytest

from plugins.module_utils.replimesh import config, push, replica_history, tree
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.history import DELETED, Fate, Version

from .support import script

# An hour ago: the records must be younger than the backup retention (they expire), and
# older than what a test makes "now".
T0 = int(time.time()) - 3600


def node(tmp_path, name):
    root = tmp_path / name / "data"
    root.mkdir(parents=True)
    return config.parse({"node": name, "roots": [str(root)],
                         "replica_dir": str(tmp_path / name / "replicas")})


@pytest.fixture
def here(tmp_path):
    return node(tmp_path, "node1")


@pytest.fixture
def peer(tmp_path):
    return node(tmp_path, "node2")


def put(cfg, relative, text, mtime=T0):
    path = os.path.join(cfg.roots[0], relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
    os.utime(path, (mtime, mtime))


def read(cfg, relative):
    with open(os.path.join(cfg.roots[0], relative), encoding="utf-8") as handle:
        return handle.read()


def both(here, peer, files):
    for relative, text in files.items():
        put(here, relative, text)
        put(peer, relative, text)
    for cfg in (here, peer):
        replica_history.observe(cfg, cfg.roots[0])


def before(cfg, paths):
    return push.bases(cfg, cfg.roots[0], paths)


def deliver(here, peer, paths, base):
    """The message of here for paths, taken by peer: (done, written)."""
    message, _, _ = push.prepare(here.roots[0], paths, base)
    changes = push.parse(message, "test push")
    return push.take(peer, peer.roots[0], changes, 100)


def test_a_changed_file_a_new_one_and_a_deletion_are_put_in_place(here, peer):
    both(here, peer, {"a.txt": "old a", "sub/gone": "to delete"})
    base = before(here, ["a.txt", "sub/new", "sub/gone"])
    put(here, "a.txt", "new a", mtime=T0 + 5)
    put(here, "sub/new", "brand new", mtime=T0 + 6)
    os.unlink(os.path.join(here.roots[0], "sub/gone"))
    done, written = deliver(here, peer, ["a.txt", "sub/new", "sub/gone"], base)
    assert done == written == ["a.txt", "sub/gone", "sub/new"]
    assert read(peer, "a.txt") == "new a"
    assert read(peer, "sub/new") == "brand new"
    assert not os.path.exists(os.path.join(peer.roots[0], "sub/gone"))
    assert os.stat(os.path.join(peer.roots[0], "a.txt")).st_mtime == T0 + 5
    backup = os.path.join(peer.roots[0], tree.BACKUP_DIR)
    assert read(peer, f"{tree.BACKUP_DIR}/a.txt") == "old a"
    assert read(peer, f"{tree.BACKUP_DIR}/sub/gone") == "to delete"
    assert not [n for n in os.listdir(os.path.join(peer.roots[0], "sub"))
                if tree.unison_temporary(n)]
    assert os.path.isdir(backup)


def test_what_the_peer_changed_itself_is_left_to_unison(here, peer):
    both(here, peer, {"a.txt": "old", "b.txt": "old b"})
    base = before(here, ["a.txt", "b.txt", "c.txt"])
    put(here, "a.txt", "mine", mtime=T0 + 5)
    put(peer, "a.txt", "theirs", mtime=T0 + 7)          # a conflict
    put(here, "c.txt", "new here")
    put(peer, "c.txt", "new there")                     # made on both
    os.unlink(os.path.join(here.roots[0], "b.txt"))
    put(peer, "b.txt", "edited there", mtime=T0 + 9)    # deleted here, edited there
    done, written = deliver(here, peer, ["a.txt", "b.txt", "c.txt"], base)
    assert done == written == []
    assert (read(peer, "a.txt"), read(peer, "b.txt"), read(peer, "c.txt")) == (
        "theirs", "edited there", "new there")


def test_what_the_peer_already_holds_is_done_and_not_written(here, peer):
    both(here, peer, {"a.txt": "old"})
    base = before(here, ["a.txt"])
    put(here, "a.txt", "same")
    put(peer, "a.txt", "same")
    assert deliver(here, peer, ["a.txt"], base) == (["a.txt"], [])


def test_a_version_the_mesh_saw_go_is_replaced(here, peer):
    both(here, peer, {"a.txt": "v0"})
    put(here, "a.txt", "v1", mtime=T0 + 1)
    replica_history.observe(here, here.roots[0])   # base is v1: the peer still holds v0
    base = before(here, ["a.txt"])
    put(here, "a.txt", "v2", mtime=T0 + 2)
    assert deliver(here, peer, ["a.txt"], base) == ([], [])
    v0 = Version("a.txt", hashlib.sha256(b"v0").hexdigest(), T0)
    replica_history.add(peer, peer.roots[0], {v0: Fate(DELETED, T0 + 1, "node3")})
    assert deliver(here, peer, ["a.txt"], base) == (["a.txt"], ["a.txt"])
    assert read(peer, "a.txt") == "v2"


def test_folders_symlinks_and_large_files_are_left_to_unison(here, peer, monkeypatch):
    both(here, peer, {"big": "small yet"})
    base = before(here, ["big", "folder", "link"])
    os.makedirs(os.path.join(here.roots[0], "folder"))
    os.symlink("big", os.path.join(here.roots[0], "link"))
    monkeypatch.setattr(push, "MAX_FILE_BYTES", 3)
    put(here, "big", "larger now")
    _, entries, left = push.prepare(here.roots[0], ["big", "folder", "link"], base)
    assert (entries, left) == ([], ["big", "folder", "link"])


def message(entries, contents=b""):
    return json.dumps({"entries": entries}).encode() + b"\n" + contents


def new(content, mtime=T0):
    return {"size": len(content), "mtime": mtime, "mode": 0o644,
            "digest": hashlib.sha256(content).hexdigest()}


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "a/../../x", "",
                                  ".replimesh-backup/x", "a//b", "./a", "a\0b", 7,
                                  ".unison.a.1.unison.tmp"])
def test_a_path_out_of_the_replica_is_refused(path):
    with pytest.raises(ConfigError, match="not a path in the replica"):
        push.parse(message([{"path": path, "base": None, "new": new(b"x")}], b"x"),
                   "test push")


@pytest.mark.parametrize("data, match", [
    (message([{"path": "a", "base": None, "new": new(b"abc")}], b"ab"), "cut short"),
    (message([{"path": "a", "base": None, "new": new(b"abc")}], b"abcd"), "beyond"),
    (message([{"path": "a", "base": None, "new": {**new(b"a"), "mode": 0o4755}}], b"a"),
     "malformed"),
    (message([{"path": "a", "base": {"size": 1, "digest": "zz"}, "new": None}]), "malformed"),
    (message([{"path": "a", "base": None, "new": None}] * 2), "comes twice"),
    (message([]), "entries must be"),
    (b'{"entries": [{"path": "a"}]}', "no header line"),
    (message([{"path": "a", "base": None, "new": None, "more": 1}]), "must have"),
])
def test_a_malformed_message_is_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        push.parse(data, "test push")


def test_content_that_is_not_what_it_claims_is_not_written(peer):
    claimed = new(b"the real one")
    changes = push.parse(message([{"path": "a", "base": None, "new": claimed}],
                                 b"the fake one"), "test push")
    assert push.take(peer, peer.roots[0], changes, 100) == ([], [])
    assert not os.path.exists(os.path.join(peer.roots[0], "a"))


def test_a_symlink_on_the_way_is_not_followed(peer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(peer.roots[0], "escape"))
    changes = push.parse(message([{"path": "escape/x", "base": None, "new": new(b"x")}],
                                 b"x"), "test push")
    assert push.take(peer, peer.roots[0], changes, 100) == ([], [])
    assert os.listdir(outside) == []


def test_deletions_that_would_empty_the_replica_are_left_to_unison(here, peer):
    files = {f"f{n}": str(n) for n in range(20)}
    both(here, peer, files)
    base = before(here, list(files))
    for name in files:
        os.unlink(os.path.join(here.roots[0], name))
    message_, _, _ = push.prepare(here.roots[0], list(files), base)
    changes = push.parse(message_, "test push")
    assert push.take(peer, peer.roots[0], changes, 20) == ([], [])
    assert sorted(os.listdir(peer.roots[0])) == sorted(files)


# A peer's `replimesh-push`: busy the first `busy` times (a session held its replica),
# then it takes the push.
BUSY_PEER = """n=$(cat "$(dirname "$0")/calls" 2>/dev/null || echo 0); n=$((n + 1))
echo $n > "$(dirname "$0")/calls"; cat > /dev/null
if [ $n -le {busy} ]; then echo '{{"done": [], "busy": "held by a session"}}'
else echo '{{"done": ["a.txt"], "written": ["a.txt"]}}'; fi
"""


def pushed_to_busy_peer(tmp_path, here, busy):
    ssh = script(tmp_path, "ssh", BUSY_PEER.format(busy=busy))
    cfg = dataclasses.replace(here, ssh=ssh, lock_wait=2)
    put(here, "a.txt", "new")
    message, entries, left = push.prepare(here.roots[0], ["a.txt"], {})
    gave = push.deliver(cfg, "10.0.0.2", here.roots[0], message, entries, left)
    return gave, int((tmp_path / "calls").read_text(encoding="utf-8"))


def test_a_push_to_a_busy_peer_is_tried_again(tmp_path, here):
    gave, calls = pushed_to_busy_peer(tmp_path, here, busy=1)
    assert (gave.done, gave.rest, gave.files, calls) == (["a.txt"], [], 1, 2)


def test_a_peer_busy_past_the_lock_wait_leaves_the_push_to_unison(tmp_path, here):
    gave, calls = pushed_to_busy_peer(tmp_path, here, busy=99)
    assert (gave.done, gave.rest) == ([], ["a.txt"]) and 2 <= calls < 99
