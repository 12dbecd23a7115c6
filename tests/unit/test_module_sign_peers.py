"""The replimesh_sign_peers module (the controller builds and signs the list), run in-process
on the core, with the real ssh-keygen."""

import json
import tempfile
from pathlib import Path

import pytest

from plugins.module_utils.replimesh import peers as peer_list
from plugins.module_utils.replimesh import signature

from .support import entry, fake_key, key, load_module, run_module, signed

MESH = ["node1", "node2", "node3"]


@pytest.fixture
def sign_module(monkeypatch):
    return load_module(monkeypatch, "replimesh_sign_peers")


def facts(name, peer_list_text=""):
    """What a node reports about itself, keys with their comments as in the .pub files."""
    return {"addresses": [f"127.0.0.{name[-1]}"],
            "ssh_key": fake_key("sync", name) + f" replimesh@{name}",
            "host_keys": [fake_key("host", name) + " root@" + name],
            "peer_list": peer_list_text}


def run(sign_module, capsys, tmp_path, nodes=None, **args):
    nodes = {name: facts(name) for name in MESH} if nodes is None else nodes
    return run_module(sign_module, capsys, **{
        "nodes": nodes, "mesh": MESH, "operator_key": key()[0],
        "controller_dir": str(tmp_path / "controller"), **args})


def saved(tmp_path):
    return tmp_path / "controller" / "peers.json"


def warnings(result):
    return json.dumps(result.get("warnings", []))


def test_a_new_mesh_is_signed_and_saved(sign_module, tmp_path, capsys):
    code, result = run(sign_module, capsys, tmp_path)
    assert (code, result["changed"], result["signed"]) == (0, True, MESH)
    built = peer_list.parse(result["peers"])
    assert sorted(built) == MESH
    for name, made in built.items():
        assert made.ssh_key == fake_key("sync", name)          # comment left out
        assert made.host_keys == (fake_key("host", name),)
        assert signature.verify(key()[1], peer_list.payload(made), made.signature)
    assert saved(tmp_path).read_text(encoding="utf-8") == peer_list.dumps(built)
    public = Path(key()[0] + ".pub").read_text(encoding="utf-8")
    assert result["operator_signers"] == signature.allowed_signers(public)
    signers = tmp_path / "controller" / "operator_signers"  # for removed nodes
    assert signers.read_text(encoding="utf-8") == result["operator_signers"]


def test_a_second_run_signs_nothing(sign_module, tmp_path, capsys):
    _, first = run(sign_module, capsys, tmp_path)
    text = saved(tmp_path).read_text(encoding="utf-8")
    code, second = run(sign_module, capsys, tmp_path)
    assert (code, second["changed"], second["signed"]) == (0, False, [])
    assert second["peers"] == first["peers"]
    assert saved(tmp_path).read_text(encoding="utf-8") == text


def test_check_mode_reports_the_change_and_writes_nothing(sign_module, tmp_path, capsys):
    code, result = run(sign_module, capsys, tmp_path, _ansible_check_mode=True)
    assert (code, result["changed"], result["signed"]) == (0, True, MESH)
    assert not (tmp_path / "controller").exists()


def test_a_removed_node_gets_a_tombstone(sign_module, tmp_path, capsys):
    run(sign_module, capsys, tmp_path)
    nodes = {name: facts(name) for name in MESH[:2]}
    code, result = run(sign_module, capsys, tmp_path, nodes=nodes, mesh=MESH[:2],
                       removed=["node3"])
    assert (code, result["changed"], result["signed"]) == (0, True, ["node3"])
    tombstone = peer_list.parse(result["peers"])["node3"]
    assert (tombstone.state, tombstone.addresses) == ("removed", ())


def test_an_unreached_node_keeps_the_saved_entry(sign_module, tmp_path, capsys):
    _, first = run(sign_module, capsys, tmp_path)
    nodes = {name: facts(name) for name in MESH[:2]}
    code, result = run(sign_module, capsys, tmp_path, nodes=nodes)
    assert (code, result["changed"], result["signed"]) == (0, False, [])
    assert result["peers"] == first["peers"]


