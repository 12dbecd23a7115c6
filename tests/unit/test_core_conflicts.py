"""Conflicts settled by policy, both versions kept: the names, the winner, and the three
steps of settle() against a stand-in for Unison that mirrors two folders."""

import os
import shutil
import time

import pytest

from plugins.module_utils.replimesh import config, conflicts, unison

T0 = 1795000000.0  # 2026-11-18T11:06:40Z
DONE = unison.Session(unison.EXIT_OK)


def test_copy_name_says_which_node_and_when():
    assert conflicts.copy_name("dir/report.txt", "node2", T0) == \
        "dir/report.conflict-node2-20261118T110640Z.txt"
    assert conflicts.copy_name(".profile", "node1", T0) == \
        ".profile.conflict-node1-20261118T110640Z"


@pytest.mark.parametrize("policy, local_mtime, remote_mtime, expected", [
    ("newer", T0 + 1, T0, "node1"),
    ("newer", T0, T0 + 1, "node2"),
    ("newer", T0, T0, "node1"),             # a tie: the same answer on both nodes
    ("prefer:node2", T0 + 9, T0, "node2"),
    ("prefer:node1", T0, T0 + 9, "node1"),
    ("prefer:node3", T0, T0 + 9, "node2"),  # neither side preferred: newer
])
def test_winner(policy, local_mtime, remote_mtime, expected):
    assert conflicts.winner(policy, "node1", "node2", local_mtime, remote_mtime) == expected
    assert conflicts.winner(policy, "node2", "node1", remote_mtime, local_mtime) == expected


class Mirror:
    """Stands in for Unison sessions between local and remote folders: with -prefer, the
    remote side wins on every -path that the remote holds or lost; without it, the local
    side's state of each -path is passed on."""

    def __init__(self, local, remote):
        self.local, self.remote, self.calls = local, remote, []

    def __call__(self, extra):
        self.calls.append(extra)
        paths = [extra[i + 1] for i, arg in enumerate(extra) if arg == "-path"]
        prefer_remote = "-prefer" in extra
        for path in paths:
            here, there = os.path.join(self.local, path), os.path.join(self.remote, path)
            if prefer_remote and (os.path.exists(there) or (os.path.exists(here)
                                  and not os.path.basename(path).count(".conflict-"))):
                self._copy(there, here)
            else:
                self._copy(here, there)
        return DONE

    @staticmethod
    def _copy(source, target):
        if os.path.exists(target):
            os.unlink(target)
        if os.path.exists(source):
            shutil.copy2(source, target)


def setup(tmp_path, local_text, remote_text, policy="newer", local_mtime=T0, remote_mtime=T0):
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    for folder, text, mtime in ((local, local_text, local_mtime),
                                (remote, remote_text, remote_mtime)):
        if text is not None:
            (folder / "a.txt").write_text(text)
            os.utime(folder / "a.txt", (mtime, mtime))
    cfg = config.parse({"node": "node1", "roots": [str(local)], "conflict_policy": policy})
    return cfg, Mirror(str(local), str(remote))


def contents(folder):
    return {name: (folder / name).read_text() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("ours_newer, winner, loser, in_place, kept, sessions", [
    (False, "node2", "node1", "theirs", "ours", 1),   # the peer's copy taken in place
    (True, "node1", "node2", "ours", "theirs", 2),    # names swapped, then passed on
])
def test_the_newer_version_wins_and_the_other_is_kept_named_for_its_node(
        tmp_path, ours_newer, winner, loser, in_place, kept, sessions):
    cfg, mirror = setup(tmp_path, "ours", "theirs", local_mtime=T0 + 5 * ours_newer,
                        remote_mtime=T0 + 5 * (not ours_newer))
    settled, = conflicts.settle(cfg, mirror.local, "node2", "ssh://peer", ["a.txt"], mirror)
    copy = f"a.conflict-{loser}-20261118T110640Z.txt"
    assert (settled.winner, settled.copy) == (winner, copy)
    expected = {"a.txt": in_place, copy: kept}
    assert contents(tmp_path / "local") == contents(tmp_path / "remote") == expected
    assert len(mirror.calls) == sessions
    assert settled.describe() == f"a.txt: {winner}'s version in place, the other kept as {copy}"


def test_the_preferred_node_wins_even_when_older(tmp_path):
    cfg, mirror = setup(tmp_path, "ours", "theirs", policy="prefer:node1",
                        local_mtime=T0, remote_mtime=T0 + 5)
    settled, = conflicts.settle(cfg, mirror.local, "node2", "ssh://peer", ["a.txt"], mirror)
    assert settled.winner == "node1"
    assert contents(tmp_path / "local")["a.txt"] == contents(tmp_path / "remote")["a.txt"] == "ours"


def test_an_edit_here_beats_a_deletion_there(tmp_path):
    cfg, mirror = setup(tmp_path, "ours", None)
    settled, = conflicts.settle(cfg, mirror.local, "node2", "ssh://peer", ["a.txt"], mirror)
    assert (settled.winner, settled.copy) == ("node1", "")
    assert contents(tmp_path / "local") == contents(tmp_path / "remote") == {"a.txt": "ours"}


def test_an_edit_there_beats_a_deletion_here(tmp_path):
    cfg, mirror = setup(tmp_path, None, "theirs")
    settled, = conflicts.settle(cfg, mirror.local, "node2", "ssh://peer", ["a.txt"], mirror)
    assert (settled.winner, settled.copy) == ("node2", "")
    assert contents(tmp_path / "local") == contents(tmp_path / "remote") == {"a.txt": "theirs"}


def test_the_local_version_is_kept_even_if_unison_replaces_the_file(tmp_path):
    cfg, _ = setup(tmp_path, "ours", "theirs", local_mtime=T0 + 5)
    local = tmp_path / "local"

    def replace_by_rename(extra):  # what Unison does: a new file renamed over the old
        if "-prefer" in extra:
            (local / ".tmp").write_text("theirs")
            os.utime(local / ".tmp", (T0, T0))
            os.replace(local / ".tmp", local / "a.txt")
        return DONE
    conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"], replace_by_rename)
    assert contents(local) == {"a.txt": "ours", "a.conflict-node2-20261118T110640Z.txt": "theirs"}


def test_a_conflicting_folder_is_kept_whole(tmp_path):
    cfg, _ = setup(tmp_path, None, None)
    local = tmp_path / "local"
    (local / "dir").mkdir()
    (local / "dir" / "x").write_text("ours")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(os.lstat(local / "dir").st_mtime))
    seen = []

    def session(extra):  # what the first session would send along
        if "-prefer" in extra:
            seen.append((local / f"dir.conflict-node1-{stamp}" / "x").read_text())
        return DONE
    conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["dir"], session)
    assert seen == ["ours"]


