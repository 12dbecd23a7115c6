"""The peer list: who is in the mesh and where to reach them.

Written by the replimesh_agent role from the inventory group `mesh`; every node holds
the whole list, itself included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .config import DEPLOY_HINT, read_json
from .errors import ConfigError

STATES = ("active", "removed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Peer:
    name: str
    address: str
    state: str = "active"


def load(path: str) -> list[Peer]:
    return parse(read_json(path, "peer list", DEPLOY_HINT), path)


def parse(data: Any, origin: str = "peer list") -> list[Peer]:
    entries = data.get("peers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{origin}: expected an object with a list 'peers'")
    peers, names, addresses = [], set(), set()
    for number, entry in enumerate(entries, 1):
        where = f"{origin}: entry {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an object")
        name, address = entry.get("name"), entry.get("address")
        state = entry.get("state", "active")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: name {name!r} is not a host name")
        if not isinstance(address, str) or not address or any(c.isspace() for c in address):
            raise ConfigError(f"{where} ({name}): address {address!r} is not an address")
        if state not in STATES:
            raise ConfigError(f"{where} ({name}): state must be one of {', '.join(STATES)}")
        if name in names:
            raise ConfigError(f"{origin}: {name} is listed twice")
        if state == "active" and address in addresses:
            raise ConfigError(f"{origin}: address {address} is listed twice")
        names.add(name)
        if state == "active":
            addresses.add(address)
        peers.append(Peer(name, address, state))
    return peers


def rotated(peers: list[Peer], me: str) -> list[Peer]:
    """The active peers other than me, in name order starting after my own name.

    Node A syncs to B, C, D; node B to C, D, A: no two nodes hit the same peer first.
    """
    active = sorted((p for p in peers if p.state == "active"), key=lambda p: p.name)
    after = [p for p in active if p.name > me]
    before = [p for p in active if p.name < me]
    return after + before


def to_json(peers: list[Peer]) -> dict:
    return {"peers": [{"name": p.name, "address": p.address, "state": p.state}
                      for p in peers]}
