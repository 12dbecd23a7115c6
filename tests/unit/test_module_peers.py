"""The replimesh_peers module (the node applies the signed list), run in-process on the core."""

import json
from pathlib import Path

import pytest

from plugins.module_utils.replimesh import membership
from plugins.module_utils.replimesh import peers as peer_list

from .support import fake_key, key, load_module, run_module, signed, write_node

PEERS = [{"name": "node1"}, {"name": "node2"}, {"name": "node3"}]


@pytest.fixture
def peers_module(monkeypatch):
    return load_module(monkeypatch, "replimesh_peers")


@pytest.fixture
def node(tmp_path):
    """A node deployed with PEERS, its SSH files applied."""
    cfg, path = write_node(tmp_path, PEERS)
    membership.apply(cfg, membership.load(cfg))
    return cfg, path


def files(tmp_path):
    """Every file under tmp_path and its content: to see that nothing changed (the empty
    lock file a run leaves is no change)."""
    return {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*"))
            if p.is_file() and p.suffix != ".lock"}


def locked(cfg):
    return Path(cfg.peers_file + ".lock").exists()


def as_json(*descriptions):
    return peer_list.to_json(signed(descriptions))


def test_a_first_deploy_writes_the_list_and_the_ssh_files(peers_module, tmp_path, capsys):
    cfg, path = write_node(tmp_path, [])
    Path(cfg.peers_file).unlink()
    code, result = run_module(peers_module, capsys, config=path, peers=as_json(*PEERS))
    assert (code, result["changed"]) == (0, True)
    assert (result["added"], result["updated"], result["removed"]) == \
        (["node1", "node2", "node3"], [], [])
    assert membership.load(cfg) == signed(PEERS)
    assert Path(cfg.known_hosts).read_text(encoding="utf-8") == \
        membership.known_hosts(cfg, signed(PEERS))


def test_a_second_run_changes_nothing(peers_module, tmp_path, capsys):
    cfg, path = write_node(tmp_path, [])
    Path(cfg.peers_file).unlink()
    run_module(peers_module, capsys, config=path, peers=as_json(*PEERS))
    before = files(tmp_path)
    code, result = run_module(peers_module, capsys, config=path, peers=as_json(*PEERS))
    assert (code, result["changed"]) == (0, False)
    assert (result["added"], result["updated"], result["removed"]) == ([], [], [])
    assert files(tmp_path) == before


def test_the_list_of_entries_alone_is_taken_too(peers_module, node, capsys):
    cfg, path = node
    entries = as_json(*PEERS, {"name": "node4"})["peers"]
    code, result = run_module(peers_module, capsys, config=path, peers=entries)
    assert (code, result["changed"], result["added"]) == (0, True, ["node4"])
    assert "node4" in membership.load(cfg)


def test_added_updated_and_removed_are_reported(peers_module, node, capsys):
    cfg, path = node
    incoming = as_json({"name": "node1"}, {"name": "node2", "address": "127.0.1.2", "version": 2},
                       {"name": "node3", "state": "removed", "version": 2}, {"name": "node4"})
    code, result = run_module(peers_module, capsys, config=path, peers=incoming)
    assert (code, result["changed"]) == (0, True)
    assert (result["added"], result["updated"], result["removed"]) == \
        (["node4"], ["node2", "node3"], ["node3"])
    assert "node3" not in Path(cfg.known_hosts).read_text(encoding="utf-8")
    assert "node2,127.0.1.2 " in Path(cfg.known_hosts).read_text(encoding="utf-8")


def test_an_older_list_changes_nothing(peers_module, tmp_path, capsys):
    cfg, path = write_node(tmp_path, [{"name": "node1", "version": 5},
                                      {"name": "node2", "version": 5}])
    membership.apply(cfg, membership.load(cfg))
    before = files(tmp_path)
    code, result = run_module(peers_module, capsys, config=path,
                              peers=as_json({"name": "node1"}, {"name": "node2"}))
    assert (code, result["changed"], result["updated"]) == (0, False, [])
    assert files(tmp_path) == before


def test_check_mode_reports_the_change_and_writes_nothing(peers_module, node, tmp_path,
                                                          capsys):
    before = files(tmp_path)
    code, result = run_module(peers_module, capsys, config=node[1], _ansible_check_mode=True,
                              peers=as_json(*PEERS, {"name": "node4"}))
    assert (code, result["changed"], result["added"]) == (0, True, ["node4"])
    assert files(tmp_path) == before
    assert not locked(node[0])


def test_check_mode_on_a_first_deploy_writes_nothing(peers_module, tmp_path, capsys):
    cfg, path = write_node(tmp_path, [])
    Path(cfg.peers_file).unlink()
    before = files(tmp_path)
    code, result = run_module(peers_module, capsys, config=path, _ansible_check_mode=True,
                              peers=as_json(*PEERS))
    assert (code, result["changed"]) == (0, True)
    assert files(tmp_path) == before
    assert not locked(cfg)


