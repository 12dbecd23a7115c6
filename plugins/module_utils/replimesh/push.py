"""A watcher's round for a few changed files, without Unison (`replimesh-push ROOT`).

Unison's session for one path still loads and saves the pair's whole archive and
costs time in proportion to the tree (about 1 s a session at 100k files). For the
files a watcher saw change, this node sends each file's content (or its deletion) with
the version it held before (its index at the round's start), and the peer puts it in
place only if what it holds now is that version, or one that the mesh's history says
went: a compare-and-swap per file, under the peer's replica lock. What the peer holds
otherwise (its own change: a conflict; a folder; a symlink), and what is too large for
one message, is left to a Unison session on those paths, which does what it always did.

Unison's archive of the pair does not hear of it: the next session of the two finds
both replicas changed in the same way, which Unison takes as nothing to do.

The peer reads the message as hostile input: bounded, every path checked (relative,
inside the replica, not in the backup area, no symlink on the way), every content
checked against its digest; what it replaces goes to the backup area, like Unison's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import stat
import time
from dataclasses import dataclass, field

from . import peer_input, peer_ssh, replica, replica_history, tree
from .config import Config
from .errors import ConfigError
from .history import History

VERB = "replimesh-push"
MAX_FILE_BYTES = 16 << 20    # a larger file goes by Unison (its transfer resumes, rsyncs)
MAX_BYTES = 64 << 20         # of content in one message
MAX_PATHS = 500
MAX_HEADER_BYTES = 4 << 20
MAX_ANSWER_BYTES = 1 << 20
_DIGEST = 64   # hex characters of a sha256


@dataclass
class Pushed:
    """What a push did with one peer."""
    done: list[str] = field(default_factory=list)   # the peer holds them as here now
    rest: list[str] = field(default_factory=list)   # left to a Unison session
    files: int = 0      # files the peer wrote or deleted
    bytes: int = 0
    duration: float = 0.0


def bases(cfg: Config, root: str, paths: list[str]) -> tree.Index:
    """The index entries of paths before the round walks them: what the peers are
    believed to hold (the version this node held before its change)."""
    with replica_history.index_of(cfg, root) as index:
        return index.get_many(paths) if index.walked() else {}


def deliver(cfg: Config, address: str, root: str, message: bytes, entries: list[dict],
            left: list[str]) -> Pushed:
    """Send a message of prepare() to the peer at address; what it did."""
    started = time.monotonic()
    pushed = Pushed(rest=list(left))
    if not entries:
        return pushed
    sent = {e["path"]: e for e in entries}

    def attempt(_left_s: float) -> object:
        said = peer_ssh.call(cfg, address, shlex.join([VERB, root]), message,
                             MAX_ANSWER_BYTES, "the peer's answer to a push", "push not taken")
        return peer_input.loads(peer_input.decode(said, "push answer"), "push answer")

    try:
        # A peer whose replica a session holds says busy: the same push again, as a
        # session would be tried again (a Unison session instead would not know what
        # this node held before its change).
        answer, _ = replica.while_busy(
            attempt, lambda said: isinstance(said, dict) and "busy" in said, cfg.lock_wait)
    except ConfigError:   # an older peer, a refusal, gone: all by Unison, which says why
        pushed.rest += list(sent)
        return pushed
    finally:
        pushed.duration = round(time.monotonic() - started, 2)
    if not isinstance(answer, dict):
        answer = {}
    done, written = answer.get("done"), answer.get("written")
    pushed.done = sorted({p for p in (done if isinstance(done, list) else [])
                          if isinstance(p, str) and p in sent})
    pushed.rest += [p for p in sent if p not in pushed.done]
    for path in set(written if isinstance(written, list) else []):
        if isinstance(path, str) and path in pushed.done:
            pushed.files += 1
            new = sent[path]["new"]
            pushed.bytes += new["size"] if new else 0
    return pushed


def prepare(root: str, paths: list[str], before: tree.Index) -> tuple[bytes, list[dict],
                                                                      list[str]]:
    """(The message pushing paths, its entries, the paths left to Unison)."""
    entries, contents, left, total = [], [], [], 0
    for path in paths[:MAX_PATHS]:
        entry, content = _entry(root, path, before.get(path), MAX_BYTES - total)
        if entry is None:
            left.append(path)
            continue
        entries.append(entry)
        contents.append(content)
        total += len(content)
    left += paths[MAX_PATHS:]
    header = json.dumps({"entries": entries}, separators=(",", ":")).encode() + b"\n"
    return header + b"".join(contents), entries, left


def _entry(root: str, path: str, before: list | None, room: int) -> tuple[dict | None, bytes]:
    """The message's entry for path and its content; None when Unison must sync it."""
    if before is not None and before[0] != tree.FILE:
        return None, b""
    base = None if before is None else {"size": before[1], "digest": before[5]}
    if not _plain_folders(root, path):
        return None, b""
    full = os.path.join(root, path)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {"path": path, "base": base, "new": None}, b""   # deleted
    except OSError:
        return None, b""   # a symlink, unreadable...
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_size > min(MAX_FILE_BYTES, room):
            return None, b""   # a folder, a device, too large
        chunks, got = [], 0
        while chunk := os.read(fd, min(1 << 20, status.st_size + 1 - got)):
            chunks.append(chunk)
            got += len(chunk)
            if got > status.st_size:
                break
        content = b"".join(chunks)
        after = os.fstat(fd)
    except OSError:
        return None, b""
    finally:
        os.close(fd)
    if len(content) != status.st_size or after.st_mtime_ns != status.st_mtime_ns:
        return None, b""   # being written: Unison's session, or the next round
    return {"path": path, "base": base,
            "new": {"size": len(content), "mtime": status.st_mtime_ns,
                    "mode": stat.S_IMODE(status.st_mode) & 0o777,
                    "digest": hashlib.sha256(content).hexdigest()}}, content


