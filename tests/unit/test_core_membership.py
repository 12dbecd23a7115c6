"""A node's peer list: taking in signed entries, applying them to the SSH files, and the
exchange with a peer. Signatures are real (ssh-keygen), made by the test operator key."""

import fcntl
import json
import os
import stat
import time
from dataclasses import replace

import pytest

from plugins.module_utils.replimesh import confine, membership, peer_ssh
from plugins.module_utils.replimesh import peers as peer_list
from plugins.module_utils.replimesh.errors import ConfigError

from .support import authorized, entry, fake_ssh, script, signed, write_node, write_peers

PEERS = [{"name": "node1"}, {"name": "node2"}]


@pytest.fixture
def node(tmp_path):
    return write_node(tmp_path, PEERS)[0]


def text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def log(cfg):
    path = os.path.join(cfg.log_dir, membership.LOG)
    return text(path).splitlines() if os.path.exists(path) else []


def auth_line(name, command="/usr/local/bin/replimesh"):
    return (f'restrict,command="{command} serve --peer {name}" {entry(name).ssh_key} '
            f"replimesh@{name}\n")


# accept


def test_a_newer_signed_entry_is_taken_written_and_applied(node):
    incoming = signed([{"name": "node2", "address": "127.0.0.12", "version": 2},
                       {"name": "node3"}])
    outcome = membership.accept(node, incoming, "the test")
    assert (outcome.changed, outcome.ignored) == (["node2", "node3"], [])
    assert outcome.before == signed(PEERS)
    assert outcome.after == {"node1": entry("node1"), **incoming}
    assert text(node.peers_file) == peer_list.dumps(outcome.after)
    assert membership.load(node) == outcome.after
    assert authorized(node) == auth_line("node2") + auth_line("node3")
    assert text(node.known_hosts) == membership.HEADER + \
        f"node2,127.0.0.12 {entry('node2').host_keys[0]}\n" \
        f"node3,127.0.0.3 {entry('node3').host_keys[0]}\n"
    took = [line for line in log(node) if " took " in line]
    assert [line.split(" ", 2)[2] for line in took] == [
        "took node2 v2 active 127.0.0.12 from the test",
        "took node3 v1 active 127.0.0.3 from the test"]


def test_files_get_their_modes(node):
    membership.accept(node, signed([{"name": "node3"}]), "the test")
    assert stat.S_IMODE(os.stat(node.peers_file).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(node.known_hosts).st_mode) == 0o644


def test_keys_are_forced_to_the_configured_command(tmp_path):
    cfg, _ = write_node(tmp_path, PEERS, command="/opt/replimesh/bin/replimesh", user="sync")
    assert authorized(cfg).splitlines()[0] == \
        (f'restrict,command="/opt/replimesh/bin/replimesh serve --peer node2" '
         f"{entry('node2').ssh_key} sync@node2")


def test_known_hosts_names_the_port_when_not_22(tmp_path):
    two = {"name": "node2", "addresses": ("127.0.0.2", "127.0.1.2")}
    cfg, _ = write_node(tmp_path, [{"name": "node1"}, two], ssh_port=2222)
    membership.apply(cfg, membership.load(cfg))
    assert text(cfg.known_hosts).splitlines()[1:] == [
        f"[node2]:2222,[127.0.0.2]:2222,[127.0.1.2]:2222 {entry('node2').host_keys[0]}"]


def test_only_other_active_nodes_get_in(tmp_path):
    cfg, _ = write_node(tmp_path, [*PEERS, {"name": "node3", "state": "removed"},
                                   {"name": "node4"}])
    membership.apply(cfg, membership.load(cfg))
    assert authorized(cfg) == auth_line("node2") + auth_line("node4")
    assert [line.split()[0] for line in text(cfg.known_hosts).splitlines()[1:]] == \
        ["node2,127.0.0.2", "node4,127.0.0.4"]


def test_a_tombstone_takes_the_key_away_at_once(node):
    membership.accept(node, signed([{"name": "node3"}]), "the test")
    assert "node3" in authorized(node)
    outcome = membership.accept(
        node, signed([{"name": "node3", "state": "removed", "version": 2}]), "the test")
    assert outcome.changed == ["node3"]
    assert authorized(node) == auth_line("node2")
    assert "node3" not in text(node.known_hosts)


