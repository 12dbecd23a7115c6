"""Swarm mode's pure parts and manifests: piece sizes, which paths may be published, what
an offer from a peer must be, which version of a path wins, and the manifest check
(with the real libtorrent)."""

import dataclasses
import os
import tempfile

import pytest

from plugins.module_utils.replimesh import (
    membership,
    serve,
    swarm_daemon,
    swarm_engine,
    swarm_manifest,
    swarm_offers,
    swarm_signing,
)
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.peers import ACTIVE, Entry

from .support import fake_key, key, sign, write_node

MIB = 1 << 20


@pytest.fixture
def cfg(tmp_path):
    swarm = tmp_path / "swarm"
    swarm.mkdir()
    return write_node(tmp_path, [{"name": "node1"}, {"name": "node2"}],
                      swarm_root=str(swarm), swarm_dir=str(tmp_path / "swarm-state"))[0]


def put(cfg, rel, data=b"x" * 100_000):
    path = os.path.join(cfg.swarm_root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)
    return path


@pytest.mark.parametrize(("size", "piece"), [
    (0, 256 << 10), (MIB, 256 << 10), (512 * MIB, 256 << 10), (513 * MIB, 512 << 10),
    (100 << 30, 16 * MIB), (500 << 30, 16 * MIB)])
def test_piece_size_grows_with_the_file_within_bounds(size, piece):
    assert swarm_offers.piece_size(size) == piece


def test_a_file_under_the_root_is_named_by_its_relative_path(cfg):
    path = put(cfg, "models/a.bin")
    assert swarm_offers.relative_path(cfg, path) == "models/a.bin"
    assert swarm_offers.relative_path(cfg, "models/a.bin") == "models/a.bin"


@pytest.mark.parametrize(("given", "needle"), [
    ("/etc/passwd", "not under the swarm root"),
    ("../outside.bin", "not under the swarm root"),
    ("models", "not a regular file"),
    ("missing.bin", "not a regular file"),
    (".replimesh-swarm/x.bin", "not a clean path")])
def test_what_cannot_be_published_is_refused_saying_why(cfg, given, needle):
    put(cfg, "models/a.bin")
    put(cfg, ".replimesh-swarm/x.bin")
    with pytest.raises(ConfigError, match=needle):
        swarm_offers.relative_path(cfg, given)