def test_stale_ssh_files_are_a_change(peers_module, node, capsys):
    cfg, path = node
    Path(cfg.known_hosts).write_text("intruder ssh-ed25519 AAAAintruder\n", encoding="utf-8")
    code, result = run_module(peers_module, capsys, config=path, _ansible_check_mode=True,
                              peers=as_json(*PEERS))
    assert (code, result["changed"], result["added"], result["updated"]) == (0, True, [], [])
    assert "intruder" in Path(cfg.known_hosts).read_text(encoding="utf-8")
    code, result = run_module(peers_module, capsys, config=path, peers=as_json(*PEERS))
    assert (code, result["changed"]) == (0, True)
    assert "intruder" not in Path(cfg.known_hosts).read_text(encoding="utf-8")
    assert run_module(peers_module, capsys, config=path, peers=as_json(*PEERS))[1]["changed"] \
        is False


def test_diff_shows_the_list_before_and_after(peers_module, node, capsys):
    cfg, path = node
    incoming = as_json(*PEERS[:2], {"name": "node3", "state": "removed", "version": 2})
    code, result = run_module(peers_module, capsys, config=path, peers=incoming,
                              _ansible_diff=True)
    assert code == 0
    assert result["diff"] == {
        "before_header": cfg.peers_file, "after_header": cfg.peers_file,
        "before": "node1 v1 active 127.0.0.1\nnode2 v1 active 127.0.0.2\n"
                  "node3 v1 active 127.0.0.3\n",
        "after": "node1 v1 active 127.0.0.1\nnode2 v1 active 127.0.0.2\nnode3 v2 removed -\n"}


def test_no_diff_unless_asked(peers_module, node, capsys):
    _, result = run_module(peers_module, capsys, config=node[1], peers=as_json(*PEERS))
    assert "diff" not in result


def test_an_entry_signed_by_another_key_fails_and_nothing_changes(peers_module, node, tmp_path,
                                                                  capsys):
    cfg, path = node
    before = files(tmp_path)
    incoming = as_json({"name": "node4"}, {"name": "node5", "owner": "impostor"})
    code, result = run_module(peers_module, capsys, config=path, peers=incoming)
    assert (code, result["failed"]) == (1, True)
    assert result["msg"] == (f"entries of node5 are not signed by the operator key in "
                             f"{cfg.operator_signers}: was the key rotated without running "
                             "site.yml? Nothing was changed")
    assert files(tmp_path) == before             # node4 was not taken either
    assert not locked(cfg)


def test_a_malformed_list_on_the_node_fails_and_is_kept(peers_module, node, capsys):
    cfg, path = node
    Path(cfg.peers_file).write_text('{"peers": []}', encoding="utf-8")
    code, result = run_module(peers_module, capsys, config=path, peers=as_json(*PEERS))
    assert code == 1
    assert result["msg"].endswith("(the file is kept as it is: fix or move it away, then run "
                                  "site.yml)")
    assert Path(cfg.peers_file).read_text(encoding="utf-8") == '{"peers": []}'


@pytest.mark.parametrize("given, needle", [
    ({"format": 1, "peers": []}, "peers: expected an object with \"format\": 2"),
    ([{"name": "node4"}], "peers: entry 1 (node4): state must be one of active, removed"),
    ("node4", "peers: expected an object"),
])
def test_malformed_entries_fail_with_the_reason(peers_module, node, capsys, given, needle):
    code, result = run_module(peers_module, capsys, config=node[1], peers=given)
    assert code == 1
    assert result["msg"].startswith(needle)


def test_a_missing_config_fails(peers_module, tmp_path, capsys):
    code, result = run_module(peers_module, capsys, config=str(tmp_path / "none.json"),
                              peers=[])
    assert code == 1
    assert "does not exist: deploy the node" in result["msg"]


def test_what_the_controller_signs_a_new_node_applies(monkeypatch, tmp_path, capsys):
    """replimesh_sign_peers on the controller, its result fed to replimesh_peers."""
    sign_module = load_module(monkeypatch, "replimesh_sign_peers")
    nodes = {name: {"addresses": [f"127.0.0.{name[-1]}"], "ssh_key": fake_key("sync", name),
                    "host_keys": [fake_key("host", name)], "peer_list": ""}
             for name in ("node1", "node2")}
    code, made = run_module(sign_module, capsys, nodes=nodes, mesh=["node1", "node2"],
                            operator_key=key()[0], controller_dir=str(tmp_path / "controller"))
    assert code == 0
    cfg, path = write_node(tmp_path, [])
    Path(cfg.peers_file).unlink()
    peers_module = load_module(monkeypatch, "replimesh_peers")
    code, result = run_module(peers_module, capsys, config=path, peers=made["peers"])
    assert (code, result["added"]) == (0, ["node1", "node2"])
    assert peer_list.to_json(membership.load(cfg)) == made["peers"]
    assert json.loads(Path(tmp_path / "controller" / "peers.json").read_text()) == made["peers"]
