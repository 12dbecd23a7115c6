"""Replica safety: the lock (held, waited for, let go of when its holder dies), the
deletion guard, and the backup area's retention."""

import os
import subprocess
import sys
import time

import pytest

from plugins.module_utils.replimesh import config, replica


@pytest.fixture
def cfg(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return config.parse({"node": "node1", "roots": [str(root)],
                         "replica_dir": str(tmp_path / "replicas")})


def fill(root, count, prefix="f"):
    for number in range(count):
        with open(os.path.join(root, f"{prefix}{number}"), "w", encoding="utf-8") as out:
            out.write("x")


def test_a_held_replica_makes_a_waiter_give_up_naming_the_holder(cfg):
    root = cfg.roots[0]
    with replica.held(cfg, root, "round of node1 with node2", 0):
        started = time.monotonic()
        with pytest.raises(replica.Busy, match=r"stayed busy for 0.3 s \(held by round of "
                                               r"node1 with node2, pid \d+"):
            replica.acquire(cfg, root, "session from node3", 0.3)
        assert 0.2 <= time.monotonic() - started < 10  # gives up; slack for a loaded machine
    with replica.held(cfg, root, "session from node3", 0):
        pass


def test_each_replica_has_its_own_lock(cfg, tmp_path):
    other = str(tmp_path / "other")
    with replica.held(cfg, cfg.roots[0], "a", 0), replica.held(cfg, other, "b", 0):
        assert replica.lock_path(cfg, cfg.roots[0]) != replica.lock_path(cfg, other)


def test_the_lock_of_a_killed_holder_is_free_at_once(cfg):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from plugins.module_utils.replimesh import config, replica\n"
         f"cfg = config.parse({{'node': 'node1', 'roots': [{cfg.roots[0]!r}], "
         f"'replica_dir': {cfg.replica_dir!r}}})\n"
         "replica.acquire(cfg, cfg.roots[0], 'doomed round', 0)\n"
         "print('held', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(replica.Busy, match="doomed round"):
        replica.acquire(cfg, cfg.roots[0], "next round", 0)
    holder.kill()
    holder.wait()
    with replica.held(cfg, cfg.roots[0], "next round", 1):
        pass


def test_no_record_means_no_guard(cfg):
    assert replica.check(cfg, cfg.roots[0]) == ""


def test_a_missing_root_is_refused(cfg):
    os.rmdir(cfg.roots[0])
    assert replica.check(cfg, cfg.roots[0]).startswith(
        f"root {cfg.roots[0]} does not exist on node1 (disk not mounted?)")


def test_an_emptied_root_is_refused_even_when_small(cfg):
    fill(cfg.roots[0], 3)
    replica.record(cfg, cfg.roots[0])
    for name in os.listdir(cfg.roots[0]):
        os.unlink(os.path.join(cfg.roots[0], name))
    assert replica.check(cfg, cfg.roots[0]).startswith(
        f"deletion guard: {cfg.roots[0]} on node1 holds 0 files, 3 after its last session "
        "(100% gone)")


@pytest.mark.parametrize("kept, refused", [(50, False), (49, True), (100, False)])
def test_losing_more_than_the_share_is_refused(cfg, kept, refused):
    fill(cfg.roots[0], 100)
    replica.record(cfg, cfg.roots[0])
    for number in range(kept, 100):
        os.unlink(os.path.join(cfg.roots[0], f"f{number}"))
    assert bool(replica.check(cfg, cfg.roots[0])) is refused


def test_a_few_deletions_in_a_small_root_pass(cfg):
    fill(cfg.roots[0], 4)
    replica.record(cfg, cfg.roots[0])
    for number in range(3):
        os.unlink(os.path.join(cfg.roots[0], f"f{number}"))
    assert replica.check(cfg, cfg.roots[0]) == ""


def test_the_share_is_configurable(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    cfg = config.parse({"node": "node1", "roots": [str(root)], "max_delete_share": 0.9,
                        "replica_dir": str(tmp_path / "replicas")})
    fill(str(root), 100)
    replica.record(cfg, str(root))
    for number in range(20, 100):
        os.unlink(root / f"f{number}")
    assert replica.check(cfg, str(root)) == ""


def test_the_backup_area_is_not_counted(cfg):
    fill(cfg.roots[0], 2)
    os.makedirs(os.path.join(cfg.roots[0], replica.BACKUP_DIR, "sub"))
    fill(os.path.join(cfg.roots[0], replica.BACKUP_DIR, "sub"), 5)
    os.makedirs(os.path.join(cfg.roots[0], "sub", replica.BACKUP_DIR))
    fill(os.path.join(cfg.roots[0], "sub", replica.BACKUP_DIR), 1)
    assert replica.count_files(cfg.roots[0]) == 3


def test_a_damaged_record_means_no_guard(cfg):
    fill(cfg.roots[0], 20)
    replica.record(cfg, cfg.roots[0])
    with open(replica.file_path(cfg, cfg.roots[0], "json"), "w", encoding="utf-8") as out:
        out.write("{broken")
    assert replica.recorded_files(cfg, cfg.roots[0]) is None


def test_backups_older_than_the_retention_are_pruned(cfg):
    area = os.path.join(cfg.roots[0], replica.BACKUP_DIR)
    os.makedirs(os.path.join(area, "old-folder"))
    fill(os.path.join(area, "old-folder"), 2)
    fill(area, 1, prefix="recent")
    later = time.time() + cfg.backup_days * 86400 - 60   # every file is just inside
    assert replica.prune_backups(cfg, cfg.roots[0], now=later) == 0
    assert replica.prune_backups(cfg, cfg.roots[0], now=later + 120) == 3
    assert os.listdir(area) == []
    assert os.path.isdir(cfg.roots[0])


def test_pruning_without_a_backup_area_does_nothing(cfg):
    assert replica.prune_backups(cfg, cfg.roots[0]) == 0
