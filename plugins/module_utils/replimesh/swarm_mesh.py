"""Swarm offers over the SSH mesh: `replimesh swarm publish`, and passing offers on.

Publishing hashes the file into an offer, keeps it (the local daemon then seeds the
file) and sends it to every active peer over SSH, to that peer's `replimesh serve`
(the verb `replimesh-swarm offer`). No controller is involved. A peer that was down
gets the offer at a later sync round of any node that holds it: the round asks each
peer which offers it holds (`replimesh-swarm have`) and sends the missing ones.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import journal, membership, peer_input, peer_ssh, swarm_engine, swarm_offers, swarm_signing
from .config import Config
from .errors import ConfigError
from .swarm_daemon import write_done
from .swarm_offers import Offer

OFFER = "replimesh-swarm offer"
HAVE = "replimesh-swarm have"
VERBS = (OFFER, HAVE)
MAX_ANSWER_BYTES = 1 << 20   # a peer's answer: a line per offer it holds, or one word


@dataclass
class Sent:
    peer: str
    address: str
    result: str     # offered | held | unreachable | failed
    message: str = ""


def publish(cfg: Config, path: str, progress=None) -> tuple[Offer, list[Sent]]:
    """Hash path into an offer, keep it, and offer it to every active peer."""
    rel = swarm_offers.relative_path(cfg, path)
    if not os.access(os.path.join(cfg.swarm_root, rel), os.R_OK):
        raise ConfigError(f"{path} is not readable by {cfg.user}, who seeds it: "
                          f"chown {cfg.user} it")
    offer = swarm_signing.sign(cfg, swarm_engine.make_offer(cfg, rel))
    swarm_offers.store(cfg, offer)
    write_done(cfg, offer)
    journal.append(cfg, "swarm.log", f"published {offer.path} as {offer.infohash}")
    peers = sorted(_active_peers(cfg).items())
    sent = []
    # All at once: a peer fetches nothing before its offer arrives (~0.5 s each over SSH).
    with ThreadPoolExecutor(max(1, min(16, len(peers)))) as pool:
        for result in pool.map(lambda p: _offer_to(cfg, p[0], p[1].addresses, offer), peers):
            sent.append(result)
            if progress:
                progress(result)
    return offer, sent


def share(cfg: Config, address: str) -> int:
    """Send the peer at address the current offers it lacks (a round's step); the
    number sent. ConfigError when the peer could not be asked."""
    offers = swarm_offers.current(swarm_offers.load_all(cfg))
    if not offers:
        return 0
    held = set(_ssh(cfg, address, HAVE, "").split())
    missing = [o for o in offers.values() if o.infohash not in held]
    for offer in missing:
        _ssh(cfg, address, OFFER, offer.to_json())
    return len(missing)


def answer_offer(cfg: Config, peer: str, fd: int) -> str:
    """The serving side: read the offer from peer on fd (at most the largest an offer may
    be, within the time limits of peer_input), check it, cheapest checks first, and keep
    it; ConfigError saying why not."""
    sent = peer_input.read(fd, swarm_offers.MAX_SENT, f"offer from {peer}")
    offer = swarm_offers.parse(sent, peer)
    swarm_offers.check_bounds(cfg, offer, peer)
    swarm_signing.check(cfg, offer, peer)
    swarm_engine.check(offer, peer)
    taken = swarm_offers.store(cfg, offer, source=peer)
    journal.append(cfg, "swarm.log", f"{'took' if taken else 'already held'} offer of "
                                     f"{offer.path} ({offer.infohash[:16]}) from {peer}")
    return "offered\n" if taken else "held\n"


def answer_have(cfg: Config) -> str:
    return "".join(f"{h}\n" for h in sorted(swarm_offers.load_all(cfg)))


def _active_peers(cfg: Config):
    peers = membership.load(cfg)
    return {n: e for n, e in peers.items() if n != cfg.node and e.active}


def _offer_to(cfg: Config, name: str, addresses: tuple[str, ...], offer: Offer) -> Sent:
    why = ""
    for address in addresses:
        try:
            answer = _ssh(cfg, address, OFFER, offer.to_json()).strip()
            return Sent(name, address, answer or "offered")
        except ConfigError as error:
            why = str(error)
    unreachable = "timed out" in why or "Connection" in why or "No route" in why
    return Sent(name, addresses[0] if addresses else "-",
                "unreachable" if unreachable else "failed",
                why + ("; it gets the offer at a later sync round" if unreachable else ""))


def _ssh(cfg: Config, address: str, verb: str, sent: str) -> str:
    answer = f"{verb} answer from {address}"
    got = peer_ssh.call(cfg, address, verb, sent.encode(), MAX_ANSWER_BYTES, answer,
                        f"{verb} to {address}")
    return peer_input.decode(got, answer)
