"""The forced command: only `unison -server` and the peer-list exchange from an active
peer pass, every decision logged."""

import io
import json
import os
import sys
from pathlib import Path

import pytest

from plugins.module_utils.replimesh import membership, serve
from plugins.module_utils.replimesh import peers as peer_list
from plugins.module_utils.replimesh.serve import Refused

from .support import signed, write_node

PEERS = [{"name": "node1", "address": "127.0.0.1"},
         {"name": "node2", "address": "127.0.0.2"},
         {"name": "node3", "state": "removed"}]


@pytest.fixture
def cfg(tmp_path):
    return write_node(tmp_path, PEERS, unison="/opt/unison/bin/unison")[0]


def log_lines(cfg):
    with open(os.path.join(cfg.log_dir, "serve.log"), encoding="utf-8") as handle:
        return handle.read().splitlines()


@pytest.mark.parametrize("command, extra", [
    ("unison -server", []),
    ("unison -server __new-rpc-mode", ["__new-rpc-mode"]),
])
def test_unison_server_runs_the_configured_unison(cfg, command, extra):
    assert serve.check(cfg, "node2", command) == ["/opt/unison/bin/unison", "-server", *extra]


@pytest.mark.parametrize("command, needle", [
    (None, "no command given"),
    ("", "no command given"),
    ("id", "command not allowed: 'id'"),
    ("unison -server; id", "command not allowed"),
    ("unison -server -foo", "command not allowed"),
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


def test_allowed_command_is_logged_then_execd(cfg, monkeypatch):
    calls = []
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "unison -server __new-rpc-mode")
    monkeypatch.setattr(os, "chdir", lambda path: calls.append(("chdir", path)))
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(("execve", *args)))
    serve.serve(cfg, "node2")
    (_, folder), (_, program, argv, env) = calls
    assert folder == "/"
    assert (program, argv) == ("/opt/unison/bin/unison",
                               ["/opt/unison/bin/unison", "-server", "__new-rpc-mode"])
    assert env["UNISONLOCALHOSTNAME"] == "node1"
    assert log_lines(cfg)[0].endswith("accepted node2: -server __new-rpc-mode")


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


def test_serve_runs_the_exchange_in_process(cfg, monkeypatch, capsys):
    sent = peer_list.dumps(signed([*PEERS, {"name": "node4"}]))
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", membership.EXCHANGE)
    monkeypatch.setattr(sys, "stdin", io.StringIO(sent))
    assert serve.serve(cfg, "node2") == 0
    answer = peer_list.parse(json.loads(capsys.readouterr().out))
    assert sorted(answer) == ["node1", "node2", "node3", "node4"]
    assert membership.load(cfg) == answer
    assert log_lines(cfg)[-1].endswith(" accepted node2: peer list exchange")


def test_a_failed_exchange_exits_one_and_is_logged(cfg, monkeypatch, capsys):
    before = Path(cfg.peers_file).read_bytes()
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", membership.EXCHANGE)
    monkeypatch.setattr(sys, "stdin", io.StringIO("{not json"))
    assert serve.serve(cfg, "node2") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("replimesh: peer list from node2 is not JSON")
    line, = log_lines(cfg)
    assert " exchange with node2 failed: peer list from node2 is not JSON" in line
    assert Path(cfg.peers_file).read_bytes() == before


def test_an_exchange_reads_no_more_than_the_limit(cfg, monkeypatch, capsys):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", membership.EXCHANGE)
    monkeypatch.setattr(sys, "stdin", io.StringIO(" " * (membership.MAX_LIST_BYTES + 10)))
    assert serve.serve(cfg, "node2") == 1
    assert "is larger than" in capsys.readouterr().err