@pytest.mark.parametrize("owner", ["impostor", None])
def test_an_entry_not_signed_by_the_operator_is_ignored_and_logged(node, owner):
    before = text(node.peers_file)
    bad = signed([{"name": "node2", "address": "127.0.0.66", "version": 9, "owner": owner}])
    outcome = membership.accept(node, bad, "127.0.0.66")
    assert (outcome.changed, outcome.ignored) == ([], ["node2"])
    assert outcome.after == outcome.before
    assert text(node.peers_file) == before
    line, = log(node)
    assert line.endswith(" ignored node2 v9 active 127.0.0.66 from 127.0.0.66: not signed by "
                         "the operator key")
    assert "127.0.0.66" not in authorized(node)


def test_good_entries_are_taken_next_to_ignored_ones(node):
    incoming = signed([{"name": "node3"}, {"name": "node4", "owner": "impostor"}])
    outcome = membership.accept(node, incoming, "the test")
    assert (outcome.changed, outcome.ignored) == (["node3"], ["node4"])
    assert sorted(membership.load(node)) == ["node1", "node2", "node3"]


def test_an_entry_with_a_signature_over_other_content_is_ignored(node):
    genuine = entry("node2", version=2)
    moved = peer_list.Entry(**{**vars(genuine), "addresses": ("127.0.0.66",)})
    assert membership.accept(node, {"node2": moved}, "the test").ignored == ["node2"]


@pytest.mark.parametrize("incoming", [
    [{"name": "node2", "address": "127.0.0.12", "version": 0}],    # older
    PEERS,                                                          # the same
])
def test_an_older_or_identical_entry_changes_nothing(node, incoming):
    before = text(node.peers_file)
    outcome = membership.accept(node, signed(incoming), "the test")
    assert (outcome.changed, outcome.ignored) == ([], [])
    assert text(node.peers_file) == before
    assert log(node) == []


def test_a_tombstone_is_not_undone_by_a_stale_active_entry(tmp_path):
    cfg, _ = write_node(tmp_path, [{"name": "node1"},
                                   {"name": "node2", "state": "removed", "version": 2}])
    outcome = membership.accept(cfg, signed([{"name": "node2", "version": 2}]), "the test")
    assert outcome.changed == []
    assert not membership.load(cfg)["node2"].active


@pytest.mark.parametrize("content, needle", [
    ('{"peers": [{"name": "node1", "address": "127.0.0.1"}]}',
     r"expected an object with \"format\": 2 .*\(the file is kept as it is: fix or move it "
     r"away, then run site.yml\)$"),
    ("{broken", "cannot be read as JSON"),
])
def test_a_malformed_local_list_is_an_error_and_kept(node, content, needle):
    with open(node.peers_file, "w", encoding="utf-8") as out:
        out.write(content)
    with pytest.raises(ConfigError, match=needle):
        membership.accept(node, signed([{"name": "node3"}]), "the test")
    assert text(node.peers_file) == content
    assert not os.path.exists(node.known_hosts)


def test_a_missing_list_is_an_error_unless_missing_ok(node):
    os.unlink(node.peers_file)
    with pytest.raises(ConfigError, match="does not exist"):
        membership.accept(node, signed(PEERS), "the test")
    outcome = membership.accept(node, signed(PEERS), "the test", missing_ok=True)
    assert (outcome.before, outcome.changed) == ({}, ["node1", "node2"])
    assert membership.load(node) == signed(PEERS)
    assert authorized(node) == auth_line("node2")


def test_missing_ok_does_not_hide_a_malformed_list(node):
    with open(node.peers_file, "w", encoding="utf-8") as out:
        out.write("[]")
    with pytest.raises(ConfigError):
        membership.accept(node, signed(PEERS), "the test", missing_ok=True)


