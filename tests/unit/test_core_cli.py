"""The `replimesh` command: verbs, JSON output and exit codes."""

import io
import json
from pathlib import Path

import pytest

from plugins.module_utils.replimesh import cli, confine, membership, state
from plugins.module_utils.replimesh import peers as peer_list

from .support import authorized, closed_port, signed, write_node

PEERS = [{"name": "node1", "address": "127.0.0.11"},
         {"name": "node2", "address": "127.0.0.1"},
         {"name": "node3", "state": "removed", "version": 2}]


@pytest.fixture
def node(tmp_path):
    return write_node(tmp_path, PEERS, ssh_port=closed_port())


def test_peers_list_json_prints_the_whole_signed_list(node, capsys):
    _, path = node
    assert cli.main(["--config", path, "peers", "list", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == peer_list.to_json(signed(PEERS))
    assert printed["format"] == 2
    assert all(e["signature"].startswith("-----BEGIN SSH SIGNATURE") for e in printed["peers"])


def test_peers_list_marks_this_node(node, capsys):
    assert cli.main(["--config", node[1], "peers", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["node1", "v1", "active", "127.0.0.11", "(this", "node)"]
    assert lines[1].split() == ["node2", "v1", "active", "127.0.0.1"]
    assert lines[2].split() == ["node3", "v2", "removed", "-"]


def test_peers_accept_from_stdin_takes_signed_entries(node, monkeypatch, capsys):
    cfg, path = node
    sent = peer_list.dumps(signed([*PEERS, {"name": "node4"}]))
    monkeypatch.setattr("sys.stdin", io.StringIO(sent))
    assert cli.main(["--config", path, "peers", "accept", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == {"node": "node1", "changed": ["node4"],
                                                   "ignored": []}
    assert sorted(membership.load(cfg)) == ["node1", "node2", "node3", "node4"]
    assert "node4" in authorized(cfg)
    assert "took node4 v1 active 127.0.0.4 from stdin" in \
        Path(cfg.log_dir, "peers.log").read_text(encoding="utf-8")


def test_peers_accept_from_a_file(node, tmp_path, capsys):
    _, path = node
    (tmp_path / "signed.json").write_text(peer_list.dumps(signed(PEERS)), encoding="utf-8")
    assert cli.main(["--config", path, "peers", "accept", str(tmp_path / "signed.json")]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == []


def test_peers_accept_exits_one_when_entries_are_ignored(node, monkeypatch, capsys):
    cfg, path = node
    before = Path(cfg.peers_file).read_bytes()
    sent = peer_list.dumps(signed([{"name": "node4", "owner": "impostor"}]))
    monkeypatch.setattr("sys.stdin", io.StringIO(sent))
    assert cli.main(["--config", path, "peers", "accept", "-"]) == 1
    assert json.loads(capsys.readouterr().out) == {"node": "node1", "changed": [],
                                                   "ignored": ["node4"]}
    assert Path(cfg.peers_file).read_bytes() == before


@pytest.mark.parametrize("source, needle", [
    ("missing.json", "replimesh: cannot read missing.json: No such file or directory"),
    ("-", "replimesh: peer list from stdin is not JSON"),
])
def test_peers_accept_of_something_unreadable_exits_two(node, monkeypatch, capsys, source,
                                                        needle):
    monkeypatch.chdir(node[0].log_dir)
    monkeypatch.setattr("sys.stdin", io.StringIO("{half"))
    assert cli.main(["--config", node[1], "peers", "accept", source]) == 2
    assert capsys.readouterr().err.startswith(needle)


def test_status_json_on_an_empty_state(node, capsys):
    assert cli.main(["--config", node[1], "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"peers": {}}


def test_status_text_before_any_round(node, capsys):
    assert cli.main(["--config", node[1], "status"]) == 0
    assert capsys.readouterr().out == "node1: last round never\n"


def test_status_text_shows_each_recorded_peer(node, capsys):
    cfg, path = node
    state.record(cfg.state_file, "node1", "T1", [
        {"peer": "node2", "address": "a", "result": "ok", "duration": 1.5, "files": 2,
         "bytes": 10, "conflicts": 1, "message": "1 conflict(s)"}])
    assert cli.main(["--config", path, "status"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header == "node1: last round T1"
    assert line.split()[:4] == ["node2", "ok", "1.50s", "2"]
    assert "1 conflicts  1 conflict(s)  (at T1, last ok T1)" in line


def test_status_text_lists_the_conflicts_settled(node, capsys):
    cfg, path = node
    state.record(cfg.state_file, "node1", "T1", [
        {"peer": "node2", "address": "a", "result": "ok", "duration": 0.5, "files": 2,
         "bytes": 9, "conflicts": 1, "message": "",
         "settled": ["a.txt: node2's version in place, the other kept as a.c.txt"]}])
    assert cli.main(["--config", path, "status"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == \
        "  conflict a.txt: node2's version in place, the other kept as a.c.txt"


@pytest.mark.parametrize("flags, expected", [
    ([], {"second_pass": True, "allow_deletions": False}),
    (["--one-pass", "--allow-deletions"], {"second_pass": False, "allow_deletions": True}),
])
def test_sync_flags_reach_the_round(node, monkeypatch, capsys, flags, expected):
    seen = {}
    monkeypatch.setattr(cli, "run_round", lambda cfg, **kwargs: seen.update(kwargs) or [])
    assert cli.main(["--config", node[1], "sync", *flags]) == 0
    assert {k: seen[k] for k in expected} == expected


def test_status_text_names_what_a_session_learned(node, capsys):
    cfg, path = node
    state.record(cfg.state_file, "node1", "T1", [
        {"peer": "node2", "address": "a", "result": "ok", "duration": 0.5, "files": 0,
         "bytes": 0, "conflicts": 0, "learned": ["node4", "node5"], "message": ""}])
    assert cli.main(["--config", path, "status"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert " learned node4,node5  (at T1" in line


def test_config_comes_from_the_environment(node, monkeypatch, capsys):
    monkeypatch.setenv("REPLIMESH_CONFIG", node[1])
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"peers": {}}


@pytest.mark.parametrize("content", ['{"node": "n"}', "{broken", '{"node": "n", "roots": ["x"]}'])
def test_bad_config_exits_two_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "config.json"
    path.write_text(content, encoding="utf-8")
    assert cli.main(["--config", str(path), "status"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("replimesh: ")
    assert len(captured.err.splitlines()) == 1


def test_missing_config_exits_two(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "none.json"), "peers", "list"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_peer_list_exits_two(tmp_path, capsys):
    _, path = write_node(tmp_path, [])
    (tmp_path / "peers.json").unlink()
    assert cli.main(["--config", path, "peers", "list"]) == 2
    assert capsys.readouterr().err.startswith("replimesh: peer list ")


def test_sync_json_reports_an_unreachable_peer_and_exits_zero(node, capsys):
    cfg, path = node
    assert cli.main(["--config", path, "sync", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["node"] == "node1"
    assert [(p["peer"], p["result"]) for p in output["peers"]] == [("node2", "unreachable")]
    assert state.load(cfg.state_file)["peers"]["node2"]["result"] == "unreachable"


def test_sync_text_prints_a_header_and_a_line_per_peer(node, capsys):
    assert cli.main(["--config", node[1], "sync"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.startswith("== ") and header.endswith(" node1: sync round")
    assert line.split()[:2] == ["node2", "unreachable"]


def test_sync_with_a_missing_root_exits_one(tmp_path, capsys):
    _, path = write_node(tmp_path, PEERS, roots=["/nonexistent/replimesh"])
    assert cli.main(["--config", path, "sync"]) == 1
    assert "does not exist on node1 (disk not mounted?): not synced" in capsys.readouterr().out


def test_serve_refusal_exits_one(node, monkeypatch, capsys):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "bash")
    assert cli.main(["--config", node[1], "serve", "--peer", "node2"]) == 1
    assert capsys.readouterr().err.startswith("replimesh: refused: ")


def test_a_verb_is_required(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert caught.value.code == 2


def test_confinement_says_whether_peers_sessions_can_be_confined(node, monkeypatch, capsys):
    monkeypatch.setattr(confine, "abi", lambda: 6)
    assert cli.main(["--config", node[1], "confinement"]) == 0
    assert capsys.readouterr().out == ("node1: Landlock ABI 6; confinement of peers' sessions "
                                       "off (replimesh_agent_confine: false)\n")
    monkeypatch.setattr(confine, "abi", lambda: 0)
    assert cli.main(["--config", node[1], "confinement"]) == 1
    assert "offers no Landlock (Linux 5.19 or newer" in capsys.readouterr().err
