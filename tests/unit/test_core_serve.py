"""The forced command: only the Unison server for one of the node's replicas and the
peer-list exchange from an active peer pass, every decision logged."""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest

from plugins.module_utils.replimesh import children, confine, membership, peer_input, replica, serve
from plugins.module_utils.replimesh import peers as peer_list
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.serve import Refused

from .support import script, signed, write_node

PEERS = [{"name": "node1", "address": "127.0.0.1"},
         {"name": "node2", "address": "127.0.0.2"},
         {"name": "node3", "state": "removed"}]


@pytest.fixture
def cfg(tmp_path):
    return write_node(tmp_path, PEERS, unison="/opt/unison/bin/unison")[0]


def log_lines(cfg):
    with open(os.path.join(cfg.log_dir, "serve.log"), encoding="utf-8") as handle:
        return handle.read().splitlines()


@pytest.mark.parametrize("flags", [[], ["__new-rpc-mode"]])
def test_unison_server_runs_the_configured_unison(cfg, flags):
    root = cfg.roots[0]
    command = " ".join(["replimesh-replica", root, "-server", *flags])
    assert serve.check(cfg, "node2", command) == ["/opt/unison/bin/unison", root, "-server",
                                                  *flags]


def test_a_root_that_is_not_a_replica_is_refused(cfg):
    with pytest.raises(Refused, match="/etc is not a replica of node1"):
        serve.check(cfg, "node2", "replimesh-replica /etc -server")


def test_a_plain_unison_server_is_refused_naming_the_fix(cfg):
    with pytest.raises(Refused, match=r"older replimesh; deploy it with playbooks/site\.yml"):
        serve.check(cfg, "node2", "unison -server")


@pytest.mark.parametrize("command, needle", [
    (None, "no command given"),
    ("", "no command given"),
    ("id", "command not allowed: 'id'"),
    ("unison -server; id", "command not allowed"),
    ("replimesh-replica /srv -server -foo", "command not allowed"),
    ("replimesh-replica /srv", "command not allowed"),
    ("unison", "command not allowed"),
    ("scp -t /srv", "command not allowed"),
    ("unison -server 'oops", "unparsable command"),
    ("replimesh peers exchange now", "command not allowed"),
    ("replimesh peers list", "command not allowed"),
    ("replimesh peers accept -", "command not allowed"),
])
def test_other_commands_are_refused(cfg, command, needle):
    with pytest.raises(Refused, match=needle):
        serve.check(cfg, "node2", command)


@pytest.mark.parametrize("peer", ["node9", "node3", "node1"])
def test_unknown_removed_or_own_name_is_refused(cfg, peer):
    with pytest.raises(Refused, match=f"{peer} is not an active peer of node1"):
        serve.check(cfg, peer, "unison -server")


def test_refused_command_returns_one_and_logs_one_line(cfg, monkeypatch, capsys):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "id\nrm -rf /")
    monkeypatch.setenv("SSH_CLIENT", "127.0.0.2 51514 22")
    assert serve.serve(cfg, "node2") == 1
    line, = log_lines(cfg)
    assert " 127.0.0.2 refused node2: command not allowed: " in line
    assert capsys.readouterr().err.startswith("replimesh: refused: command not allowed")


def test_missing_command_is_refused_and_logged(cfg, monkeypatch):
    monkeypatch.delenv("SSH_ORIGINAL_COMMAND", raising=False)
    monkeypatch.delenv("SSH_CLIENT", raising=False)
    assert serve.serve(cfg, "node2") == 1
    line, = log_lines(cfg)
    assert line.endswith(" - refused node2: no command given "
                         "(an interactive shell is never allowed)")


def test_each_decision_appends_a_line(cfg, monkeypatch):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "id")
    serve.serve(cfg, "node2")
    serve.serve(cfg, "node9")
    assert len(log_lines(cfg)) == 2


FAKE_SERVER = """#!/bin/sh
# Stands in for `unison -server`: tells its argv, cwd and host name, and whether the
# replica's lock is held while it runs.
if flock -n "$LOCK" true; then held=no; else held=yes; fi
echo "$* | $(pwd) | $UNISONLOCALHOSTNAME | held=$held" > "$OUT"
"""


def test_the_unison_server_runs_under_the_replica_lock(tmp_path, monkeypatch):
    program = script(tmp_path, "unison", FAKE_SERVER)
    cfg = write_node(tmp_path, PEERS, unison=program)[0]
    root = cfg.roots[0]
    monkeypatch.setenv("LOCK", replica.lock_path(cfg, root))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"replimesh-replica {root} -server __new-rpc-mode")
    assert serve.serve(cfg, "node2") == 0
    assert (tmp_path / "out").read_text() == "-server __new-rpc-mode | / | node1 | held=yes\n"
    assert log_lines(cfg)[0].endswith(f"accepted node2: -server __new-rpc-mode on {root} "
                                      "(unconfined)")
    assert replica.recorded_files(cfg, root) == 0
    with replica.held(cfg, root, "test", 0):  # let go of when the server exits
        pass