def test_the_lists_on_the_nodes_are_read(sign_module, tmp_path, capsys):
    held = peer_list.dumps(signed([{"name": "node1"}, {"name": "node9", "address": "127.0.0.99"},
                                   {"name": "node7", "owner": "impostor"}]))
    nodes = {**{name: facts(name) for name in MESH}, "node1": facts("node1", held)}
    code, result = run(sign_module, capsys, tmp_path, nodes=nodes)
    assert code == 0
    assert sorted(peer_list.parse(result["peers"])) == [*MESH, "node9"]
    assert "node9 is in the peer list but in neither mesh nor mesh_removed" in warnings(result)
    assert "entries of node7 not signed by the current operator key" in warnings(result)


def test_an_unreadable_list_on_a_node_is_a_warning(sign_module, tmp_path, capsys):
    nodes = {**{name: facts(name) for name in MESH}, "node2": facts("node2", "{half")}
    code, result = run(sign_module, capsys, tmp_path, nodes=nodes)
    assert (code, result["signed"]) == (0, MESH)
    assert "node2's peer list was not read" in warnings(result)


def test_an_unreadable_saved_copy_is_a_warning_and_replaced(sign_module, tmp_path, capsys):
    saved(tmp_path).parent.mkdir()
    saved(tmp_path).write_text("[]", encoding="utf-8")
    code, result = run(sign_module, capsys, tmp_path)
    assert (code, result["changed"]) == (0, True)
    assert "the controller's copy" in warnings(result)
    assert peer_list.parse(json.loads(saved(tmp_path).read_text(encoding="utf-8")))


def test_versions_go_above_a_forged_entry_held_by_a_node(sign_module, tmp_path, capsys):
    forged = entry("node2", version=10**12, address="127.0.0.66", owner="impostor")
    held = peer_list.dumps({"node2": forged})
    nodes = {**{name: facts(name) for name in MESH}, "node2": facts("node2", held)}
    code, result = run(sign_module, capsys, tmp_path, nodes=nodes)
    assert code == 0
    made = peer_list.parse(result["peers"])["node2"]
    assert (made.addresses, made.version) == (("127.0.0.2",), 10**12 + 1)
    assert "entries of node2 not signed by the current operator key" in warnings(result)


@pytest.mark.parametrize("bad, needle", [
    ({"addresses": ["127.0.0.3"], "host_keys": []}, "node3: nodes needs addresses, ssh_key"),
    ({**facts("node3"), "addresses": ["127.0.0.2"]}, "node2 and node3 have the same address"),
    ({**facts("node3"), "ssh_key": "not a key"}, "ssh_key must be a \"type base64\" key"),
])
def test_bad_node_facts_fail(sign_module, tmp_path, capsys, bad, needle):
    nodes = {**{name: facts(name) for name in MESH}, "node3": bad}
    code, result = run(sign_module, capsys, tmp_path, nodes=nodes)
    assert code == 1
    assert needle in result["msg"]
    assert not saved(tmp_path).exists()


def test_a_node_in_both_groups_fails(sign_module, tmp_path, capsys):
    code, result = run(sign_module, capsys, tmp_path, removed=["node2"])
    assert code == 1
    assert result["msg"].startswith("node2 in both groups mesh and mesh_removed")


def test_a_missing_key_fails_unless_it_may_be_made(sign_module, tmp_path, capsys):
    path = str(tmp_path / "controller" / "operator_ed25519")
    code, result = run(sign_module, capsys, tmp_path, operator_key=path)
    assert code == 1
    assert result["msg"].startswith(f"operator key {path} does not exist")
    code, result = run(sign_module, capsys, tmp_path, operator_key=path, create_key=True)
    assert (code, result["signed"]) == (0, MESH)
    assert (tmp_path / "controller" / ".gitignore").exists()
    public = Path(path + ".pub").read_text(encoding="utf-8")
    assert result["operator_signers"] == signature.allowed_signers(public)


def test_the_temporary_signers_file_is_removed(sign_module, tmp_path, capsys, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert run(sign_module, capsys, tmp_path)[0] == 0
    assert run(sign_module, capsys, tmp_path, removed=["node1"])[0] == 1
    assert list((tmp_path / "tmp").iterdir()) == []
