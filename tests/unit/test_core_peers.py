"""The peer list: parsing, how lists merge, the rotated sync order, and JSON round trips."""

import json
from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.module_utils.replimesh import peers
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.peers import ACTIVE, REMOVED, Entry

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIabc+/="


def item(name="n1", **fields):
    """One entry as JSON, valid unless fields say otherwise."""
    return {"name": name, "addresses": [f"127.0.0.{name[-1]}"], "ssh_key": KEY,
            "host_keys": [KEY], "state": ACTIVE, "version": 1, "signature": "sig", **fields}


def listed(*items):
    return {"format": 2, "peers": list(items)}


def plain(name, version=1, state=ACTIVE, address=None, signature=""):
    if state == REMOVED:
        return Entry(name, (), "", (), REMOVED, version, signature)
    return Entry(name, (address or f"127.0.0.{name[-1]}",), KEY, (KEY,), state, version,
                 signature)


def four(**states):
    return {f"node{i}": plain(f"node{i}", state=states.get(f"node{i}", ACTIVE))
            for i in (1, 2, 3, 4)}


def names(entries):
    return [e.name for e in entries]


# Parsing


def test_parse_reads_every_field():
    parsed = peers.parse(listed(item("n1"), item("n2", state=REMOVED, addresses=[],
                                                 ssh_key="", host_keys=[], version=7)))
    assert parsed == {"n1": Entry("n1", ("127.0.0.1",), KEY, (KEY,), ACTIVE, 1, "sig"),
                      "n2": Entry("n2", (), "", (), REMOVED, 7, "sig")}


def test_signature_is_optional_in_the_json():
    data = item()
    del data["signature"]
    assert peers.parse(listed(data))["n1"].signature == ""


BAD_SHAPE = "expected an object with \"format\": 2 and a list 'peers'"


@pytest.mark.parametrize("data, needle", [
    ([], BAD_SHAPE),
    ({"peers": []}, BAD_SHAPE),                                   # format 1
    ({"format": 1, "peers": []}, BAD_SHAPE),
    ({"format": 2, "peers": {}}, BAD_SHAPE),
    (listed("n1"), "entry 1: expected an object"),
    (listed(item("-node")), "entry 1: name '-node' is not a host name"),
    (listed(item("no de")), "is not a host name"),
    (listed({**item(), "name": None}), "name None is not a host name"),
    (listed({**item(), "name": "n1\n"}), "name 'n1\\n' is not a host name"),
    (listed(item(ssh_key=KEY + "\n")), "(n1): ssh_key must be"),
    (listed(item(state="paused")), "entry 1 (n1): state must be one of active, removed"),
    (listed(item(version=-1)), "(n1): version must be a non-negative integer"),
    (listed(item(version=True)), "version must be a non-negative integer"),
    (listed(item(version="3")), "version must be a non-negative integer"),
    (listed(item(addresses="127.0.0.1")), "(n1): addresses must be a list of addresses"),
    (listed(item(addresses=[""])), "addresses must be a list of addresses"),
    (listed(item(addresses=["a b"])), "addresses must be a list of addresses"),
    (listed(item(addresses=["a,b"])), "addresses must be a list of addresses"),
    (listed(item(addresses=[1])), "addresses must be a list of addresses"),
    (listed(item(host_keys=KEY)), "(n1): host_keys must be a list of \"type base64\" keys"),
    (listed(item(host_keys=["ssh-dss AAAA"])), "host_keys must be a list"),
    (listed(item(host_keys=[KEY + " comment"])), "host_keys must be a list"),
    (listed(item(ssh_key=None)), "(n1): ssh_key must be a \"type base64\" key"),
    (listed(item(ssh_key="AAAA")), "ssh_key must be a \"type base64\" key"),
    (listed(item(ssh_key="")), "(n1): an active entry needs addresses, ssh_key and host_keys"),
    (listed(item(addresses=[])), "an active entry needs addresses, ssh_key and host_keys"),
    (listed(item(host_keys=[])), "an active entry needs addresses, ssh_key and host_keys"),
    (listed(item(signature=1)), "(n1): signature must be a string"),
    (listed(item(colour="red", size=1)), "(n1): unknown field(s) colour, size"),
    (listed(item("n1"), item("n1", version=2)), "n1 is listed twice"),
    (listed(item("m1"), item("n1", addresses=["127.0.0.1"])),
     "address 127.0.0.1 is listed for both m1 and n1"),
])
def test_bad_peer_list_is_refused_with_the_reason(data, needle):
    with pytest.raises(ConfigError) as caught:
        peers.parse(data, "peers.json")
    assert needle in str(caught.value)
    assert str(caught.value).startswith("peers.json: ")