def test_without_write_nothing_is_written(node, tmp_path):
    before = text(node.peers_file)
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    incoming = signed([{"name": "node3"}, {"name": "node4", "owner": "impostor"}])
    outcome = membership.accept(node, incoming, "the test", write=False)
    assert (outcome.changed, outcome.ignored) == (["node3"], ["node4"])
    assert "node3" in outcome.after
    assert text(node.peers_file) == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing  # no log, lock, ssh files


def test_entries_that_clash_once_merged_are_refused_and_nothing_written(node):
    before = text(node.peers_file)
    clash = signed([{"name": "node3", "address": "127.0.0.2"}])  # node2's address here
    with pytest.raises(ConfigError, match=r"address 127\.0\.0\.2 is listed for both node2 and "
                                          r"node3"):
        membership.accept(node, clash, "the test")
    assert text(node.peers_file) == before


def test_apply_says_whether_it_changed_anything(node):
    peers = membership.load(node)
    assert membership.apply(node, peers) is True
    assert membership.apply(node, peers) is False
    with open(node.known_hosts, "a", encoding="utf-8") as out:
        out.write("intruder ssh-ed25519 AAAAintruder\n")
    assert membership.apply(node, peers) is True
    assert "intruder" not in text(node.known_hosts)


# The exchange


def test_answer_exchange_takes_the_peers_list_and_answers_with_the_merge(node):
    write_peers(node.peers_file, [*PEERS, {"name": "node4"}])
    sent = peer_list.dumps(signed([*PEERS, {"name": "node3"}]))
    answer = peer_list.parse(json.loads(membership.answer_exchange(node, "node2", sent)))
    assert sorted(answer) == ["node1", "node2", "node3", "node4"]
    assert membership.load(node) == answer
    assert any(line.endswith(" took node3 v1 active 127.0.0.3 from node2")
               for line in log(node))


def bogus(count, version=9):
    """count tombstones of names unknown here, with a well-formed signature over
    something else: each one costs a real check."""
    other = entry("node1").signature
    return {f"bogus{n:05d}": replace(entry(f"bogus{n:05d}", state="removed", owner=None,
                                           version=version), signature=other)
            for n in range(count)}


def test_an_exchange_checks_known_names_and_a_few_new_ones(node, monkeypatch):
    checked = []
    verify = membership.signature.verify
    monkeypatch.setattr(membership.signature, "verify",
                        lambda *args: checked.append(args) or verify(*args))
    good_new = {f"new{n:02d}": entry(f"new{n:02d}", state="removed")
                for n in range(membership.MAX_NEW_NAMES + 5)}
    incoming = {**good_new, "node2": entry("node2", version=2, address="127.0.0.12")}
    outcome = membership.accept(node, incoming, "node2", new_names=membership.MAX_NEW_NAMES)
    assert len(checked) == membership.MAX_NEW_NAMES + 1
    assert outcome.changed == sorted(["node2", *sorted(good_new)[:membership.MAX_NEW_NAMES]])
    assert outcome.unchecked == 5
    assert log(node)[-1].endswith("5 names new here from node2 left for later exchanges (at "
                                  f"most {membership.MAX_NEW_NAMES} an exchange)")
    again = membership.accept(node, incoming, "node2", new_names=membership.MAX_NEW_NAMES)
    assert again.changed == sorted(good_new)[membership.MAX_NEW_NAMES:]


def test_checking_stops_at_a_senders_first_bad_signature_logged_once(node, monkeypatch):
    checked = []
    verify = membership.signature.verify
    monkeypatch.setattr(membership.signature, "verify",
                        lambda *args: checked.append(args) or verify(*args))
    incoming = {**bogus(5000), "node2": entry("node2", version=2, address="127.0.0.12")}
    outcome = membership.accept(node, incoming, "node3", new_names=membership.MAX_NEW_NAMES)
    assert (outcome.changed, outcome.ignored) == (["node2"], ["bogus00000"])
    assert len(checked) == 2  # the known name first, then the first new one
    assert outcome.unchecked == 4999
    ignored, = [line for line in log(node) if " ignored " in line]
    assert ignored.endswith(" ignored bogus00000 v9 removed - from node3: not signed by the "
                            "operator key; 4999 more changed entries from it not checked")


