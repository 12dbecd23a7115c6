"""The peer list on a node: read it, take in entries from elsewhere, and apply it.

Entries arrive from the deploy (module replimesh_peers, `replimesh peers accept`) and
from peers (the exchange at the start of every sync session). Only entries signed by
the operator's key are taken; others are ignored and logged. Taking entries in and
applying them happen under one lock, so concurrent sessions never lose an update.
Applying regenerates the sync user's known_hosts from the active entries. The keys
that may log in are not the sync user's to write: sshd learns them from the keys user
(authorized_keys.py), which checks this list's news itself, so a removed node's key
stops working here as soon as this node hears of it.
A peer's list costs a bounded amount of work: see accept.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from . import journal, peer_input, peer_ssh, signature, state
from . import peers as peer_list
from .config import DEPLOY_HINT, Config, read_json
from .errors import ConfigError
from .peers import Entry, Peers

LOG = "peers.log"
EXCHANGE = "replimesh peers exchange"   # what a peer asks `replimesh serve` to run
# What one side of an exchange may send: a peer list of thousands of nodes and the
# replicas' histories (bounded on their own, history.MAX_RECORDS) still fit.
MAX_EXCHANGE_BYTES = 32 << 20
# Names new to this node that one exchange may bring (each costs a signature check): a
# node that missed the deploy of a few nodes learns them in one round.
MAX_NEW_NAMES = 16


@dataclass
class Accepted:
    """What taking in a list changed: names of entries added or replaced, and ignored."""
    changed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)   # the first bad signature: not taken
    before: Peers = field(default_factory=dict)
    after: Peers = field(default_factory=dict)
    answer: dict = field(default_factory=dict)   # the peer's whole answer to an exchange
    unchecked: int = 0   # changed entries not checked: after a bad one, or over the limit


def load(cfg: Config) -> Peers:
    """This node's list; a missing or malformed file is a ConfigError (the file is kept)."""
    if not os.path.exists(cfg.peers_file):
        read_json(cfg.peers_file, "peer list", DEPLOY_HINT)  # says: deploy the node
    try:
        return peer_list.parse(read_json(cfg.peers_file, "peer list", DEPLOY_HINT),
                               cfg.peers_file)
    except ConfigError as error:
        raise ConfigError(f"{error} (the file is kept as it is: fix or move it away, "
                          "then run site.yml)") from None


def accept(cfg: Config, incoming: Peers, source: str, write: bool = True,
           missing_ok: bool = False, new_names: int | None = None) -> Accepted:
    """Merge the operator-signed entries of incoming into this node's list and apply it.

    Signatures are checked before the list's lock is taken (each check runs ssh-keygen),
    and stop at the first bad one: the rest of that sender's entries are not checked.
    new_names: at most that many names this node does not know yet are checked (a
    peer's exchange); the others wait for a later exchange.
    With write=False (check mode) nothing is written: the result says what would change.
    missing_ok: a node with no list yet (first deploy) starts from an empty one.
    """
    good, bad, unchecked = _verified(cfg, _mine(cfg, missing_ok), incoming, new_names)
    with _locked(cfg) if write else nullcontext():
        mine = _mine(cfg, missing_ok)  # again: another session may have written meanwhile
        taken = peer_list.newer(mine, good)
        outcome = Accepted(before=mine, ignored=[bad.name] if bad else [],
                           unchecked=unchecked)
        outcome.after = peer_list.merge(mine, taken)
        outcome.changed = sorted(taken)
        # Entries can be valid one by one and clash once merged (an address still held by
        # an older entry here): never write a list that load() would refuse.
        peer_list.parse(peer_list.to_json(outcome.after), f"the list merged from {source}")
        if write:
            if taken:
                state.write_text(cfg.peers_file, peer_list.dumps(outcome.after), 0o644)
                for name in outcome.changed:
                    journal.append(cfg, LOG, f"took {peer_list.describe(taken[name])} "
                                             f"from {source}")
            apply(cfg, outcome.after)
    if write and bad:  # one line per sender, however many entries it sent
        journal.append(cfg, LOG, f"ignored {peer_list.describe(bad)} from {source}: not "
                                 "signed by the operator key" + (
                                     f"; {unchecked} more changed entries from it not "
                                     "checked" if unchecked else ""))
    elif write and unchecked:
        journal.append(cfg, LOG, f"{unchecked} names new here from {source} left for later "
                                 f"exchanges (at most {new_names} an exchange)")
    return outcome