def test_second_entry_is_numbered_in_the_error():
    with pytest.raises(ConfigError, match=r"entry 2 \(n2\)"):
        peers.parse(listed(item("n1"), item("n2", version=None)))


def test_removed_entry_may_keep_an_address_an_active_one_took_over():
    parsed = peers.parse(listed(item("old1", state=REMOVED), item("new1")))
    assert sorted(parsed) == ["new1", "old1"]


def test_a_removed_entry_may_keep_its_keys():
    assert not peers.parse(listed(item(state=REMOVED)))["n1"].active


# Merging: the same result whatever the order lists arrive in

NAMES = ("n1", "n2", "n3")
entries = st.builds(
    Entry, name=st.sampled_from(NAMES),
    addresses=st.sampled_from([(), ("127.0.0.1",), ("127.0.0.2", "127.0.1.2")]),
    ssh_key=st.sampled_from(["", KEY]), host_keys=st.sampled_from([(), (KEY,)]),
    state=st.sampled_from([ACTIVE, REMOVED]), version=st.integers(0, 3),
    signature=st.sampled_from(["", "sig-a", "sig-b"]))
lists = st.lists(entries, max_size=6).map(lambda found: {e.name: e for e in found})


@given(lists, lists)
def test_merge_is_commutative(a, b):
    assert peers.merge(a, b) == peers.merge(b, a)


@given(lists, lists, lists)
def test_merge_is_associative(a, b, c):
    assert peers.merge(peers.merge(a, b), c) == peers.merge(a, peers.merge(b, c))


@given(lists, lists)
def test_merge_is_idempotent(a, b):
    assert peers.merge(a, a) == a
    merged = peers.merge(a, b)
    assert peers.merge(merged, b) == merged
    assert peers.merge(merged, a) == merged


@given(st.lists(lists, min_size=1, max_size=5), st.data())
def test_order_of_arrival_never_matters(received, data):
    in_order = reduce(peers.merge, received, {})
    shuffled = data.draw(st.permutations(received))
    assert reduce(peers.merge, shuffled, {}) == in_order


@given(st.lists(lists, max_size=5))
def test_merge_keeps_every_name_and_its_highest_version(received):
    merged = reduce(peers.merge, received, {})
    copies = [e for found in received for e in found.values()]
    assert set(merged) == {e.name for e in copies}
    for name, kept in merged.items():
        assert kept in copies
        assert kept.version == max(e.version for e in copies if e.name == name)


@given(entries, entries)
def test_a_tombstone_beats_an_active_entry_no_newer_than_itself(a, b):
    tombstone = Entry(a.name, (), "", (), REMOVED, max(a.version, b.version), a.signature)
    stale = Entry(a.name, b.addresses, KEY, (KEY,), ACTIVE, b.version % (tombstone.version + 1),
                  b.signature)
    assert peers.winner(tombstone, stale) is tombstone
    assert peers.winner(stale, tombstone) is tombstone


@given(lists, st.integers(0, 3))
def test_a_stale_active_copy_never_resurrects_a_removed_node(others, version):
    tombstone = {"n1": plain("n1", version=3, state=REMOVED)}
    stale = {**others, "n1": plain("n1", version=version)}
    for merged in (peers.merge(tombstone, stale), peers.merge(stale, tombstone)):
        assert not merged["n1"].active


def test_a_newer_active_entry_brings_a_removed_node_back():
    back = plain("n1", version=4)
    assert peers.merge({"n1": plain("n1", version=3, state=REMOVED)}, {"n1": back}) == \
        {"n1": back}


def test_the_highest_version_wins():
    old, new = plain("n1", version=1, address="127.0.0.1"), plain("n1", version=2,
                                                                    address="127.0.0.9")
    assert peers.winner(old, new) is new
    assert peers.winner(new, old) is new


@given(entries, entries)
def test_ties_are_broken_the_same_way_whatever_the_order(a, b):
    b = Entry(a.name, b.addresses, b.ssh_key, b.host_keys, b.state, a.version, b.signature)
    assert peers.winner(a, b) == peers.winner(b, a)


