"""A daemon's start: one per lock, and a log it cannot write stops it before it detaches,
with a line that says what to fix, not later in a child whose every line would be lost."""

from plugins.module_utils.replimesh import daemons


def start(tmp_path, log_path, ran):
    return daemons.run("watcher", "node1", str(tmp_path / "watch.lock"), str(log_path),
                       lambda: ran.append(True) or 0)


def test_a_daemon_whose_log_cannot_be_written_does_not_start(tmp_path, capsys):
    log = tmp_path / "watch.log"
    log.mkdir()   # not a file it can append to (as root, the one way to be refused here)
    ran = []
    assert start(tmp_path, log, ran) == 1
    assert ran == []
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"cannot write its log {log}" in error


def test_a_daemon_runs_once_per_lock(tmp_path, capsys):
    ran = []
    assert start(tmp_path, tmp_path / "watch.log", ran) == 0
    assert ran == [True]
    held = daemons.lock_or_none(str(tmp_path / "watch.lock"))
    try:
        assert start(tmp_path, tmp_path / "watch.log", ran) == 0
        assert ran == [True]
        assert "already running on node1" in capsys.readouterr().out
    finally:
        held.close()