def test_signatures_are_checked_before_the_lock_is_taken(node, monkeypatch):
    held = []
    verify = membership.signature.verify

    def checking(*args):
        with open(node.peers_file + ".lock", "a", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(args)
        return verify(*args)
    monkeypatch.setattr(membership.signature, "verify", checking)
    membership.accept(node, signed([{"name": "node3"}]), "node2")
    assert membership.load(node)["node3"] == entry("node3")
    assert held == []


def test_an_entry_taken_by_another_session_meanwhile_is_not_taken_again(node, monkeypatch):
    verify = membership.signature.verify

    def meanwhile(*args):  # another exchange writes a newer node3 during our checks
        monkeypatch.setattr(membership.signature, "verify", verify)
        membership.accept(node, signed([{"name": "node3", "version": 5}]), "node4")
        return verify(*args)
    monkeypatch.setattr(membership.signature, "verify", meanwhile)
    outcome = membership.accept(node, signed([{"name": "node3", "version": 2}]), "node2")
    assert outcome.changed == []
    assert membership.load(node)["node3"].version == 5


@pytest.mark.parametrize("sent, needle", [
    ("x" * (membership.MAX_EXCHANGE_BYTES + 1),
     "peer list from node2 is larger than 33554432 bytes"),
    ("[" * 100_000, "peer list from node2 is nested too deeply"),
    ('{"format": 2, "peers": [], "x": ' + "9" * 5000 + "}",
     "peer list from node2 is not JSON: a number of 5000 digits"),
    ('{"format": 2, "peers": [], "x": 1e999}', "peer list from node2 is not JSON: a number "
                                                "out of range"),
    ('{"format": 2, "peers": [], "x": NaN}', "peer list from node2 is not JSON: NaN is not"),
    ("{not json", "peer list from node2 is not JSON: "),
    ('{"peers": []}', "peer list from node2: expected an object"),
])
def test_parse_sent_refuses_what_is_not_a_list(sent, needle):
    with pytest.raises(ConfigError, match=f"^{needle}"):
        membership.parse_sent(sent, "node2")


def test_parse_sent_takes_a_list_at_the_size_limit():
    text_ = peer_list.dumps(signed(PEERS))
    padded = text_ + " " * (membership.MAX_EXCHANGE_BYTES - len(text_))
    assert membership.parse_sent(padded, "node2") == signed(PEERS)


def test_exchange_sends_my_list_and_takes_the_answer(node, tmp_path):
    answer = tmp_path / "answer.json"
    write_peers(answer, [*PEERS, {"name": "node3"}])
    ssh = script(tmp_path, "stand-in-ssh", f'echo "$@" > {tmp_path}/argv\ncat > {tmp_path}/sent\n'
                                  f"cat {answer}\n")
    cfg = replace(node, ssh=ssh, ssh_port=2222)
    mine = text(cfg.peers_file)
    outcome = membership.exchange(cfg, "127.0.0.2", {"history": {"/r": []}})
    assert outcome.changed == ["node3"]
    assert json.loads(text(tmp_path / "sent")) == {**json.loads(mine), "history": {"/r": []}}
    assert outcome.answer == json.loads(text(answer))
    assert text(tmp_path / "argv").split() == [
        "-o", "ConnectTimeout=1", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={cfg.known_hosts}", "-p", "2222", "replimesh@127.0.0.2",
        "replimesh", "peers", "exchange"]
    assert "node3" in membership.load(cfg)


@pytest.mark.parametrize("body, needle", [
    ("exit 1\n", "^peer list not exchanged: exit 1$"),
    ("echo 'debug1: noise' >&2\necho 'Permission denied (publickey).' >&2\nexit 255\n",
     r"^peer list not exchanged: Permission denied \(publickey\).$"),
    ("echo garbage\n", "^peer list from 127.0.0.2 is not JSON"),
    ("printf '{\"x\": \"\\377\"}'\n", r"^peer list from 127.0.0.2 is not UTF-8 \(byte 7\)$"),
    ("printf '\\377 refused' >&2; exit 1\n", "^peer list not exchanged: \ufffd refused$"),
])
def test_a_failed_exchange_says_why(node, tmp_path, body, needle):
    cfg = replace(node, ssh=script(tmp_path, "stand-in-ssh", body))
    with pytest.raises(ConfigError, match=needle):
        membership.exchange(cfg, "127.0.0.2")


def test_an_exchange_that_hangs_is_cut_off(node, tmp_path, monkeypatch):
    monkeypatch.setattr(peer_ssh, "ANSWER_WAIT_S", 0.5)
    cfg = replace(node, ssh=script(tmp_path, "stand-in-ssh", "exec sleep 30\n"))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^peer list from 127.0.0.2: 0 bytes in \d+ s, "
                                          r"too slow .*: cut off$"):
        membership.exchange(cfg, "127.0.0.2")
    assert time.monotonic() - started < 15


