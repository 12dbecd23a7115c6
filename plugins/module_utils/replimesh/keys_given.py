"""What sshd was last given for the sync user's keys, given again at once while nothing
it came from has changed: the front of `replimesh-authorized-keys`.

sshd runs the keys command twice per login (to test the key, then with its signature).
The full command (authorized_keys) loads the config and both peer lists, about 60 ms of
Python each time: most of a login's cost, paid by every peer at once when a round opens
its connections. So what it printed is kept, after a header naming every file it came
from (the config, the keys user's copy, the sync user's list, the code) with their
identity (device, inode, size, modification time) taken before it read them; while
every one is unchanged, the same lines are printed, nothing parsed. Only os, stat and
sys are imported here: json alone costs 10 ms.

The kept file is the keys user's, in its own folder, and one owned by anybody else, or
writable by others, is not used. Its lines are always those of the keys user's checked
copy: the sync user can make them be computed again (by changing its list), never make
them say something else.
"""

from __future__ import annotations

import os
import stat
import sys

FORMAT = "replimesh-authorized-keys given 1"
MAX_BYTES = 4 << 20
ENVIRONMENT = "REPLIMESH_CONFIG"   # where the config is, when not its default path


def main(given: str, argv: list[str] | None = None) -> int:
    """sshd's call for the keys of a user: the kept lines if they hold, else the full
    command, which keeps what it prints in given."""
    argv = sys.argv[1:] if argv is None else argv
    text = lookup(given, argv)
    if text is not None:
        sys.stdout.write(text)
        return 0
    from .authorized_keys import main as compute  # only when needed: it costs 60 ms

    return compute(argv, given=given)


def header(user: str, sources: dict[str, str]) -> str | None:
    """What the lines computed for user hold for: sources, {path: its identity() taken
    before it was read}. None when a path cannot be written in it (nothing is kept)."""
    if any("\t" in path or "\n" in path for path in sources) or "\n" in user \
            or "\n" in _environment():
        return None
    return "".join(f"{line}\n" for line in (
        FORMAT, user, _environment(),
        *(f"{path}\t{known}" for path, known in sources.items()))) + "\n"


def lookup(given: str, argv: list[str]) -> str | None:
    """The kept lines for argv's user, if every file they came from is unchanged."""
    if len(argv) != 1 or argv[0].startswith("-"):
        return None
    text = _read(given)
    if text is None:
        return None
    head, blank, lines = text.partition("\n\n")
    fields = head.split("\n")
    if not blank or fields[:3] != [FORMAT, argv[0], _environment()]:
        return None
    for field in fields[3:]:
        path, tab, known = field.partition("\t")
        if not tab or identity(path) != known:
            return None
    return lines


def _environment() -> str:
    """The config's path as the environment gives it, on a line never empty (an empty
    line ends the header)."""
    return f"{ENVIRONMENT}={os.environ.get(ENVIRONMENT, '')}"


def identity(path: str) -> str:
    try:
        found = os.stat(path)
    except OSError:
        return "-"
    return f"{found.st_dev}:{found.st_ino}:{found.st_size}:{found.st_mtime_ns}"


def read_regular(path: str, limit: int) -> tuple[os.stat_result, bytes]:
    """A file someone else may control, not through a link, and without blocking on a
    fifo: its status and, when it is a regular file, at most limit + 1 bytes of it (so
    that the caller sees it is too large). OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(fd)
        return found, handle.read(limit + 1) if stat.S_ISREG(found.st_mode) else b""


def _read(given: str) -> str | None:
    """The kept file, if it is this user's own regular file that no one else can write."""
    try:
        found, data = read_regular(given, MAX_BYTES)
    except OSError:
        return None
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid() \
            or found.st_mode & 0o022 or len(data) > MAX_BYTES:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