CONFINED_SERVER = """#!/bin/sh
# Stands in for `unison -server` run confined: what it can read and write.
cat "$SECRET" > /dev/null 2>&1 && echo "read secret" >> "$ROOT/seen"
echo x > "$OUTSIDE" 2>/dev/null && echo "wrote outside" >> "$ROOT/seen"
echo x > "$UNISON/ar1" && echo "wrote archive" >> "$ROOT/seen"
ls "$UNISON/.." > /dev/null 2>&1 && echo "listed other pairs" >> "$ROOT/seen"
echo "in root" >> "$ROOT/seen"
"""


@pytest.mark.skipif(not confine.abi(), reason="this kernel offers no Landlock")
def test_a_confined_server_reaches_its_replica_and_its_pairs_archives_only(tmp_path,
                                                                           monkeypatch):
    cfg = write_node(tmp_path, PEERS, confine=True)[0]
    root = Path(cfg.roots[0])
    # The program sits in the replica, the one place outside the system it may run from.
    cfg = dataclasses.replace(cfg, unison=script(root, "unison", CONFINED_SERVER))
    (tmp_path / "secret").write_text("the sync user's private key")
    monkeypatch.setenv("SECRET", str(tmp_path / "secret"))
    monkeypatch.setenv("OUTSIDE", str(tmp_path / "planted"))
    monkeypatch.setenv("ROOT", str(root))
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"replimesh-replica {root} -server")
    assert serve.serve(cfg, "node2") == 0
    assert (root / "seen").read_text() == "wrote archive\nin root\n"
    assert not (tmp_path / "planted").exists()
    assert (Path(cfg.unison_dir) / "pairs" / "node2" / "ar1").exists()


def test_a_node_that_cannot_confine_serves_no_session(tmp_path, monkeypatch, capsys):
    cfg = write_node(tmp_path, PEERS, confine=True, unison=script(tmp_path, "unison",
                                                                  "exit 0\n"))[0]
    monkeypatch.setattr(confine, "abi", lambda: 1)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"replimesh-replica {cfg.roots[0]} -server")
    assert serve.serve(cfg, "node2") == 1
    err = capsys.readouterr().err
    assert err.startswith("replimesh: refused: node1 cannot confine a peer's session (")
    assert "replimesh_agent_confine: false" in err
    assert "refused node2: node1 cannot confine" in log_lines(cfg)[0]


def test_a_session_that_moves_nothing_is_stopped_at_the_idle_limit(tmp_path, monkeypatch):
    cfg = write_node(tmp_path, PEERS, idle_timeout=1,
                     unison=script(tmp_path, "unison", "exec sleep 60\n"))[0]
    monkeypatch.setattr(children, "IDLE_CHECK_S", 0.2)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"replimesh-replica {cfg.roots[0]} -server")
    started = time.monotonic()
    assert serve.serve(cfg, "node2") != 0
    assert time.monotonic() - started < 10
    assert log_lines(cfg)[-1].endswith(f"session from node2 on {cfg.roots[0]} stopped "
                                       "after 1 s with no traffic")
    with replica.held(cfg, cfg.roots[0], "test", 0):  # let go of
        pass


def test_a_busy_session_is_stopped_at_the_session_limit(tmp_path, monkeypatch):
    busy = "while :; do echo x > /dev/null; done\n"  # always active, never done
    cfg = write_node(tmp_path, PEERS, idle_timeout=30, session_timeout=1,
                     unison=script(tmp_path, "unison", busy))[0]
    monkeypatch.setattr(children, "IDLE_CHECK_S", 0.2)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"replimesh-replica {cfg.roots[0]} -server")
    assert serve.serve(cfg, "node2") != 0
    assert log_lines(cfg)[-1].endswith("stopped after the session limit of 1 s")


def test_a_replica_held_by_another_session_is_busy(tmp_path, monkeypatch, capsys):
    cfg = write_node(tmp_path, PEERS, unison=script(tmp_path, "unison", "exit 0\n"))[0]
    root = cfg.roots[0]
    monkeypatch.setattr(replica, "PEER_WAIT_S", 0.2)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"replimesh-replica {root} -server")
    with replica.held(cfg, root, "round of node1 with node3", 0):
        assert serve.serve(cfg, "node2") == serve.EXIT_BUSY
    err = capsys.readouterr().err
    assert err.startswith(f"replimesh: busy: replica {root} on node1 stayed busy")
    assert "held by round of node1 with node3" in err


def test_a_wiped_replica_is_not_served(tmp_path, monkeypatch, capsys):
    cfg = write_node(tmp_path, PEERS, unison=script(tmp_path, "unison", "exit 0\n"))[0]
    root = cfg.roots[0]
    for number in range(3):
        (Path(root) / f"f{number}").write_text("x")
    with replica.held(cfg, root, "test", 0):
        replica.record(cfg, root)
    for number in range(3):
        (Path(root) / f"f{number}").unlink()
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"replimesh-replica {root} -server")
    assert serve.serve(cfg, "node2") == 1
    assert "replimesh: refused: deletion guard" in capsys.readouterr().err
    assert replica.recorded_files(cfg, root) == 3