def test_a_symlink_leading_out_of_the_root_is_refused(cfg, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("no")
    os.symlink(outside, os.path.join(cfg.swarm_root, "link.bin"))
    with pytest.raises(ConfigError, match="not under the swarm root"):
        swarm_offers.relative_path(cfg, "link.bin")


def test_an_offer_survives_its_trip_and_its_manifest_checks_out(cfg):
    put(cfg, "models/a.bin", os.urandom(3 * MIB))
    offer = swarm_engine.make_offer(cfg, "models/a.bin")
    assert (offer.path, offer.size, offer.publisher) == ("models/a.bin", 3 * MIB, "node1")
    again = swarm_offers.parse(offer.to_json(), "node1")
    assert again == offer
    info = swarm_engine.check(again, "node1")
    assert info.priv() and info.num_pieces() == 12  # 256 KiB pieces


@pytest.mark.parametrize(("change", "needle"), [
    ({"path": "models/other.bin"}, "must hold the one file other.bin"),
    ({"size": 1}, "its size is not the one named"),
    ({"infohash": "0" * 64}, "its info-hash is not the one named"),
    ({"torrent": b"d4:infoi1ee"}, "does not parse")])
def test_an_offer_whose_manifest_says_otherwise_is_refused(cfg, change, needle):
    put(cfg, "models/a.bin")
    offer = dataclasses.replace(swarm_engine.make_offer(cfg, "models/a.bin"), **change)
    with pytest.raises(ConfigError, match=needle):
        swarm_engine.check(offer, "node2")


@pytest.mark.parametrize(("text", "needle"), [
    ("not json", "is not JSON"),
    ('{"path": "a"}', "malformed"),
    ('{"path": "a", "infohash": "zz", "torrent": "", "publisher": "n", "published": "t",'
     ' "size": 1}', "infohash must be 64 hex digits"),
    ('{"path": "../a", "infohash": "' + "a" * 64 + '", "torrent": "", "publisher": "n",'
     ' "published": "t", "size": 1}', "not a clean path"),
    ('{"path": "/etc/a", "infohash": "' + "a" * 64 + '", "torrent": "", "publisher": "n",'
     ' "published": "t", "size": 1}', "not a clean path"),
    ('{"path": "a", "infohash": "' + "a" * 64 + '", "torrent": "", "publisher": "n",'
     ' "published": "t", "size": -1}', "size must be"),
    ('{"path": "a", "infohash": "' + "a" * 64 + '", "torrent": "!!", "publisher": "n",'
     ' "published": "t", "size": 1}', "malformed")])
def test_a_malformed_offer_is_refused_naming_its_source(text, needle):
    with pytest.raises(ConfigError, match=f"offer from node2.*{needle}|{needle}"):
        swarm_offers.parse(text, "node2")


def offer(path, published, infohash, publisher="node1", size=1):
    return swarm_offers.Offer(path, infohash * 64, b"", publisher,
                              f"{published}T00:00:00.000000+00:00", size)


def test_the_latest_offer_of_a_path_wins_and_an_older_one_is_not_taken(cfg):
    old, new = offer("a", "2026-01-01", "1"), offer("a", "2026-02-01", "2")
    other = offer("b", "2026-01-01", "3")
    assert swarm_offers.store(cfg, old) and swarm_offers.store(cfg, other)
    assert swarm_offers.store(cfg, new)
    assert not swarm_offers.store(cfg, new)          # already held
    assert not swarm_offers.store(cfg, offer("a", "2025-12-01", "4"))  # older than held
    latest = swarm_offers.current(swarm_offers.load_all(cfg))
    assert {p: o.infohash[0] for p, o in latest.items()} == {"a": "2", "b": "3"}
    swarm_offers.remove(cfg, new.infohash)
    assert set(swarm_offers.load_all(cfg)) == {old.infohash, other.infohash}


def test_an_unreadable_offer_file_is_skipped(cfg):
    swarm_offers.store(cfg, offer("a", "2026-01-01", "1"))
    with open(os.path.join(cfg.swarm_dir, "offers", "b" * 64 + ".json"), "w") as out:
        out.write("{broken")
    assert list(swarm_offers.load_all(cfg)) == ["1" * 64]


@pytest.mark.parametrize(("pieces", "bits"), [
    ([], ""), ([True], "8"), ([True, False, True, True], "b"),
    ([True] * 5, "f8"), ([False] * 8 + [True], "008")])
def test_pieces_held_are_a_hex_bitmap_first_piece_first(pieces, bits):
    assert swarm_daemon._bits(pieces) == bits


def test_only_one_daemon_runs_per_node(cfg):
    first = swarm_daemon.lock_or_none(cfg)
    assert first is not None
    assert swarm_daemon.lock_or_none(cfg) is None
    first.close()
    assert swarm_daemon.lock_or_none(cfg) is not None


@pytest.mark.parametrize("command", ["replimesh-swarm offer", "replimesh-swarm have"])
def test_the_swarm_verbs_pass_the_forced_command(cfg, command):
    assert serve.check(cfg, "node2", command) == [command]


@pytest.mark.parametrize("command", ["replimesh-swarm offer /etc/passwd",
                                     "replimesh-swarm fetch", "replimesh-swarm"])
def test_other_swarm_commands_are_refused(cfg, command):
    with pytest.raises(serve.Refused, match="command not allowed"):
        serve.check(cfg, "node2", command)


@pytest.fixture
def signing_cfg(tmp_path):
    """node1, whose sync key (a real one, named in the signed peer list) signs offers."""
    private, _ = key("node1-sync")
    public = controller_public(private)
    node1 = sign(Entry("node1", ("127.0.0.1",), public, (fake_key("host", "node1"),),
                       ACTIVE, 1))
    swarm = tmp_path / "swarm"
    swarm.mkdir()
    return write_node(tmp_path, [node1, {"name": "node2"}], swarm_root=str(swarm),
                      swarm_dir=str(tmp_path / "swarm-state"), swarm_signing_key=private)[0]


def controller_public(private):
    with open(private + ".pub", encoding="utf-8") as handle:
        return " ".join(handle.read().split()[:2])


def serve_offer(cfg, monkeypatch, sent: bytes):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "replimesh-swarm offer")
    stdin = tempfile.TemporaryFile()  # noqa: SIM115 (a real file: serve reads it by fd)
    stdin.write(sent)
    stdin.seek(0)
    monkeypatch.setattr("sys.stdin", stdin)
    try:
        return serve.serve(cfg, "node2")
    finally:
        stdin.close()


