"""A replica's index (tree.Index: path -> [kind, size, mtime_ns, ctime_ns, inode, digest])
kept in SQLite in replica_dir: a walk of a few paths reads and writes their rows only,
where one JSON file had to be read and written whole (0.6 s at 100k files).

Written under the replica's lock only; read by a walk, by the history's deletions and by
the watcher's check of what a session may have done. Paths are stored as the bytes of
the file name (names need not be UTF-8), so a folder's rows are one range: those from
"folder/" up to "folder0" ('0' follows '/'). A damaged file is set aside and started
afresh: the next walk is a whole one, never a reason to stop syncing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator

from . import tree

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (path BLOB PRIMARY KEY, kind TEXT NOT NULL,
    size INTEGER, mtime INTEGER, ctime INTEGER, inode INTEGER, digest TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);
"""
_COLUMNS = "path, kind, size, mtime, ctime, inode, digest"
_CHUNK = 500   # paths per query


class Index:
    """One replica's index, open."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.db = self._open()
        except sqlite3.DatabaseError:
            with contextlib.suppress(OSError):
                os.replace(path, path + ".damaged")
            self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    def walked(self) -> bool:
        """Whether a whole walk ever filled it (an empty index is not an empty replica)."""
        return self._meta("walked") == 1

    def root_mtime(self) -> int:
        return self._meta("root_mtime") or 0

    def files(self) -> int:
        """Regular files and symlinks: what the deletion guard counts. Kept in meta by
        every write, since counting them scans the whole table (30 ms at 300k files,
        twice in a one-file round); an index of an older release counts once."""
        kept = self._meta("files")
        return self._count() if kept is None else kept

    def _count(self) -> int:
        return self.db.execute("SELECT count(*) FROM entries WHERE kind != ?",
                               (tree.FOLDER,)).fetchone()[0]

    def get(self, path: str) -> list | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM entries WHERE path = ?",
                              (os.fsencode(path),)).fetchone()
        return None if row is None else _entry(row)

    def get_many(self, paths: Iterable[str]) -> tree.Index:
        """The entries of those of paths that it holds."""
        keys = sorted({os.fsencode(p) for p in paths})
        found: tree.Index = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            found.update(self._rows("SELECT {} FROM entries WHERE path IN "
                                    f"({','.join('?' * len(chunk))})", tuple(chunk)))
        return found

    def all(self) -> tree.Index:
        return dict(self._rows("SELECT {} FROM entries", ()))

    def under(self, tops: Iterable[str]) -> tree.Index:
        """The entries of tops and of what lies below them."""
        found: tree.Index = {}
        for top in tops:
            key = os.fsencode(top)
            found.update(self._rows("SELECT {} FROM entries WHERE path = ? OR "
                                    "(path >= ? AND path < ?)", (key, key + b"/", key + b"0")))
        return found

    def folders(self) -> list[tuple[str, int]]:
        """(path, mtime) of every folder in it."""
        return [(path, entry[2]) for path, entry in
                self._rows("SELECT {} FROM entries WHERE kind = ?", (tree.FOLDER,))]

    def replace(self, index: tree.Index, root_mtime: int) -> None:
        """What a whole walk found."""
        with self._transaction():
            self.db.execute("DELETE FROM entries")
            self.db.executemany(f"INSERT INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                                (_row(p, e) for p, e in index.items()))
            self._set_meta("walked", 1)
            self._set_meta("root_mtime", root_mtime)
            self._set_meta("files", tree.files_among(index.values()))

    def update(self, removed: Iterable[str], entries: tree.Index,
               root_mtime: int | None = None) -> None:
        """What a walk of some paths found: removed go, entries are set."""
        removed = list(removed)
        with self._transaction():
            kept = self._meta("files")
            if kept is not None:   # less the files these rows were, plus what they are
                kept += tree.files_among(entries.values()) - tree.files_among(
                    self.get_many([*removed, *entries]).values())
            self.db.executemany("DELETE FROM entries WHERE path = ?",
                                ((os.fsencode(p),) for p in removed))
            self.db.executemany(f"INSERT OR REPLACE INTO entries ({_COLUMNS}) "
                                "VALUES (?,?,?,?,?,?,?)",
                                (_row(p, e) for p, e in entries.items()))
            if root_mtime is not None:
                self._set_meta("root_mtime", root_mtime)
            self._set_meta("files", self._count() if kept is None else kept)

    def _rows(self, query: str, arguments: tuple) -> Iterator[tuple[str, list]]:
        for row in self.db.execute(query.format(_COLUMNS), arguments):
            yield os.fsdecode(row[0]), _entry(row)

    def _meta(self, key: str) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def _row(path: str, entry: list) -> tuple:
    return (os.fsencode(path), *entry)


def _entry(row: tuple) -> list:
    return list(row[1:])
