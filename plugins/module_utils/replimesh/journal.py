"""The node's own logs under log_dir: one line per decision, with time and client address.

Messages carry text that peers chose (a requested root, a command, a name): every line
is escaped and bounded here, the one place that writes logs, so no peer can forge a
line, hide one behind terminal escapes or flood the disk with one long line.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

from .config import Config

MAX_LINE = 1000   # characters of a message, after escaping
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """text as one printable line of at most about limit characters: newlines, control
    characters, format characters (bidi overrides) and lone surrogates written the way
    repr() writes them (\\n, \\x1b, \\u202e, \\udcff), the rest cut off saying so."""
    head = text[:limit]  # escaping only lengthens: what is cut here is never shown
    if not head.isprintable():
        head = "".join(c if c.isprintable() else _escape(c) for c in head)
    if len(text) > limit or len(head) > limit:
        return f"{head[:limit]}... (cut: {len(text)} characters in all)"
    return head


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else (
        f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def path(cfg: Config, name: str) -> str:
    """The node's log of that name."""
    return os.path.join(cfg.log_dir, name)


def append(cfg: Config, name: str, line: str) -> None:
    write(path(cfg, name), line)


def write(log: str, line: str) -> None:
    """Add line to the log at that path, stamped with the time and the client address."""
    stamp = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    client = os.environ.get("SSH_CLIENT", "").split(" ")[0] or "-"
    try:
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{stamp} {one_line(client, 64)} {one_line(line)}\n")
    except OSError:
        print(f"replimesh: cannot write {log}", file=sys.stderr)