def _mine(cfg: Config, missing_ok: bool) -> Peers:
    return {} if missing_ok and not os.path.exists(cfg.peers_file) else load(cfg)


def _verified(cfg: Config, mine: Peers, incoming: Peers,
              new_names: int | None) -> tuple[Peers, Entry | None, int]:
    """(the entries of incoming that would change mine and carry the operator's
    signature, the first that does not, how many were not checked): entries of names
    known here first, then at most new_names new names, in name order."""
    changed = peer_list.newer(mine, incoming)
    known = sorted(name for name in changed if name in mine)
    new = sorted(name for name in changed if name not in mine)
    if new_names is not None:
        new = new[:new_names]
    queue = known + new
    good: Peers = {}
    for number, name in enumerate(queue):
        entry = changed[name]
        if not signature.verify(cfg.operator_signers, peer_list.payload(entry),
                                entry.signature):
            return good, entry, len(changed) - number - 1
        good[name] = entry
    return good, None, len(changed) - len(queue)


def apply(cfg: Config, peers: Peers) -> bool:
    """Regenerate known_hosts from the active entries; True if it changed."""
    text = known_hosts(cfg, peers)
    try:
        with open(cfg.known_hosts, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    state.write_text(cfg.known_hosts, text, 0o644)
    return True


HEADER = "# Written by replimesh from the operator-signed peer list; edits are overwritten.\n"


def known_hosts(cfg: Config, peers: Peers) -> str:
    """Each other active node's host keys, pinned for its name and every address."""
    lines = []
    for entry in _others(cfg, peers):
        hosts = [entry.name, *entry.addresses]
        if cfg.ssh_port != 22:
            hosts = [f"[{h}]:{cfg.ssh_port}" for h in hosts]
        lines += [f"{','.join(hosts)} {key}\n" for key in entry.host_keys]
    return HEADER + "".join(lines)


def _others(cfg: Config, peers: Peers) -> list[Entry]:
    return [peers[name] for name in sorted(peers)
            if peers[name].active and name != cfg.node]


def exchange(cfg: Config, address: str, attach: dict | None = None) -> Accepted:
    """Swap lists with the peer at address over SSH (its `replimesh serve`) and take in
    what it sent back; attach: more fields to send along (the replicas' histories), the
    peer's are in the result's answer. Raises ConfigError saying why when the exchange
    did not happen."""
    mine = json.dumps({**peer_list.to_json(load(cfg)), **(attach or {})}, sort_keys=True)
    what = f"peer list from {address}"
    sent = peer_ssh.call(cfg, address, EXCHANGE, mine.encode(), MAX_EXCHANGE_BYTES, what,
                         "peer list not exchanged")
    answer = read_sent(peer_input.decode(sent, what), address)
    outcome = accept(cfg, peer_list.parse(answer, f"peer list from {address}"), address,
                     new_names=MAX_NEW_NAMES)
    outcome.answer = answer
    return outcome


def answer_exchange(cfg: Config, peer: str, sent: str,
                    more: Callable[[dict], dict] | None = None) -> str:
    """The serving side of an exchange: take in the peer's list, answer with ours; more
    (given what the peer sent) adds fields of its own to the answer."""
    data = read_sent(sent, peer)
    outcome = accept(cfg, peer_list.parse(data, f"peer list from {peer}"), peer,
                     new_names=MAX_NEW_NAMES)
    extra = more(data) if more else {}
    return json.dumps({**peer_list.to_json(outcome.after), **extra}, sort_keys=True) + "\n"


def parse_sent(text: str, source: str) -> Peers:
    return peer_list.parse(read_sent(text, source), f"peer list from {source}")


def read_sent(text: str, source: str) -> Any:
    """What a peer (or a file) sent, as JSON: bounded, and never a traceback."""
    if len(text) > MAX_EXCHANGE_BYTES:
        raise ConfigError(f"peer list from {source} is larger than {MAX_EXCHANGE_BYTES} bytes")
    return peer_input.loads(text, f"peer list from {source}")


@contextmanager
def _locked(cfg: Config):
    with open(cfg.peers_file + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
