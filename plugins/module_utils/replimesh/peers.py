"""The peer list: a set of signed entries keyed by node name, and how two lists merge.

Each entry says where a node is (addresses), which key it syncs with, which host key it
answers with, whether it is active or removed, and carries a version and the operator's
signature over all of that. Merge keeps the winning entry per name (highest version;
ties broken deterministically), so it is commutative, associative and idempotent: every
node ends with the same list whatever the order in which lists reach it. Removed entries
are tombstones that are kept, so a stale copy can never bring a removed node back.

Pure functions only: signatures are checked by membership.py, made by controller.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import joins, peer_input
from .errors import ConfigError

ACTIVE, REMOVED = "active", "removed"
STATES = (ACTIVE, REMOVED)
FORMAT = 2
# A node name; \Z, not $: $ lets a trailing newline through.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+\Z")
_SIGNED_FIELDS = ("name", "addresses", "ssh_key", "host_keys", "state", "version")


@dataclass(frozen=True)
class Entry:
    name: str
    addresses: tuple[str, ...]
    ssh_key: str                 # "type base64" of the node's sync key ("" once removed)
    host_keys: tuple[str, ...]   # "type base64" of the node's SSH host key(s)
    state: str = ACTIVE
    version: int = 0
    signature: str = ""          # ssh-keygen -Y sign over payload(entry), armored

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def body(self) -> dict:
        """The signed content, without the signature."""
        return {"name": self.name, "addresses": list(self.addresses), "ssh_key": self.ssh_key,
                "host_keys": list(self.host_keys), "state": self.state,
                "version": self.version}

    def as_dict(self) -> dict:
        return {**self.body(), "signature": self.signature}


Peers = dict[str, Entry]  # name -> entry


def payload(entry: Entry) -> bytes:
    """The exact bytes the operator signs: canonical JSON of the entry's body."""
    return json.dumps(entry.body(), sort_keys=True, separators=(",", ":")).encode()


def _rank(entry: Entry) -> tuple:
    # Highest version wins; at equal versions a tombstone wins (the safe side), then the
    # larger canonical text, so that any two copies agree whatever their order.
    return (entry.version, entry.state == REMOVED, payload(entry), entry.signature)


def winner(a: Entry, b: Entry) -> Entry:
    return a if _rank(a) >= _rank(b) else b


def merge(mine: Peers, theirs: Peers) -> Peers:
    """The union of both lists, the winner per name."""
    return joins.merge(mine, theirs, winner)


def newer(mine: Peers, theirs: Peers) -> Peers:
    """Their entries that would change my list if merged in."""
    return joins.newer(mine, theirs, winner)


def parse(data: Any, origin: str = "peer list") -> Peers:
    """A peer list read from JSON; anything malformed is a ConfigError naming the entry."""
    entries = data.get("peers") if isinstance(data, dict) else None
    if not isinstance(entries, list) or data.get("format") != FORMAT:
        raise ConfigError(f"{origin}: expected an object with \"format\": {FORMAT} and a "
                          "list 'peers'")
    peers: Peers = {}
    for number, item in enumerate(entries, 1):
        entry = parse_entry(item, f"{origin}: entry {number}")
        if entry.name in peers:
            raise ConfigError(f"{origin}: {entry.name} is listed twice")
        peers[entry.name] = entry
    taken: dict[str, str] = {}
    for entry in sorted(peers.values(), key=lambda e: e.name):
        for address in entry.addresses if entry.active else ():
            if address in taken:
                raise ConfigError(f"{origin}: address {address} is listed for both "
                                  f"{taken[address]} and {entry.name}")
            taken[address] = entry.name
    return peers


def parse_entry(item: Any, where: str) -> Entry:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected an object")
    name = item.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: name {peer_input.preview(name)} is not a host name")
    where = f"{where} ({name})"
    state, version = item.get("state"), item.get("version")
    if state not in STATES:
        raise ConfigError(f"{where}: state must be one of {', '.join(STATES)}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError(f"{where}: version must be a non-negative integer")
    addresses, host_keys = item.get("addresses"), item.get("host_keys")
    ssh_key, signature = item.get("ssh_key"), item.get("signature", "")
    if not _strings(addresses) or any(not a or any(c.isspace() or c == "," for c in a)
                                       for a in addresses):
        raise ConfigError(f"{where}: addresses must be a list of addresses")
    if not _strings(host_keys) or not all(_KEY.match(k) for k in host_keys):
        raise ConfigError(f"{where}: host_keys must be a list of \"type base64\" keys")
    if not isinstance(ssh_key, str) or (ssh_key and not _KEY.match(ssh_key)):
        raise ConfigError(f"{where}: ssh_key must be a \"type base64\" key")
    if state == ACTIVE and not (addresses and ssh_key and host_keys):
        raise ConfigError(f"{where}: an active entry needs addresses, ssh_key and host_keys")
    if not isinstance(signature, str):
        raise ConfigError(f"{where}: signature must be a string")
    unknown = sorted(set(item) - {*_SIGNED_FIELDS, "signature"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    return Entry(name, tuple(addresses), ssh_key, tuple(host_keys), state, version, signature)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def to_json(peers: Peers) -> dict:
    return {"format": FORMAT, "peers": [peers[name].as_dict() for name in sorted(peers)]}


def dumps(peers: Peers) -> str:
    return json.dumps(to_json(peers), indent=1, sort_keys=True) + "\n"


def rotated(peers: Peers, me: str) -> list[Entry]:
    """The active peers other than me, in name order starting after my own name.

    Node A syncs to B, C, D; node B to C, D, A: no two nodes hit the same peer first.
    """
    active = sorted((e for e in peers.values() if e.active), key=lambda e: e.name)
    return [e for e in active if e.name > me] + [e for e in active if e.name < me]


def describe(entry: Entry) -> str:
    """One line for diffs and listings."""
    return (f"{entry.name} v{entry.version} {entry.state} "
            f"{','.join(entry.addresses) or '-'}")
