"""The replimesh_sync module, run in-process on the core package."""

import json

import pytest

import plugins.module_utils.replimesh as core

from .support import TRANSFERRED, closed_port, fake_unison, load_module, run_module, write_node


@pytest.fixture
def sync_module(monkeypatch):
    return load_module(monkeypatch, "replimesh_sync")


PEERS = [{"name": "node1", "address": "127.0.0.11"},
         {"name": "node2", "address": "127.0.0.1"},
         {"name": "node3", "address": "127.0.0.2"},
         {"name": "node4", "state": "removed", "version": 2}]


def test_check_mode_probes_peers_and_writes_nothing(sync_module, tmp_path, capsys,
                                                    listening_port):
    _, path = write_node(tmp_path, PEERS, ssh_port=listening_port)
    code, result = run_module(sync_module, capsys, config=path, _ansible_check_mode=True)
    assert code == 0
    assert result["changed"] is False
    assert [(p["peer"], p["result"]) for p in result["peers"]] == \
        [("node2", "ok"), ("node3", "unreachable")]
    assert {p["message"] for p in result["peers"]} == {"check mode: not synced"}
    assert (result["unreachable_peers"], result["failed_peers"], result["files"]) == \
        (["node3"], [], 0)
    # ansible-core 2.19 returns each warning as a structured summary
    assert "peer node3 is unreachable" in json.dumps(result["warnings"])
    assert "node2" not in json.dumps(result["warnings"])
    assert not (tmp_path / "state.json").exists()


def test_round_with_unreachable_peers_is_ok_and_recorded(sync_module, tmp_path, capsys):
    cfg, path = write_node(tmp_path, PEERS, ssh_port=closed_port())
    code, result = run_module(sync_module, capsys, config=path)
    assert (code, result["changed"]) == (0, False)
    assert result["unreachable_peers"] == ["node2", "node3"]
    assert "failed" not in result or result["failed"] is False
    assert sorted(core.state.load(cfg.state_file)["peers"]) == ["node2", "node3"]


def test_transferred_files_mean_changed(sync_module, tmp_path, capsys, listening_port):
    (tmp_path / "data").mkdir()
    program, _ = fake_unison(tmp_path, {str(tmp_path / "data"): (0, TRANSFERRED)})
    cfg, path = write_node(tmp_path, PEERS, ssh_port=listening_port, unison=program)
    code, result = run_module(sync_module, capsys, config=path)
    assert (code, result["changed"], result["files"]) == (0, True, 1)
    assert result["unreachable_peers"] == ["node3"]
    assert core.state.load(cfg.state_file)["peers"]["node2"]["result"] == "ok"


def test_failed_peer_fails_the_task(sync_module, tmp_path, capsys):
    _, path = write_node(tmp_path, PEERS, roots=["/nonexistent/replimesh"])
    code, result = run_module(sync_module, capsys, config=path)
    assert code == 1
    assert result["failed"] is True
    assert result["failed_peers"] == ["node2", "node3"]
    assert result["msg"].startswith("sync failed with node2 (root /nonexistent/replimesh does not")


def test_bad_config_fails_with_its_message(sync_module, tmp_path, capsys):
    code, result = run_module(sync_module, capsys, config=str(tmp_path / "none.json"))
    assert (code, result["failed"]) == (1, True)
    assert "does not exist: deploy the node" in result["msg"]


def test_a_removed_node_fails_saying_so(sync_module, tmp_path, capsys):
    peers = [{"name": "node1", "state": "removed", "version": 2}, *PEERS[1:]]
    _, path = write_node(tmp_path, peers, ssh_port=closed_port())
    code, result = run_module(sync_module, capsys, config=path)
    assert code == 1
    assert result["msg"].startswith("node1 is removed from the mesh: it syncs with nobody")
    assert not (tmp_path / "state.json").exists()