def test_a_tie_between_two_active_entries_has_one_winner_everywhere():
    a = plain("n1", version=5, address="127.0.0.1", signature="x")
    b = plain("n1", version=5, address="127.0.0.2", signature="y")
    assert peers.winner(a, b) is b and peers.winner(b, a) is b  # larger canonical text


# newer(): what would change my list


def test_newer_lists_unknown_names_and_winning_entries_only():
    mine = {"n1": plain("n1", version=2), "n2": plain("n2", version=2)}
    theirs = {"n1": plain("n1", version=1), "n2": plain("n2", version=3),
              "n3": plain("n3", version=0)}
    assert peers.newer(mine, theirs) == {"n2": theirs["n2"], "n3": theirs["n3"]}


def test_newer_leaves_out_an_identical_entry():
    mine = four()
    assert peers.newer(mine, dict(mine)) == {}


@given(lists, lists)
def test_newer_is_exactly_what_merge_would_take(mine, theirs):
    fresh = peers.newer(mine, theirs)
    assert peers.merge(mine, fresh) == peers.merge(mine, theirs)
    assert all(peers.merge(mine, {n: e})[n] != mine.get(n) for n, e in fresh.items())
    assert peers.newer(peers.merge(mine, theirs), theirs) == {}


# The signed bytes


def test_payload_is_canonical_json_of_the_body_without_the_signature():
    entry = plain("n1", version=3, signature="whatever")
    assert json.loads(peers.payload(entry)) == {
        "name": "n1", "addresses": ["127.0.0.1"], "ssh_key": KEY, "host_keys": [KEY],
        "state": "active", "version": 3}
    assert peers.payload(entry) == peers.payload(plain("n1", version=3, signature="other"))
    assert b" " not in peers.payload(entry).replace(KEY.encode(), b"")


@pytest.mark.parametrize("change", [
    {"name": "n2"}, {"addresses": ("127.0.0.9",)}, {"ssh_key": KEY + "A"},
    {"host_keys": ()}, {"state": REMOVED}, {"version": 2}])
def test_payload_changes_with_every_signed_field(change):
    entry = plain("n1")
    assert peers.payload(Entry(**{**vars(entry), **change})) != peers.payload(entry)


# The rotated sync order


@pytest.mark.parametrize("me, expected", [
    ("node1", ["node2", "node3", "node4"]),
    ("node2", ["node3", "node4", "node1"]),
    ("node3", ["node4", "node1", "node2"]),
    ("node4", ["node1", "node2", "node3"]),
    ("node0", ["node1", "node2", "node3", "node4"]),   # not in the list itself
])
def test_rotated_starts_after_my_own_name(me, expected):
    assert names(peers.rotated(four(), me)) == expected


def test_rotated_skips_removed_peers():
    assert names(peers.rotated(four(node3=REMOVED), "node1")) == ["node2", "node4"]


def test_rotated_ignores_insertion_order():
    reverse = dict(reversed(list(four().items())))
    assert names(peers.rotated(reverse, "node3")) == ["node4", "node1", "node2"]


def test_no_two_nodes_hit_the_same_peer_first():
    firsts = [peers.rotated(four(), me)[0].name for me in four()]
    assert len(set(firsts)) == 4


# JSON


def test_to_json_round_trips_through_parse():
    original = four(node2=REMOVED)
    assert peers.parse(json.loads(peers.dumps(original))) == original


def test_dumps_is_sorted_whatever_the_insertion_order():
    original = four(node2=REMOVED)
    text = peers.dumps(original)
    assert text == peers.dumps(dict(reversed(list(original.items()))))
    assert [e["name"] for e in json.loads(text)["peers"]] == sorted(original)
    assert json.loads(text)["format"] == 2
    assert text.endswith("}\n")


@pytest.mark.parametrize("entry, line", [
    (Entry("n1", ("127.0.0.1", "127.0.1.1"), KEY, (KEY,), ACTIVE, 12), "n1 v12 active "
                                                                         "127.0.0.1,127.0.1.1"),
    (plain("n3", version=2, state=REMOVED), "n3 v2 removed -"),
])
def test_describe_is_one_line(entry, line):
    assert peers.describe(entry) == line
