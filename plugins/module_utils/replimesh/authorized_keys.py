"""What sshd asks to learn which keys may log in as the sync user (AuthorizedKeysCommand).

sshd runs `replimesh-authorized-keys %u` as a user of its own (the keys user), never as
the sync user, so a compromised sync user can neither write the keys sshd trusts nor roll
a removed node back. The sync user's peer list (kept up to date by the exchanges of every
session) is read as hostile input: bounded, any shape refused in one line. Its entries
that differ from the keys user's own copy are checked against the operator's signature,
joined into that copy (highest version per name, so an old signed list brings no removed
node back), and the active peers of the copy are printed, each forced to `replimesh
serve`. A connection with nothing new costs no ssh-keygen call.

`replimesh-authorized-keys --seed FILE|-` joins the deploy's signed list into the copy
the same way (the deploy runs it as the keys user). What it prints for the sync user is
kept for keys_given, which prints it again while nothing it came from changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys
from typing import Any

from . import config as node_config
from . import keys_given, peer_input, signature, state
from . import peers as peer_list
from .config import Config
from .errors import ReplimeshError
from .peers import Peers

# A peer list of a few thousand nodes fits; anything larger is refused unread.
MAX_LIST_BYTES = 4 << 20
# Signature checks one call may make: a list stuffed with bogus entries costs a login a
# bounded time (the rest wait for later calls, or are refused by then).
MAX_VERIFY = 64
EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
CODE = os.path.dirname(os.path.abspath(__file__))   # a new deploy of it renames files in


def read_bounded(path: str, limit: int | None = None) -> Any:
    """JSON of a file someone else controls: no link, regular file, at most limit bytes."""
    limit = MAX_LIST_BYTES if limit is None else limit
    try:
        found, data = keys_given.read_regular(path, limit)
    except OSError as error:
        raise ReplimeshError(f"cannot open {path}: {error.strerror}") from None
    if not stat.S_ISREG(found.st_mode):
        raise ReplimeshError(f"{path} is not a regular file")
    if len(data) > limit:
        raise ReplimeshError(f"{path} is larger than {limit} bytes")
    return parse_json(data, path)


def parse_json(data: bytes, origin: str) -> Any:
    return peer_input.loads(peer_input.decode(data, origin), origin)


def join_signed(cfg: Config, mine: Peers, offered: Peers) -> tuple[Peers, list[str]]:
    """mine joined with the entries of offered that would change it and carry the
    operator's signature (at most MAX_VERIFY checked); and the names refused."""
    good, refused = {}, []
    for name, entry in sorted(peer_list.newer(mine, offered).items())[:MAX_VERIFY]:
        if signature.verify(cfg.operator_signers, peer_list.payload(entry), entry.signature):
            good[name] = entry
        else:
            refused.append(name)
    return peer_list.merge(mine, good), refused


def lines(cfg: Config, peers: Peers) -> str:
    """Each other active node's key, allowed to run only `replimesh serve --peer NAME`."""
    return "".join(
        f'restrict,command="{cfg.command} serve --peer {e.name}" {e.ssh_key} '
        f"{cfg.user}@{e.name}\n"
        for e in (peers[n] for n in sorted(peers)) if e.active and e.name != cfg.node)


def take(cfg: Config, offered: Peers) -> tuple[Peers, list[str], list[str], str]:
    """Join offered into the keys user's copy, under its lock; (copy, changed, refused,
    the identity of the copy's file as it holds that copy)."""
    with open(cfg.keys_copy + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mine = load_copy(cfg)
        joined, refused = join_signed(cfg, mine, offered)
        changed = sorted(n for n in joined if mine.get(n) != joined[n])
        if changed:
            state.write_json(cfg.keys_copy, peer_list.to_json(joined))
        held = keys_given.identity(cfg.keys_copy)
    return joined, changed, refused, held


def load_copy(cfg: Config) -> Peers:
    """The keys user's copy: only entries whose signature was checked, never rolled back."""
    if not os.path.exists(cfg.keys_copy):
        return {}
    return peer_list.parse(read_bounded(cfg.keys_copy), cfg.keys_copy)


def keep(given: str, user: str, sources: dict[str, str], text: str) -> None:
    """Keep text for keys_given: a cache, so one that cannot be written is left out."""
    head = keys_given.header(user, sources)
    if head is not None:
        with contextlib.suppress(OSError):
            state.write_text(given, head + text)


def main(argv: list[str] | None = None, given: str | None = None) -> int:
    """given: where to keep what is printed for the sync user (keys_given)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config_path = node_config.path_in_use()
        sources = {config_path: keys_given.identity(config_path)}   # before it is read
        cfg = node_config.load(config_path)
        if argv[:1] == ["--seed"] and len(argv) == 2:
            source = argv[1]
            data = (parse_json(sys.stdin.buffer.read(MAX_LIST_BYTES + 1), "stdin")
                    if source == "-" else read_bounded(source))
            _, changed, refused, _ = take(cfg, peer_list.parse(data, source))
            print(json.dumps({"changed": changed, "refused": refused}))
            return EXIT_REFUSED if refused else EXIT_OK
        if len(argv) != 1 or argv[0].startswith("-"):
            print("usage: replimesh-authorized-keys USER | --seed FILE|-", file=sys.stderr)
            return EXIT_USAGE
        if argv[0] != cfg.user:
            return EXIT_OK   # keys of other users are not ours to give
        sources.update((path, keys_given.identity(path)) for path in (cfg.peers_file, CODE))
        offered = peer_list.parse(read_bounded(cfg.peers_file), cfg.peers_file)
        joined, _, refused, sources[cfg.keys_copy] = take(cfg, offered)
        if refused:
            print(f"replimesh-authorized-keys: {len(refused)} entries of {cfg.peers_file} "
                  f"are not signed by the operator ({', '.join(refused[:5])}): ignored",
                  file=sys.stderr)
        text = lines(cfg, joined)
        sys.stdout.write(text)
        if given and not refused:   # refused ones are checked again at the next login
            keep(given, cfg.user, sources, text)
        return EXIT_OK
    except ReplimeshError as error:
        why = str(error)
    except OSError as error:   # the copy's folder: run as the keys user only
        why = f"{error.filename}: {error.strerror}"
    except Exception as error:  # sshd's log gets one line, never a traceback
        why = f"{type(error).__name__}: {error}"
    # One line whatever the list held (sshd logs it): control characters escaped.
    print(f"replimesh-authorized-keys: {json.dumps(why[:300])[1:-1]}: no keys given",
          file=sys.stderr)
    return EXIT_REFUSED
