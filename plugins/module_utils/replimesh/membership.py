"""The peer list on a node: read it, take in entries from elsewhere, and apply it.

Entries arrive from the deploy (module replimesh_peers, `replimesh peers accept`) and
from peers (the exchange at the start of every sync session). Only entries signed by
the operator's key are taken; others are ignored and logged. Taking entries in and
applying them happen under one lock, so concurrent sessions never lose an update.
Applying regenerates the sync user's known_hosts from the active entries. The keys
that may log in are not the sync user's to write: sshd learns them from the keys user
(authorized_keys.py), which checks this list's news itself, so a removed node's key
stops working here as soon as this node hears of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from . import journal, signature
from . import peers as peer_list
from .config import DEPLOY_HINT, Config, read_json
from .errors import ConfigError
from .peers import Entry, Peers

LOG = "peers.log"
EXCHANGE = "replimesh peers exchange"   # what a peer asks `replimesh serve` to run
# What one side of an exchange may send: a peer list of thousands of nodes and the
# replicas' histories (bounded on their own, history.MAX_RECORDS) still fit.
MAX_EXCHANGE_BYTES = 32 << 20


@dataclass
class Accepted:
    """What taking in a list changed: names of entries added or replaced, and ignored."""
    changed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)   # bad signature: not taken
    before: Peers = field(default_factory=dict)
    after: Peers = field(default_factory=dict)
    answer: dict = field(default_factory=dict)   # the peer's whole answer to an exchange


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
           missing_ok: bool = False) -> Accepted:
    """Merge the operator-signed entries of incoming into this node's list and apply it.

    With write=False (check mode) nothing is written: the result says what would change.
    missing_ok: a node with no list yet (first deploy) starts from an empty one.
    """
    with _locked(cfg) if write else nullcontext():
        mine = {} if missing_ok and not os.path.exists(cfg.peers_file) else load(cfg)
        outcome = Accepted(before=mine)
        good = {}
        for name, entry in sorted(peer_list.newer(mine, incoming).items()):
            if signature.verify(cfg.operator_signers, peer_list.payload(entry),
                                entry.signature):
                good[name] = entry
            else:
                outcome.ignored.append(name)
                if write:
                    journal.append(cfg, LOG, f"ignored {peer_list.describe(entry)} from "
                                             f"{source}: not signed by the operator key")
        outcome.after = peer_list.merge(mine, good)
        outcome.changed = sorted(good)
        # Entries can be valid one by one and clash once merged (an address still held by
        # an older entry here): never write a list that load() would refuse.
        peer_list.parse(peer_list.to_json(outcome.after), f"the list merged from {source}")
        if write:
            if good:
                _write(cfg.peers_file, peer_list.dumps(outcome.after), 0o644)
                for name in outcome.changed:
                    journal.append(cfg, LOG, f"took {peer_list.describe(good[name])} "
                                             f"from {source}")
            apply(cfg, outcome.after)
    return outcome


def apply(cfg: Config, peers: Peers) -> bool:
    """Regenerate known_hosts from the active entries; True if it changed."""
    text = known_hosts(cfg, peers)
    try:
        with open(cfg.known_hosts, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    _write(cfg.known_hosts, text, 0o644)
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
    argv = [cfg.ssh, "-o", f"ConnectTimeout={cfg.connect_timeout}", "-p", str(cfg.ssh_port),
            f"{cfg.user}@{address}", EXCHANGE]
    try:
        done = subprocess.run(argv, input=mine, capture_output=True, text=True, check=False,
                              timeout=cfg.connect_timeout + 60)
    except subprocess.TimeoutExpired:
        raise ConfigError("peer list exchange timed out") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise ConfigError(f"peer list not exchanged: {why}")
    answer = read_sent(done.stdout, address)
    outcome = accept(cfg, peer_list.parse(answer, f"peer list from {address}"), address)
    outcome.answer = answer
    return outcome


def answer_exchange(cfg: Config, peer: str, sent: str,
                    more: Callable[[dict], dict] | None = None) -> str:
    """The serving side of an exchange: take in the peer's list, answer with ours; more
    (given what the peer sent) adds fields of its own to the answer."""
    data = read_sent(sent, peer)
    outcome = accept(cfg, peer_list.parse(data, f"peer list from {peer}"), peer)
    extra = more(data) if more else {}
    return json.dumps({**peer_list.to_json(outcome.after), **extra}, sort_keys=True) + "\n"


def parse_sent(text: str, source: str) -> Peers:
    return peer_list.parse(read_sent(text, source), f"peer list from {source}")


def read_sent(text: str, source: str) -> Any:
    """What a peer (or a file) sent, as JSON: bounded, and never a traceback."""
    if len(text) > MAX_EXCHANGE_BYTES:
        raise ConfigError(f"peer list from {source} is larger than {MAX_EXCHANGE_BYTES} bytes")
    try:
        return json.loads(text)
    except ValueError as error:
        raise ConfigError(f"peer list from {source} is not JSON: {error}") from None
    except RecursionError:
        raise ConfigError(f"peer list from {source} is nested too deeply") from None


@contextmanager
def _locked(cfg: Config):
    with open(cfg.peers_file + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: str, text: str, mode: int) -> None:
    """Through a temporary file in the same folder, then rename: never half a file."""
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
