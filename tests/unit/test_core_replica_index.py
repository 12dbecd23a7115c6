"""A replica's index in SQLite: entries by path (names need not be UTF-8), a folder's
entries as one range, counts, and a damaged file set aside rather than a stop."""

from plugins.module_utils.replimesh import replica_index, tree

ENTRIES = {
    "a": [tree.FOLDER, 0, 10, 0, 1, "dir"],
    "a/x": [tree.FILE, 3, 11, 11, 2, "d1"],
    "a/sub": [tree.FOLDER, 0, 12, 0, 3, "dir"],
    "a/sub/y": [tree.LINK, 4, 13, 13, 4, "d2"],
    "ab": [tree.FILE, 5, 14, 14, 5, "d3"],            # beside a, not below it
    "a.txt": [tree.FILE, 6, 15, 15, 6, "d4"],         # '.' sorts before '/'
    "\udcff-not-utf8": [tree.FILE, 7, 16, 16, 7, "d5"],
}


def test_what_is_put_is_read_back_by_path_by_range_and_whole(tmp_path):
    index = replica_index.Index(str(tmp_path / "i.sqlite"))
    assert not index.walked() and index.files() == 0
    index.replace(ENTRIES, 99)
    index.close()
    index = replica_index.Index(str(tmp_path / "i.sqlite"))
    assert index.walked() and index.root_mtime() == 99 and index.all() == ENTRIES
    assert index.files() == 5
    assert index.get("\udcff-not-utf8") == ENTRIES["\udcff-not-utf8"]
    assert index.get("missing") is None
    assert set(index.under(["a"])) == {"a", "a/x", "a/sub", "a/sub/y"}
    assert set(index.under(["a/sub", "ab"])) == {"a/sub", "a/sub/y", "ab"}
    assert index.get_many(["a/x", "nope", "ab"]) == {"a/x": ENTRIES["a/x"],
                                                     "ab": ENTRIES["ab"]}
    assert sorted(index.folders()) == [("a", 10), ("a/sub", 12)]
    index.update(["a/x", "ab"], {"a/new": [tree.FILE, 1, 20, 20, 9, "d6"]}, 100)
    assert set(index.under(["a"])) == {"a", "a/new", "a/sub", "a/sub/y"}
    assert index.get("ab") is None and index.root_mtime() == 100 and index.files() == 4
    index.close()


def test_a_damaged_index_is_set_aside_and_started_afresh(tmp_path):
    path = tmp_path / "i.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    index = replica_index.Index(str(path))
    assert not index.walked() and index.all() == {}
    index.replace(ENTRIES, 1)
    assert index.files() == 5
    index.close()
    assert (tmp_path / "i.sqlite.damaged").exists()


def test_the_file_count_follows_every_write_without_a_scan(tmp_path):
    index = replica_index.Index(str(tmp_path / "i.sqlite"))
    index.replace(ENTRIES, 1)
    counted = []
    index.db.set_trace_callback(counted.append)
    index.update(["a/x", "a"], {"a/x": [tree.FOLDER, 0, 30, 0, 2, "dir"],     # file -> folder
                                "a/sub": [tree.FILE, 1, 31, 31, 3, "d7"],     # folder -> file
                                "ab": [tree.FILE, 9, 32, 32, 5, "d8"],        # file, edited
                                "c": [tree.LINK, 2, 33, 33, 8, "d9"]})       # new
    assert index.files() == 6
    assert not [q for q in counted if "count(*)" in q]
    index.db.set_trace_callback(None)
    assert index.files() == index._count()


def test_an_index_of_the_release_before_counts_its_files_once(tmp_path):
    index = replica_index.Index(str(tmp_path / "i.sqlite"))
    index.replace(ENTRIES, 1)
    index.db.execute("DELETE FROM meta WHERE key = 'files'")   # as an older release left it
    assert index.files() == 5
    index.update(["ab"], {})
    assert index._meta("files") == 4 == index.files()
