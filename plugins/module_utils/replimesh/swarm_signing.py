"""Offers signed by their publisher's sync key, checked against the peer list.

Offers are relayed: a round passes on every offer a node holds, so the SSH peer that
sends one is often not its publisher. The publisher signs it (`ssh-keygen -Y sign` with
the node's sync key, in a namespace of its own so the signature is good for nothing
else), and every node checks it against the publisher's ssh_key in the operator-signed
peer list. A stolen key can then speak only for its own node, which the per-publisher
limits bound, and a removed node's offers stop being taken once its removal arrives.
"""

from __future__ import annotations

import os
import tempfile

from . import membership, signature
from .config import Config
from .errors import ConfigError, ReplimeshError
from .swarm_offers import Offer

NAMESPACE = "replimesh-swarm-offer"


def sign(cfg: Config, offer: Offer) -> Offer:
    """The offer, signed by this node's sync key."""
    try:
        return offer.signed(signature.sign(cfg.swarm_signing_key, offer.signed_bytes(),
                                           NAMESPACE))
    except ReplimeshError as error:
        raise ConfigError(f"cannot sign the offer of {offer.path}: {error}") from None


def check(cfg: Config, offer: Offer, source: str) -> None:
    """ConfigError unless the offer is signed by its publisher, an active node of the
    peer list."""
    entry = membership.load(cfg).get(offer.publisher)
    if entry is None or not entry.active or not entry.ssh_key:
        raise ConfigError(f"offer of {offer.path!r} from {source}: its publisher "
                          f"{offer.publisher} is not an active node of the peer list")
    with tempfile.NamedTemporaryFile("w", suffix=".signers", delete=False) as signers:
        signers.write(signature.allowed_signers(entry.ssh_key, offer.publisher, NAMESPACE))
    try:
        good = signature.verify(signers.name, offer.signed_bytes(), offer.signature,
                                offer.publisher, NAMESPACE)
    finally:
        os.unlink(signers.name)
    if not good:
        raise ConfigError(f"offer of {offer.path!r} from {source}: not signed by its "
                          f"publisher {offer.publisher}")
