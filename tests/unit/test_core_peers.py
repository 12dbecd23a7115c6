"""The peer list: parsing, the rotated sync order, and the round trip to JSON."""

import json

import pytest

from plugins.module_utils.replimesh import peers
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.peers import Peer


def four(**states):
    return [Peer(f"node{i}", f"10.0.0.{i}", states.get(f"node{i}", "active"))
            for i in (1, 2, 3, 4)]


def names(peer_list):
    return [p.name for p in peer_list]


def test_parse_reads_entries_and_defaults_to_active():
    parsed = peers.parse({"peers": [{"name": "node1", "address": "10.0.0.1"},
                                    {"name": "node2", "address": "h2", "state": "removed"}]})
    assert parsed == [Peer("node1", "10.0.0.1", "active"), Peer("node2", "h2", "removed")]


@pytest.mark.parametrize("data, needle", [
    ([], "expected an object with a list 'peers'"),
    ({"peers": {}}, "expected an object with a list 'peers'"),
    ({"peers": ["node1"]}, "entry 1: expected an object"),
    ({"peers": [{"name": "-node", "address": "a"}]}, "name '-node' is not a host name"),
    ({"peers": [{"name": "no de", "address": "a"}]}, "is not a host name"),
    ({"peers": [{"address": "a"}]}, "name None is not a host name"),
    ({"peers": [{"name": "n", "address": ""}]}, "(n): address '' is not an address"),
    ({"peers": [{"name": "n", "address": "a b"}]}, "is not an address"),
    ({"peers": [{"name": "n", "address": "a", "state": "paused"}]},
     "state must be one of active, removed"),
    ({"peers": [{"name": "n", "address": "a"}, {"name": "n", "address": "b"}]},
     "n is listed twice"),
    ({"peers": [{"name": "m", "address": "a"}, {"name": "n", "address": "a"}]},
     "address a is listed twice"),
])
def test_bad_peer_list_is_refused_with_the_reason(data, needle):
    with pytest.raises(ConfigError) as caught:
        peers.parse(data, "peers.json")
    assert needle in str(caught.value)
    assert str(caught.value).startswith("peers.json: ")


def test_second_entry_is_numbered_in_the_error():
    with pytest.raises(ConfigError, match="entry 2"):
        peers.parse({"peers": [{"name": "a", "address": "x"}, {"name": "b"}]})


def test_removed_peer_may_share_an_address_with_an_active_one():
    parsed = peers.parse({"peers": [{"name": "old", "address": "a", "state": "removed"},
                                    {"name": "new", "address": "a"}]})
    assert names(parsed) == ["old", "new"]


@pytest.mark.parametrize("me, expected", [
    ("node1", ["node2", "node3", "node4"]),
    ("node2", ["node3", "node4", "node1"]),
    ("node3", ["node4", "node1", "node2"]),
    ("node4", ["node1", "node2", "node3"]),
])
def test_rotated_starts_after_my_own_name(me, expected):
    assert names(peers.rotated(four(), me)) == expected


def test_rotated_skips_removed_peers():
    assert names(peers.rotated(four(node3="removed"), "node1")) == ["node2", "node4"]


def test_rotated_ignores_list_order():
    assert names(peers.rotated(list(reversed(four())), "node3")) == ["node4", "node1", "node2"]


def test_no_two_nodes_hit_the_same_peer_first():
    firsts = [peers.rotated(four(), me)[0].name for me in names(four())]
    assert len(set(firsts)) == 4


def test_to_json_round_trips_through_parse():
    original = four(node2="removed")
    assert peers.parse(json.loads(json.dumps(peers.to_json(original)))) == original


def test_load_names_the_peer_list_in_its_errors(tmp_path):
    # The reading itself (missing file, bad JSON) is config.read_json's, tested there.
    with pytest.raises(ConfigError, match=r"^peer list .*peers.json does not exist: deploy"):
        peers.load(str(tmp_path / "peers.json"))


def test_load_reads_the_file(tmp_path):
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(peers.to_json(four())), encoding="utf-8")
    assert peers.load(str(path)) == four()