def test_an_offer_sent_to_serve_is_kept(signing_cfg, monkeypatch, capsys):
    cfg = signing_cfg
    put(cfg, "models/a.bin")
    made = swarm_signing.sign(cfg, swarm_engine.make_offer(cfg, "models/a.bin"))
    assert serve_offer(cfg, monkeypatch, made.to_json().encode()) == 0
    assert capsys.readouterr().out == "offered\n"
    assert list(swarm_offers.load_all(cfg)) == [made.infohash]
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "replimesh-swarm have")
    assert serve.serve(cfg, "node2") == 0
    assert capsys.readouterr().out == made.infohash + "\n"


@pytest.mark.parametrize(("change", "needle"), [
    ({"publisher": "node2"}, "not signed by its publisher node2"),
    ({"publisher": "node9"}, "publisher node9 is not an active node"),
    ({"published": "9999-12-31T00:00:00.000000+00:00"}, "ahead of this node's clock"),
    ({"size": 5 << 40}, "over the maximum file size")])
def test_an_offer_not_signed_by_its_publisher_or_beyond_bounds_is_refused(
        signing_cfg, monkeypatch, capsys, change, needle):
    cfg = signing_cfg
    put(cfg, "models/a.bin")
    made = swarm_signing.sign(cfg, swarm_engine.make_offer(cfg, "models/a.bin"))
    forged = dataclasses.replace(made, **change)
    if "publisher" not in change:
        forged = swarm_signing.sign(cfg, forged)   # node1's own, signed: bounds still hold
    assert serve_offer(cfg, monkeypatch, forged.to_json().encode()) == 1
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert swarm_offers.load_all(cfg) == {}


@pytest.mark.parametrize("sent", [
    b"[" * 100_000, b"\xff\xfe{}", b'{"size": 1' + b"0" * 100_000 + b"}", b"[]",
    b"x" * (65 << 20)], ids=["deep", "not-utf8", "huge-number", "not-an-object", "huge"])
def test_malformed_offer_input_gets_a_one_line_refusal(cfg, monkeypatch, capsys, sent):
    assert serve_offer(cfg, monkeypatch, sent) == 1
    err = capsys.readouterr().err
    assert err.startswith("replimesh: offer from node2") and err.count("\n") == 1, err


def test_a_manifest_without_the_piece_layer_its_size_needs_is_refused(cfg):
    put(cfg, "models/a.bin", os.urandom(3 * MIB))
    made = swarm_engine.make_offer(cfg, "models/a.bin")
    meta = swarm_manifest.decode(made.torrent)
    assert swarm_manifest.problem(made.torrent, "a.bin", 3 * MIB) is None
    del meta[b"piece layers"]
    assert "piece layer does not match its size" in swarm_manifest.problem(
        bencode(meta), "a.bin", 3 * MIB)
    root = meta[b"info"][b"file tree"][b"a.bin"][b""][b"pieces root"]
    meta[b"piece layers"] = {root: b"\0" * 32}   # one piece's hash for twelve
    assert "piece layer does not match" in swarm_manifest.problem(bencode(meta), "a.bin",
                                                                  3 * MIB)


def test_a_tebibyte_claimed_in_a_kibibyte_is_refused_before_libtorrent_reads_it():
    info = {b"file tree": {b"big.bin": {b"": {b"length": 1 << 40, b"pieces root": b"r" * 32}}},
            b"meta version": 2, b"name": b"big.bin", b"piece length": 16 << 20, b"private": 1}
    torrent = bencode({b"info": info})
    assert len(torrent) < 1024
    assert "piece layer does not match its size" in swarm_manifest.problem(
        torrent, "big.bin", 1 << 40)


@pytest.mark.parametrize("data", [b"d", b"i1", b"5:ab", b"l" * 50 + b"e" * 50, b"de!",
                                  b"d1:ai1ee1:b", b"i" + b"9" * 40 + b"e"])
def test_a_manifest_that_is_not_bencode_does_not_parse(data):
    assert "does not parse" in swarm_manifest.problem(data, "a.bin", 1)


