"""What sshd gets for the sync user's keys: the sync user's list read as hostile input,
checked against the operator's signature (real ssh-keygen), joined into the keys user's
own copy, which only moves forward."""

import json
import os

import pytest

from plugins.module_utils.replimesh import authorized_keys, signature
from plugins.module_utils.replimesh import peers as peer_list

from .support import entry, signed, write_node, write_peers

PEERS = [{"name": "node1"}, {"name": "node2"}, {"name": "node3"}]


@pytest.fixture
def node(tmp_path, monkeypatch):
    cfg, path = write_node(tmp_path, PEERS)
    monkeypatch.setenv("REPLIMESH_CONFIG", path)
    return cfg


def keys(cfg, capsys, *argv):
    code = authorized_keys.main(list(argv or [cfg.user]))
    out, err = capsys.readouterr()
    return code, out, err


def line(name):
    return (f'restrict,command="/usr/local/bin/replimesh serve --peer {name}" '
            f"{entry(name).ssh_key} replimesh@{name}\n")


def copy(cfg):
    with open(cfg.keys_copy, encoding="utf-8") as handle:
        return peer_list.parse(json.load(handle))


def test_the_other_active_peers_are_printed_and_copied(node, capsys):
    assert keys(node, capsys) == (0, line("node2") + line("node3"), "")
    assert copy(node) == signed(PEERS)


def test_other_users_get_no_keys(node, capsys):
    assert keys(node, capsys, "root") == (0, "", "")
    assert not os.path.exists(node.keys_copy)


def test_a_connection_with_nothing_new_checks_no_signature(node, capsys, monkeypatch):
    keys(node, capsys)
    monkeypatch.setattr(signature, "SSH_KEYGEN", "/nonexistent/ssh-keygen")
    assert keys(node, capsys) == (0, line("node2") + line("node3"), "")


def test_an_old_signed_list_brings_no_removed_node_back(node, capsys):
    write_peers(node.peers_file, [*PEERS[:2], {"name": "node3", "state": "removed",
                                               "version": 2}])
    assert keys(node, capsys)[1] == line("node2")
    write_peers(node.peers_file, PEERS)   # node3's older, active entry: still signed
    assert keys(node, capsys)[1] == line("node2")
    assert not copy(node)["node3"].active


def test_entries_not_signed_by_the_operator_are_refused(node, capsys):
    keys(node, capsys)
    write_peers(node.peers_file, [*PEERS, {"name": "thief", "owner": "impostor"},
                                  {"name": "node2", "version": 7, "owner": None}])
    code, out, err = keys(node, capsys)
    assert (code, out) == (0, line("node2") + line("node3"))
    assert err == (f"replimesh-authorized-keys: 2 entries of {node.peers_file} are not "
                   "signed by the operator (node2, thief): ignored\n")
    assert "thief" not in copy(node)


def test_signature_checks_per_call_are_bounded(node, capsys, monkeypatch):
    bogus = [{"name": f"bogus{n:03}", "owner": None, "address": f"10.0.{n // 250}.{n % 250}"}
             for n in range(authorized_keys.MAX_VERIFY + 20)]
    write_peers(node.peers_file, [*PEERS, *bogus])
    calls = []
    real = signature.verify
    monkeypatch.setattr(signature, "verify", lambda *a: calls.append(a) or real(*a))
    keys(node, capsys)
    assert len(calls) == authorized_keys.MAX_VERIFY


def test_the_deploy_seeds_the_copy_from_its_own_list(node, capsys, tmp_path, monkeypatch):
    given = tmp_path / "signed.json"
    given.write_text(peer_list.dumps(signed([*PEERS, {"name": "node4"}])), encoding="utf-8")
    code, out, _ = keys(node, capsys, "--seed", str(given))
    assert (code, json.loads(out)) == (0, {"changed": ["node1", "node2", "node3", "node4"],
                                           "refused": []})
    assert json.loads(keys(node, capsys, "--seed", str(given))[1])["changed"] == []
    write_peers(node.peers_file, PEERS)   # the sync user's list has not heard of node4
    assert keys(node, capsys)[1] == line("node2") + line("node3") + line("node4")


@pytest.mark.parametrize("content", [
    "{broken", "[]", "null", '{"format": 2, "peers": {"a": 1}}', "[" * 100000,
    '{"format": 2, "peers": [{"name": "x\\n"}]}', "\xff\xfe", "1e99999"])
def test_any_shape_is_one_line_and_no_keys(node, capsys, content):
    with open(node.peers_file, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.write(content)
    code, out, err = keys(node, capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.endswith(": no keys given\n"), err


def test_a_list_too_large_is_refused_unread(node, capsys, monkeypatch):
    monkeypatch.setattr(authorized_keys, "MAX_LIST_BYTES", 100)
    code, out, err = keys(node, capsys)
    assert (code, out) == (1, "")
    assert "is larger than 100 bytes" in err


def test_a_link_or_a_fifo_is_refused(node, capsys, tmp_path):
    os.unlink(node.peers_file)
    os.symlink(tmp_path / "config.json", node.peers_file)
    assert keys(node, capsys)[:2] == (1, "")
    os.unlink(node.peers_file)
    os.mkfifo(node.peers_file)
    code, out, err = keys(node, capsys)
    assert (code, out) == (1, "") and "is not a regular file" in err