def _plain_folders(root: str, path: str) -> bool:
    """Whether every folder above path in root is a folder, not a symlink (or missing)."""
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        try:
            if not stat.S_ISDIR(os.lstat(os.path.join(root, *parts[:depth])).st_mode):
                return False
        except OSError:
            return False
    return True


# The peer's side.

@dataclass
class Change:
    path: str
    base: dict | None
    new: dict | None
    content: bytes = b""


def answer(cfg: Config, peer: str, root: str, fd: int) -> str:
    """Take a push from peer on stdin (fd) into root; the JSON answer. ConfigError when
    the message is malformed (nothing is written then)."""
    what = f"push from {peer}"
    data = peer_input.read(fd, MAX_HEADER_BYTES + MAX_BYTES, what)
    changes = parse(data, what)
    try:
        lock = replica.acquire(cfg, root, f"push from {peer}", replica.PEER_WAIT_S)
    except replica.Busy as busy:
        return json.dumps({"done": [], "busy": str(busy)})   # the pusher tries again
    try:
        observed = replica_history.observe(cfg, root, fresh_s=replica_history.FRESH_S)
        if observed.refusal:
            raise ConfigError(observed.refusal)
        replica_history.apply(cfg, root, observed)
        done, written = take(cfg, root, changes, observed.walk.files)
        if written:
            replica_history.observe_paths(cfg, root, written)
    finally:
        os.close(lock)
    return json.dumps({"done": done, "written": written})


def parse(data: bytes, what: str) -> list[Change]:
    """The changes of a push message; ConfigError saying what is wrong with it."""
    head, newline, rest = data.partition(b"\n")
    if not newline or len(head) > MAX_HEADER_BYTES:
        raise ConfigError(f"{what}: no header line")
    message = peer_input.loads(peer_input.decode(head, what), what)
    entries = message.get("entries") if isinstance(message, dict) else None
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_PATHS:
        raise ConfigError(f"{what}: entries must be a list of 1 to {MAX_PATHS}")
    changes, offset, seen = [], 0, set()
    for entry in entries:
        change = _change(entry, what)
        if change.path in seen:
            raise ConfigError(f"{what}: {change.path!r} comes twice")
        seen.add(change.path)
        if change.new is not None:
            size = change.new["size"]
            change.content = rest[offset:offset + size]
            offset += size
            if len(change.content) != size:
                raise ConfigError(f"{what}: the content of {change.path!r} is cut short")
        changes.append(change)
    if offset != len(rest):
        raise ConfigError(f"{what}: {len(rest) - offset} bytes beyond the contents named")
    return changes