def test_unwritable_log_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    cfg = write_node(tmp_path, PEERS, log_dir=str(tmp_path / "no-such-dir"))[0]
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "id")
    assert serve.serve(cfg, "node2") == 1
    assert "cannot write" in capsys.readouterr().err


def test_an_unreadable_peer_list_refuses_and_is_logged(tmp_path, monkeypatch, capsys):
    cfg, _ = write_node(tmp_path, PEERS)
    (tmp_path / "peers.json").write_text("{broken", encoding="utf-8")
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "unison -server")
    assert serve.serve(cfg, "node2") == 1
    assert "cannot be read as JSON" in capsys.readouterr().err
    assert "refused node2: peer list" in (tmp_path / "log" / "serve.log").read_text()


@pytest.mark.parametrize("command", ["replimesh peers exchange", " replimesh  peers exchange"])
def test_the_exchange_from_an_active_peer_is_accepted(cfg, command):
    assert serve.check(cfg, "node2", command) == [membership.EXCHANGE]


@pytest.mark.parametrize("peer", ["node9", "node3"])
def test_the_exchange_from_a_removed_or_unknown_peer_is_refused(cfg, peer):
    with pytest.raises(Refused, match=f"^{peer} is not an active peer of node1$"):
        serve.check(cfg, peer, membership.EXCHANGE)


@pytest.mark.parametrize("command", ["unison -server", membership.EXCHANGE])
def test_a_removed_node_refuses_everyone(tmp_path, command):
    cfg, _ = write_node(tmp_path, [{"name": "node1", "state": "removed", "version": 2},
                                   {"name": "node2"}])
    with pytest.raises(Refused, match=r"^node1 is removed from the mesh: it serves nobody$"):
        serve.check(cfg, "node2", command)


def send(monkeypatch, tmp_path, data):
    """The exchange's request on serve's standard input, a real file (it is read by fd)."""
    path = tmp_path / "request"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    stdin = open(path, encoding="utf-8")  # noqa: SIM115 (closed after the test)
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", membership.EXCHANGE)
    return stdin


def test_serve_runs_the_exchange_in_process(cfg, monkeypatch, capsys, tmp_path):
    send(monkeypatch, tmp_path, peer_list.dumps(signed([*PEERS, {"name": "node4"}])))
    assert serve.serve(cfg, "node2") == 0
    answer = peer_list.parse(json.loads(capsys.readouterr().out))
    assert sorted(answer) == ["node1", "node2", "node3", "node4"]
    assert membership.load(cfg) == answer
    assert log_lines(cfg)[-1].endswith(" accepted node2: peer list exchange")


def test_a_failed_exchange_exits_one_and_is_logged(cfg, monkeypatch, capsys, tmp_path):
    before = Path(cfg.peers_file).read_bytes()
    send(monkeypatch, tmp_path, "{not json")
    assert serve.serve(cfg, "node2") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("replimesh: peer list from node2 is not JSON")
    line, = log_lines(cfg)
    assert " exchange with node2 failed: peer list from node2 is not JSON" in line
    assert Path(cfg.peers_file).read_bytes() == before


def test_an_exchange_reads_no_more_than_the_limit(cfg, monkeypatch, capsys, tmp_path):
    send(monkeypatch, tmp_path, " " * (membership.MAX_EXCHANGE_BYTES + 10))
    assert serve.serve(cfg, "node2") == 1
    assert "is larger than" in capsys.readouterr().err


def test_an_exchange_that_sends_nothing_is_cut_off(cfg, monkeypatch, capsys):
    reader, writer = os.pipe()  # the peer keeps its end open and sends nothing
    monkeypatch.setattr(peer_input, "GRACE_S", 0.3)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", membership.EXCHANGE)
    with os.fdopen(reader) as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        started = time.monotonic()
        assert serve.serve(cfg, "node2") == 1
        assert time.monotonic() - started < 2
    os.close(writer)
    assert "0 bytes in 0 s, too slow" in capsys.readouterr().err
    line, = log_lines(cfg)
    assert "exchange with node2 failed: peer list from node2: 0 bytes" in line


def test_an_exchange_that_dribbles_is_cut_off():
    reader, writer = os.pipe()
    os.write(writer, b"{" * 10)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="10 bytes in 0 s, too slow"):
        peer_input.read(reader, 100, "test", grace_s=0.2, min_rate=1000)
    assert time.monotonic() - started < 1
    os.close(reader)
    os.close(writer)


def test_an_exchange_of_invalid_utf8_is_one_line(cfg, monkeypatch, capsys, tmp_path):
    send(monkeypatch, tmp_path, b'{"format": 2, "peers": ["\xff\n"]}')
    assert serve.serve(cfg, "node2") == 1
    assert capsys.readouterr().err == "replimesh: peer list from node2 is not UTF-8 (byte 25)\n"


def test_a_push_is_allowed_into_a_replica_of_the_node_only(cfg):
    root = cfg.roots[0]
    assert serve.check(cfg, "node2", f"replimesh-push {root}") == ["replimesh-push", root]
    for command in ("replimesh-push /etc", f"replimesh-push {root} more", "replimesh-push"):
        with pytest.raises(Refused):
            serve.check(cfg, "node2", command)