def test_settling_again_reuses_the_copy_an_earlier_attempt_left(tmp_path):
    """An attempt whose session did not replace the file leaves its copy, a hard link:
    the next attempt computes the same name and must neither fail nor copy twice."""
    cfg, mirror = setup(tmp_path, "ours", "theirs", remote_mtime=T0 + 5)
    local = tmp_path / "local"
    copy = "a.conflict-node1-20261118T110640Z.txt"
    os.link(local / "a.txt", local / copy)
    settled, = conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"], mirror)
    assert (settled.winner, settled.copy) == ("node2", copy)
    assert contents(local) == contents(tmp_path / "remote") == {"a.txt": "theirs", copy: "ours"}


def test_a_copy_name_taken_by_another_file_gets_a_free_one(tmp_path):
    cfg, mirror = setup(tmp_path, "ours", "theirs", remote_mtime=T0 + 5)
    local = tmp_path / "local"
    (local / "a.conflict-node1-20261118T110640Z.txt").write_text("something else")
    settled, = conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"], mirror)
    assert settled.copy == "a.conflict-node1-20261118T110640Z-2.txt"
    assert contents(local)[settled.copy] == "ours"
    assert contents(local)["a.conflict-node1-20261118T110640Z.txt"] == "something else"


def test_a_failed_session_settles_nothing_and_leaves_no_copy(tmp_path):
    cfg, _ = setup(tmp_path, "ours", "theirs")
    local = tmp_path / "local"
    lost = unison.Session(unison.EXIT_FATAL, error="Lost connection with the server")
    settled, = conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"],
                                lambda extra: lost)
    assert settled.note == "not settled: Lost connection with the server"
    assert contents(local) == {"a.txt": "ours"}


def test_a_failed_session_that_replaced_the_file_keeps_the_copy(tmp_path):
    cfg, mirror = setup(tmp_path, "ours", "theirs")
    local = tmp_path / "local"

    def replaced_then_lost(extra):
        mirror(extra)
        return unison.Session(unison.EXIT_FATAL, error="Lost connection with the server")
    settled, = conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"],
                                replaced_then_lost)
    assert settled.copy == "a.conflict-node1-20261118T110640Z.txt"
    assert contents(local) == {"a.txt": "theirs", settled.copy: "ours"}


def old_news(folder, text):
    """dead(): the version named by its text is one some node saw go."""
    return lambda path: (folder / path).exists() and (folder / path).read_text() == text


def test_an_old_version_here_gives_way_without_a_copy(tmp_path):
    cfg, mirror = setup(tmp_path, "ours", "theirs", local_mtime=T0 + 5)
    local = tmp_path / "local"
    settled, = conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"], mirror,
                                dead=old_news(local, "ours"))
    assert (settled.winner, settled.copy) == ("node2", "")
    assert contents(local) == contents(tmp_path / "remote") == {"a.txt": "theirs"}


def test_an_old_version_there_gives_way_without_a_copy(tmp_path):
    cfg, mirror = setup(tmp_path, "ours", "theirs", remote_mtime=T0 + 5)
    local = tmp_path / "local"
    settled, = conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"], mirror,
                                dead=old_news(local, "theirs"))
    assert (settled.winner, settled.copy) == ("node1", "")
    assert settled.note == "node2's version was old news"
    assert contents(local) == contents(tmp_path / "remote") == {"a.txt": "ours"}


def test_a_deletion_here_beats_an_old_version_there(tmp_path):
    cfg, mirror = setup(tmp_path, None, "theirs")
    local = tmp_path / "local"
    settled, = conflicts.settle(cfg, str(local), "node2", "ssh://peer", ["a.txt"], mirror,
                                dead=old_news(local, "theirs"))
    assert (settled.winner, settled.copy) == ("", "")
    assert not (local / "a.txt").exists() and not (tmp_path / "remote" / "a.txt").exists()
    assert (local / ".replimesh-backup" / "a.txt").read_text() == "theirs"