def test_an_answer_larger_than_an_exchange_may_be_is_cut_off(node, tmp_path, monkeypatch):
    monkeypatch.setattr(membership, "MAX_EXCHANGE_BYTES", 1000)
    cfg = replace(node, ssh=script(tmp_path, "stand-in-ssh", "exec yes\n"))
    with pytest.raises(ConfigError, match=r"^peer list from 127.0.0.2 is larger than 1000 "
                                          r"bytes$"):
        membership.exchange(cfg, "127.0.0.2")


@pytest.mark.skipif(not confine.abi(), reason="this kernel offers no Landlock")
def test_a_confined_exchange_still_takes_and_answers(tmp_path):
    """node2 serves the exchange confined (serve._confine_verb): what it needs (the code,
    Python, ssh-keygen, a folder for signatures, its list and its logs) is in reach."""
    mesh = tmp_path / "node2" / "mesh"   # as deployed: not the folder of the archives
    mesh.mkdir(parents=True)
    _, config2 = write_node(tmp_path / "node2", [*PEERS, {"name": "node4"}], node="node2",
                            confine=True, peers_file=str(mesh / "peers.json"),
                            known_hosts=str(mesh / "known_hosts"))
    os.rename(tmp_path / "node2" / "peers.json", mesh / "peers.json")
    ssh, _ = fake_ssh(tmp_path, "node1", {"127.0.0.2": config2})
    (tmp_path / "node1").mkdir()
    cfg1, _ = write_node(tmp_path / "node1", [*PEERS, {"name": "node3"}], ssh=ssh)
    assert membership.exchange(cfg1, "127.0.0.2").changed == ["node4"]
    everyone = signed([*PEERS, {"name": "node3"}, {"name": "node4"}])
    assert peer_list.parse(json.loads(text(mesh / "peers.json"))) == everyone
    assert "(unconfined)" not in text(tmp_path / "node2" / "log" / "serve.log")


def test_two_nodes_end_with_the_same_list(tmp_path):
    """node1 knows node3, node2 knows node4: one exchange through node2's real
    `replimesh serve` (run by a stand-in ssh) and both hold all four."""
    (tmp_path / "node2").mkdir()
    cfg2, config2 = write_node(tmp_path / "node2", [*PEERS, {"name": "node4"}], node="node2")
    ssh, calls = fake_ssh(tmp_path, "node1", {"127.0.0.2": config2})
    (tmp_path / "node1").mkdir()
    cfg1, _ = write_node(tmp_path / "node1", [*PEERS, {"name": "node3"}], ssh=ssh)
    outcome = membership.exchange(cfg1, "127.0.0.2")
    assert outcome.changed == ["node4"]
    everyone = signed([*PEERS, {"name": "node3"}, {"name": "node4"}])
    assert membership.load(cfg1) == everyone
    assert peer_list.parse(json.loads(text(tmp_path / "node2" / "peers.json"))) == everyone
    assert "accepted node1: peer list exchange" in text(tmp_path / "node2" / "log" /
                                                         "serve.log")
    assert auth_line("node1") in authorized(cfg2)
    assert auth_line("node4") in authorized(cfg1)
    assert len(calls.read_text(encoding="utf-8").splitlines()) == 1
