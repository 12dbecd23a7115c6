"""What sshd gets for the sync user's keys: the sync user's list read as hostile input,
checked against the operator's signature (real ssh-keygen), joined into the keys user's
own copy, which only moves forward; what was given is given again only while nothing it
came from changed, from a file only the keys user could have written."""

import json
import os
import stat

import pytest

from plugins.module_utils.replimesh import authorized_keys, keys_given, signature
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


# keys_given: what was given is given again, nothing parsed, while its sources are unchanged.

def given_keys(cfg, capsys, given, *argv):
    code = keys_given.main(str(given), list(argv or [cfg.user]))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_lines_given_are_given_again_with_nothing_parsed(node, capsys, tmp_path,
                                                              monkeypatch):
    given = tmp_path / "keys-given"
    assert given_keys(node, capsys, given) == (0, line("node2") + line("node3"), "")
    assert stat.S_IMODE(os.stat(given).st_mode) == 0o600
    monkeypatch.setattr(authorized_keys, "main", lambda *a, **k: pytest.fail("computed"))
    assert given_keys(node, capsys, given) == (0, line("node2") + line("node3"), "")


@pytest.mark.parametrize("change", ["list", "copy", "config", "code"])
def test_a_changed_source_has_the_lines_computed_again(node, capsys, tmp_path, change,
                                                      monkeypatch):
    given = tmp_path / "keys-given"
    given_keys(node, capsys, given)
    if change == "list":     # a new signed node, learned by the sync user
        write_peers(node.peers_file, [*PEERS, {"name": "node4"}])
    elif change == "copy":   # the deploy seeded the keys user's copy
        write_peers(node.keys_copy, [*PEERS, {"name": "node4"}])
    elif change == "config":
        with open(os.environ["REPLIMESH_CONFIG"], "a", encoding="utf-8") as out:
            out.write(" ")
    else:                    # a new deploy of the code (its folder's entries renamed)
        monkeypatch.setattr(authorized_keys, "CODE", str(tmp_path / "elsewhere"))
        text = given.read_text().replace(f"{os.path.dirname(authorized_keys.__file__)}\t",
                                         f"{tmp_path / 'elsewhere'}\t")
        given.write_text(text)
        given.chmod(0o600)
        (tmp_path / "elsewhere").mkdir()
    computed = []
    real = authorized_keys.main
    monkeypatch.setattr(authorized_keys, "main",
                        lambda *a, **k: computed.append(True) or real(*a, **k))
    code, out, _ = given_keys(node, capsys, given)
    assert computed == [True] and code == 0
    if change in ("list", "copy"):
        assert out == line("node2") + line("node3") + line("node4")


def test_other_users_get_no_keys_from_what_was_given(node, capsys, tmp_path):
    given = tmp_path / "keys-given"
    given_keys(node, capsys, given)
    assert given_keys(node, capsys, given, "root") == (0, "", "")


def test_nothing_is_kept_while_entries_are_refused(node, capsys, tmp_path):
    # The next login checks them again (a bounded number per call): kept lines would
    # stop that until the list changed.
    write_peers(node.peers_file, [*PEERS, {"name": "thief", "owner": "impostor"}])
    given = tmp_path / "keys-given"
    assert given_keys(node, capsys, given)[:2] == (0, line("node2") + line("node3"))
    assert not given.exists()


@pytest.mark.parametrize("flaw", ["writable by others", "another user's", "a link"])
def test_a_kept_file_anybody_else_could_have_written_is_not_used(node, capsys, tmp_path,
                                                                flaw):
    given = tmp_path / "keys-given"
    given_keys(node, capsys, given)
    forged = given.read_text() + 'command="/bin/sh" ssh-ed25519 AAAA thief\n'
    if flaw == "a link":
        (tmp_path / "forged").write_text(forged)
        given.unlink()
        given.symlink_to(tmp_path / "forged")
    else:
        given.write_text(forged)
        if flaw == "writable by others":
            given.chmod(0o666)
        else:
            os.chown(given, 65534, 65534)
    assert given_keys(node, capsys, given)[1] == line("node2") + line("node3")


def test_what_was_given_holds_with_the_config_at_its_default_path(tmp_path, monkeypatch):
    # As sshd runs it: no REPLIMESH_CONFIG in the environment.
    monkeypatch.delenv(keys_given.ENVIRONMENT, raising=False)
    source = tmp_path / "config.json"
    source.write_text("{}")
    given = tmp_path / "keys-given"
    head = keys_given.header("replimesh", {str(source): keys_given.identity(str(source))})
    given.write_text(head + "the lines\n")
    given.chmod(0o600)
    assert keys_given.lookup(str(given), ["replimesh"]) == "the lines\n"
    source.write_text("{} ")
    assert keys_given.lookup(str(given), ["replimesh"]) is None
