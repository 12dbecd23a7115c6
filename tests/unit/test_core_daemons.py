"""A daemon's start: one per lock, and a log it cannot write stops it before it detaches,
with a line that says what to fix, not later in a child whose every line would be lost;
one busy past the stop's wait is said to be so, and is not replaced twice; one stopped by
a bug says where in its log (detached, its standard error goes nowhere)."""

import subprocess
import sys

import pytest

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


def test_a_daemon_stopped_by_a_bug_says_where_in_its_log(tmp_path):
    def main():
        return {}["a peer"]
    log = tmp_path / "watch.log"
    with pytest.raises(KeyError):
        daemons.run("watcher", "node1", str(tmp_path / "watch.lock"), str(log), main)
    said = log.read_text().splitlines()
    assert len(said) == 1
    assert said[0].endswith("watcher stopped by an unexpected error: KeyError: 'a peer' (at "
                            f"test_core_daemons.py:{main.__code__.co_firstlineno + 1}); "
                            "cron's watchdog or systemd starts it again")
    assert daemons.lock_or_none(str(tmp_path / "watch.lock")) is not None   # let go


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


# A daemon busy with a round: it holds its lock and ends what it does before it stops.
BUSY = """import fcntl, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0); lock.write(f"{os.getpid()}\\n"); lock.flush()
print("holding", flush=True)
time.sleep(60)
"""


def test_a_daemon_that_does_not_stop_in_time_is_said_to_be_stopping(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(daemons, "STOP_WAIT_S", 0.5)
    lock = str(tmp_path / "watch.lock")
    busy = subprocess.Popen([sys.executable, "-c", BUSY, lock], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert busy.stdout.readline() == "holding\n"
        assert daemons.run("watcher", "node1", lock, str(tmp_path / "watch.log"),
                           lambda: 0, stop=True) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "did not stop within 0.5 s" in error
        assert "watch.log" in error
        ran = []
        assert start(tmp_path, tmp_path / "watch.log", ran) == 0 and ran == []
        assert daemons.run("watcher", "node1", lock, str(tmp_path / "watch.log"),
                           lambda: ran.append(True) or 0, replace=True) == 0
        assert ran == [] and "is stopping" in capsys.readouterr().out
    finally:
        busy.kill()
        busy.wait()