def test_a_publisher_gets_only_so_many_files_and_bytes_on_offer(cfg):
    cfg = dataclasses.replace(cfg, swarm_max_offers_per_publisher=2,
                              swarm_max_bytes_per_publisher=100)
    assert swarm_offers.store(cfg, offer("a", "2026-01-01", "1"), source="node2")
    assert swarm_offers.store(cfg, offer("b", "2026-01-01", "2"), source="node2")
    with pytest.raises(ConfigError, match="node1 already has 2 files on offer"):
        swarm_offers.store(cfg, offer("c", "2026-01-01", "3"), source="node2")
    # a new version of a path held replaces it: it does not count twice
    assert swarm_offers.store(cfg, offer("b", "2026-02-01", "4"), source="node2")
    assert swarm_offers.store(cfg, offer("c", "2026-01-01", "5", publisher="node2"),
                              source="node2")
    with pytest.raises(ConfigError, match="would have 101 bytes on offer"):
        swarm_offers.store(cfg, offer("d", "2026-01-01", "6", publisher="node2", size=100),
                           source="node2")


def bencode(value) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(map(bencode, value)) + b"e"
    return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"


def test_status_says_kept_only_for_the_version_held_unchanged(cfg):
    from plugins.module_utils.replimesh import swarm_cli
    put(cfg, "a.bin", b"version 1")
    made = swarm_engine.make_offer(cfg, "a.bin")
    swarm_offers.store(cfg, made)

    def state():
        return [(f["path"], f["state"]) for f in swarm_cli.load_status(cfg)["files"]]
    assert state() == [("a.bin", "waiting")]          # an offer, never held complete
    swarm_daemon.write_done(cfg, made)
    assert state() == [("a.bin", "kept")]
    os.utime(os.path.join(cfg.swarm_root, "a.bin"), ns=(0, 0))
    assert state() == [("a.bin", "waiting")]          # changed since: not that version
    assert swarm_cli.load_status(cfg)["running"] is False


def test_the_swarm_port_is_dropped_for_every_address_but_the_peers():
    from plugins.module_utils.replimesh import swarm_firewall
    rules = swarm_firewall.chain_rules(6881, {"10.0.0.2", "10.0.0.3", "fd00::2"}, 4)
    assert rules == ["-N REPLIMESH-SWARM", "-A REPLIMESH-SWARM -i lo -j RETURN",
                     "-A REPLIMESH-SWARM -s 10.0.0.2/32 -p tcp -m tcp --dport 6881 -j RETURN",
                     "-A REPLIMESH-SWARM -s 10.0.0.3/32 -p tcp -m tcp --dport 6881 -j RETURN",
                     "-A REPLIMESH-SWARM -p tcp -m tcp --dport 6881 -j DROP"]
    assert swarm_firewall.chain_rules(6881, {"10.0.0.2", "fd00::2"}, 6)[2] == (
        "-A REPLIMESH-SWARM -s fd00::2/128 -p tcp -m tcp --dport 6881 -j RETURN")
    text = swarm_firewall.restore_input(rules)
    assert text.startswith("*filter\n:REPLIMESH-SWARM - [0:0]\n-A REPLIMESH-SWARM -i lo")
    assert text.endswith("-j DROP\nCOMMIT\n")


def test_only_active_operator_signed_peers_pass_the_firewall(tmp_path):
    from plugins.module_utils.replimesh import authorized_keys, swarm_firewall
    cfg = write_node(tmp_path, [
        {"name": "node1"}, {"name": "node2"}, {"name": "node3", "state": "removed"},
        {"name": "node4", "owner": "impostor"}, {"name": "node5", "owner": None}])[0]
    assert swarm_firewall.signed_peer_hosts(cfg) == []  # the keys user's copy: none yet
    os.makedirs(os.path.dirname(cfg.keys_copy), exist_ok=True)
    authorized_keys.take(cfg, membership.load(cfg))  # as at the next login
    assert swarm_firewall.signed_peer_hosts(cfg) == ["127.0.0.2"]
    # The sync user's list rolled back to an older signed one (node3 active) opens nothing.
    write_node(tmp_path, [{"name": "node1"}, {"name": "node2"}, {"name": "node3"}])
    assert swarm_firewall.signed_peer_hosts(cfg) == ["127.0.0.2"]