def _change(entry, what: str) -> Change:
    if not isinstance(entry, dict) or set(entry) != {"path", "base", "new"}:
        raise ConfigError(f"{what}: an entry must have path, base and new")
    path, base, new = entry["path"], entry["base"], entry["new"]
    if not _valid_path(path):
        raise ConfigError(f"{what}: path {str(path)[:200]!r} is not a path in the replica")
    if base is not None and not (isinstance(base, dict) and set(base) == {"size", "digest"}
                                 and _size(base["size"]) and _digest(base["digest"])):
        raise ConfigError(f"{what}: the base of {path!r} is malformed")
    if new is not None and not (
            isinstance(new, dict) and set(new) == {"size", "mtime", "mode", "digest"}
            and _size(new["size"]) and new["size"] <= MAX_FILE_BYTES
            and isinstance(new["mtime"], int) and 0 <= new["mtime"] < 1 << 63
            and isinstance(new["mode"], int) and 0 <= new["mode"] <= 0o777
            and _digest(new["digest"])):
        raise ConfigError(f"{what}: the new content of {path!r} is malformed")
    return Change(path, base, new)


def _valid_path(path) -> bool:
    if not isinstance(path, str) or not 0 < len(path) <= 4096 or "\0" in path:
        return False
    parts = path.split("/")
    return (all(p not in ("", ".", "..") and len(p) <= 255 for p in parts)
            and not tree.ignored(path))


def _size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 50


def _digest(value) -> bool:
    return (isinstance(value, str) and len(value) == _DIGEST
            and all(c in "0123456789abcdef" for c in value))


def take(cfg: Config, root: str, changes: list[Change],
         files: int) -> tuple[list[str], list[str]]:
    """(the paths that now hold what the peer holds, those of them written here); the
    caller holds the replica's lock. files: the replica's count, for the deletion guard."""
    known: History | None = None
    done, accepted = [], []
    for change in changes:
        now = _held(root, change.path)
        if now is False:
            continue   # a folder, a symlink, a folder missing on the way: Unison
        sizes = {c["size"] for c in (change.base, change.new) if c}
        digest = _digest_of(root, change.path, now, sizes)
        if (change.new is None and now is None) or (change.new and \
                digest == change.new["digest"]):
            done.append(change.path)   # already so
            continue
        if change.new and hashlib.sha256(change.content).hexdigest() != change.new["digest"]:
            continue   # changed while it was sent: the next round
        if now is None:
            take_it = change.base is None
        else:
            take_it = change.base is not None and digest == change.base["digest"]
            if not take_it and now.st_size <= MAX_FILE_BYTES:
                # A version the mesh saw go is no change of this node's.
                known = replica_history.load(cfg, root) if known is None else known
                take_it = replica_history.dead(cfg, root, change.path, known)
        if take_it:
            accepted.append(change)
    gone = sum(1 for c in accepted if c.new is None)
    if gone and replica.check(cfg, root, files - gone + sum(1 for c in accepted if c.new)):
        accepted = [c for c in accepted if c.new is not None]   # the guard: by Unison
    written = []
    for change in accepted:
        try:
            _put(root, change)
        except OSError:
            continue
        written.append(change.path)
    return sorted(done + written), sorted(written)


def _held(root: str, path: str) -> os.stat_result | bool | None:
    """The status of the file path holds here, None if it holds none, False if it is
    something else or lies below something else than folders."""
    if not _plain_folders(root, path):
        return False
    full = os.path.join(root, path)
    try:
        status = os.lstat(full)
    except FileNotFoundError:
        return None if os.path.isdir(os.path.dirname(full)) else False
    except OSError:
        return False
    return status if stat.S_ISREG(status.st_mode) else False


def _digest_of(root: str, path: str, status: os.stat_result | None,
               sizes: set[int]) -> str | None:
    """The digest of the file held here, if its size is one of sizes (else it differs
    from all of them, and is not read)."""
    if status is None or status.st_size not in sizes:
        return None
    try:
        return tree.digest_of(os.path.join(root, path), tree.FILE)
    except OSError:
        return None


def _put(root: str, change: Change) -> None:
    """Write the change into the replica: the old file into the backup area first (a
    link: the path is never missing), the new one through a temporary name that the
    watchers and walks know as Unison's."""
    full = os.path.join(root, change.path)
    if change.new is None:
        replica.to_backup(root, change.path)
        return
    folder, name = os.path.split(full)
    temporary = os.path.join(
        folder, f"{tree.UNISON_TEMP}{name[:150]}.{secrets.token_hex(4)}{tree.UNISON_TEMP_END}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(change.content)
            out.flush()
            os.fchmod(out.fileno(), change.new["mode"])
            os.fsync(out.fileno())
            os.utime(out.fileno(), ns=(change.new["mtime"], change.new["mtime"]))
        if os.path.lexists(full):
            os.link(full, replica.backup_name(root, change.path))
        os.replace(temporary, full)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
