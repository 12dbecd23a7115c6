"""The mesh-wide history: its merge is a join (commutative, associative, idempotent, so
the order in which histories reach a node never matters), expiry, and a peer's records
read as hostile input."""

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.module_utils.replimesh import history
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.history import DELETED, REPLACED, Fate, Version

NOW = 1_795_000_000
DIGEST = "ab" * 32

versions = st.builds(Version, st.sampled_from(["a", "d/b", "d", "c.txt"]),
                     st.sampled_from([DIGEST, "cd" * 32, "dir"]), st.integers(0, 3))
fates = st.builds(Fate, st.sampled_from([DELETED, REPLACED]), st.integers(0, 3),
                  st.sampled_from(["node1", "node2", "node3"]))
histories = st.dictionaries(versions, fates, max_size=8)


@given(histories, histories)
def test_merge_is_commutative(a, b):
    assert history.merge(a, b) == history.merge(b, a)


@given(histories, histories, histories)
def test_merge_is_associative(a, b, c):
    assert history.merge(history.merge(a, b), c) == history.merge(a, history.merge(b, c))


@given(histories, histories)
def test_merge_is_idempotent(a, b):
    assert history.merge(a, a) == a
    merged = history.merge(a, b)
    assert history.merge(merged, b) == merged


@given(st.lists(histories, min_size=1, max_size=5), st.data())
def test_order_of_arrival_never_matters(received, data):
    shuffled = data.draw(st.permutations(received))
    assert reduce(history.merge, received, {}) == reduce(history.merge, shuffled, {})


@given(histories, histories)
def test_merge_keeps_every_version_and_newer_says_what_changes(a, b):
    merged = history.merge(a, b)
    assert set(merged) == set(a) | set(b)
    assert history.merge(a, history.newer(a, b)) == merged
    assert history.newer(merged, b) == {}


def test_a_deletion_outranks_a_replacement_of_the_same_version():
    version = Version("a", DIGEST, 5)
    deleted, replaced = Fate(DELETED, 1, "node1"), Fate(REPLACED, 9, "node2")
    assert history.merge({version: replaced}, {version: deleted}) == {version: deleted}


def test_expiry_drops_what_the_backup_areas_no_longer_hold_and_bounds_the_count(monkeypatch):
    old, young = Version("old", DIGEST, 1), Version("young", DIGEST, 1)
    kept = history.expire({old: Fate(DELETED, NOW - 15 * 86400, "n"),
                           young: Fate(DELETED, NOW - 13 * 86400, "n")}, NOW, 14)
    assert list(kept) == [young]
    monkeypatch.setattr(history, "MAX_RECORDS", 2)
    many = {Version(f"p{i}", DIGEST, 1): Fate(DELETED, NOW - i, "n") for i in range(5)}
    assert sorted(v.path for v in history.expire(many, NOW, 14)) == ["p0", "p1"]


def test_deletions_come_deepest_first():
    records = {Version(p, "dir" if p in ("d", "d/e") else DIGEST, 0): Fate(DELETED, 1, "n")
               for p in ("d", "d/e", "d/e/f", "a")}
    records[Version("r", DIGEST, 0)] = Fate(REPLACED, 1, "n")
    assert [v.path for v, _ in history.deletions(records)] == ["d/e/f", "d/e", "a", "d"]


def test_records_survive_a_round_trip_through_json():
    records = {Version("d/a.txt", DIGEST, 7): Fate(DELETED, NOW, "node2"),
               Version("d", "dir", 0): Fate(REPLACED, NOW, "node1")}
    assert history.parse(history.to_json(records), "test", NOW) == records


@pytest.mark.parametrize("record, needle", [
    ("x", "expected [path, digest, mtime, kind, node, time]"),
    (["a", DIGEST, 1, DELETED, "n"], "expected [path"),
    (["../etc/passwd", DIGEST, 1, DELETED, "n", NOW], "is not a clean relative path"),
    (["/etc/passwd", DIGEST, 1, DELETED, "n", NOW], "is not a clean relative path"),
    (["a/../../b", DIGEST, 1, DELETED, "n", NOW], "is not a clean relative path"),
    (["a\nforged log line", DIGEST, 1, DELETED, "n", NOW], "is not a clean relative path"),
    (["", DIGEST, 1, DELETED, "n", NOW], "is not a clean relative path"),
    (["a" * 5000, DIGEST, 1, DELETED, "n", NOW], "is not a clean relative path"),
    (["a", "xyz", 1, DELETED, "n", NOW], "digest must be"),
    (["a", DIGEST, "1", DELETED, "n", NOW], "mtime must be"),
    (["a", DIGEST, True, DELETED, "n", NOW], "mtime must be"),
    (["a", DIGEST, 1, "erased", "n", NOW], "kind must be"),
    (["a", DIGEST, 1, DELETED, "bad name!", NOW], "node must be"),
    (["a", DIGEST, 1, DELETED, "n", NOW + 2 * 86400], "dated in the future"),
])
def test_a_malformed_record_is_refused_naming_it(record, needle):
    with pytest.raises(ConfigError) as error:
        history.parse([record], "history from node2", NOW)
    assert str(error.value).startswith("history from node2: record 1: ")
    assert needle in str(error.value)
    assert "\n" not in str(error.value)


def test_too_many_records_are_refused(monkeypatch):
    monkeypatch.setattr(history, "MAX_RECORDS", 3)
    record = ["a", DIGEST, 1, DELETED, "n", NOW]
    with pytest.raises(ConfigError, match="4 records, more than 3"):
        history.parse([record] * 4, "history from node2", NOW)
    with pytest.raises(ConfigError, match="expected a list of records"):
        history.parse({"a": 1}, "history from node2", NOW)
