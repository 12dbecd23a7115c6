"""Swarm offers: a published file's manifest and where it goes, as stored on every node.

An offer is a small JSON document: the file's path relative to the swarm root, the
.torrent (the manifest: piece size and the SHA-256 of every piece), who published it
and when. It travels over the SSH mesh; the swarm daemon of each node downloads what
its offers describe. For one path, the latest offer wins (a newer version of the file).
Pure logic and files; libtorrent is only in swarm_engine.py.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from . import peer_input, peers
from .config import Config
from .errors import ConfigError
from .state import write_json

MAX_OFFER_BYTES = 16 << 20   # a 500 GB file in 16 MiB pieces has a ~1 MB manifest
MAX_SENT = MAX_OFFER_BYTES * 2  # an offer as sent: base64 and JSON around the manifest
STAGING = ".replimesh-swarm"  # under the swarm root: same filesystem, so the final move
                              # into place is an atomic rename
_INFOHASH = re.compile(r"[0-9a-f]{64}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Offer:
    path: str         # relative to the swarm root, e.g. "models/big.bin"
    infohash: str     # the torrent's v2 info-hash (SHA-256, hex): the offer's identity
    torrent: bytes    # the bencoded .torrent
    publisher: str    # the node that published it
    published: str    # UTC, ISO 8601 with microseconds: orders versions of a path
    size: int
    signature: str = ""  # the publisher's, over signed_bytes() (swarm_signing.py)

    def to_json(self) -> str:
        return json.dumps({"path": self.path, "infohash": self.infohash,
                           "torrent": base64.b64encode(self.torrent).decode(),
                           "publisher": self.publisher, "published": self.published,
                           "size": self.size, "signature": self.signature}, sort_keys=True)

    def signed_bytes(self) -> bytes:
        """What the publisher signs: every field but the manifest, which the info-hash
        stands for (swarm_engine.check shows the manifest has that info-hash)."""
        return json.dumps({"path": self.path, "infohash": self.infohash,
                           "publisher": self.publisher, "published": self.published,
                           "size": self.size}, sort_keys=True).encode()

    def signed(self, signature: str) -> Offer:
        return replace(self, signature=signature)

    def newer_than(self, other: Offer) -> bool:
        return (self.published, self.infohash) > (other.published, other.infohash)


def piece_size(size: int) -> int:
    """A power of two from 256 KiB to 16 MiB that cuts the file into at most ~2000
    pieces: small enough pieces for many peers to share early, few enough to keep the
    manifest small (32 bytes a piece) and the per-piece overhead low."""
    piece = 256 << 10
    while piece < 16 << 20 and size > piece * 2048:
        piece *= 2
    return piece


def relative_path(cfg: Config, path: str) -> str:
    """path (absolute, or relative to the swarm root) as a clean path under the swarm
    root; ConfigError saying why when it is not a publishable regular file there."""
    root = os.path.realpath(cfg.swarm_root)
    full = os.path.realpath(path if os.path.isabs(path) else os.path.join(root, path))
    if os.path.commonpath([root, full]) != root or full == root:
        raise ConfigError(f"{path} is not under the swarm root {cfg.swarm_root}: move it "
                          "there first (it lands at the same relative path on every node)")
    rel = os.path.relpath(full, root)
    check_relative(rel, path)
    if not os.path.isfile(full):
        raise ConfigError(f"{full} is not a regular file")
    return rel


def check_relative(rel: str, origin: str) -> None:
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or parts[0] == STAGING or _CONTROL.search(rel)):
        raise ConfigError(f"{origin}: {rel!r} is not a clean path under the swarm root")


def destination(cfg: Config, offer: Offer) -> str:
    return os.path.join(cfg.swarm_root, offer.path)


def staging_dir(cfg: Config, offer: Offer) -> str:
    """Where the file is assembled until every piece is in and verified."""
    return os.path.join(cfg.swarm_root, STAGING, offer.infohash[:32])


def parse(text: str | bytes, source: str) -> Offer:
    """An offer received from a peer; ConfigError naming the source and the fault in one
    line, whatever the input (not UTF-8, nested deep, numbers of any size)."""
    if len(text) > MAX_SENT:
        raise ConfigError(f"offer from {source} is larger than {MAX_SENT} bytes")
    if isinstance(text, bytes):
        text = peer_input.decode(text, f"offer from {source}")
    data = peer_input.loads(text, f"offer from {source}")
    try:
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        offer = Offer(path=data["path"], infohash=data["infohash"],
                      torrent=base64.b64decode(data["torrent"], validate=True),
                      publisher=data["publisher"], published=data["published"],
                      size=data["size"], signature=data.get("signature", ""))
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        why = f"{type(error).__name__}: {str(error)[:200]}"
        raise ConfigError(f"offer from {source} is malformed: {why!r}") from None
    if not all(isinstance(v, str) for v in (offer.path, offer.publisher, offer.published,
                                            offer.signature)):
        raise ConfigError(f"offer from {source}: path, publisher, published, signature "
                          "must be strings")
    if not isinstance(offer.size, int) or isinstance(offer.size, bool) or offer.size < 0:
        raise ConfigError(f"offer from {source}: size must be a whole number of bytes")
    if not isinstance(offer.infohash, str) or not _INFOHASH.match(offer.infohash):
        raise ConfigError(f"offer from {source}: infohash must be 64 hex digits")
    if not peers.NAME.match(offer.publisher):
        raise ConfigError(f"offer from {source}: publisher {offer.publisher[:80]!r} is not a "
                          "node name")
    check_relative(offer.path, f"offer from {source}")
    published_at(offer, source)
    return offer


def published_at(offer: Offer, source: str) -> datetime:
    """The offer's date, in UTC; ConfigError when it is not one."""
    try:
        when = datetime.fromisoformat(offer.published)
    except ValueError:
        when = None
    if when is None or when.utcoffset() != timedelta(0):
        raise ConfigError(f"offer from {source}: published {offer.published[:40]!r} is not "
                          "a UTC date and time")
    return when


def check_bounds(cfg: Config, offer: Offer, source: str, now: datetime | None = None) -> None:
    """Refuse an offer beyond what this node takes from anyone: a file over the maximum
    size, or a date ahead of this node's clock by more than the margin (it would win
    over every later honest version of its path)."""
    if offer.size > cfg.swarm_max_file_bytes:
        raise ConfigError(f"offer of {offer.path!r} from {source}: {offer.size} bytes is over "
                          f"the maximum file size, {cfg.swarm_max_file_bytes} bytes")
    now = now or datetime.now(timezone.utc)
    if published_at(offer, source) > now + timedelta(seconds=cfg.swarm_clock_margin_s):
        raise ConfigError(f"offer of {offer.path!r} from {source}: dated {offer.published!r},"
                          f" more than {cfg.swarm_clock_margin_s} s ahead of this node's clock")


def check_quota(cfg: Config, offer: Offer, held: dict[str, Offer], source: str) -> None:
    """Refuse an offer that would give its publisher more files or bytes on offer here
    than the limits (the version it replaces does not count)."""
    mine = [o for o in current(held).values()
            if o.publisher == offer.publisher and o.path != offer.path]
    if len(mine) + 1 > cfg.swarm_max_offers_per_publisher:
        raise ConfigError(f"offer of {offer.path!r} from {source}: {offer.publisher} already "
                          f"has {len(mine)} files on offer here, the most one publisher may")
    total = sum(o.size for o in mine) + offer.size
    if total > cfg.swarm_max_bytes_per_publisher:
        raise ConfigError(f"offer of {offer.path!r} from {source}: {offer.publisher} would "
                          f"have {total} bytes on offer here, over the limit of "
                          f"{cfg.swarm_max_bytes_per_publisher}")


# --- the offers a node holds: one JSON file per offer in <swarm_dir>/offers ---

def _offers_dir(cfg: Config) -> str:
    return os.path.join(cfg.swarm_dir, "offers")


def store(cfg: Config, offer: Offer, source: str = "") -> bool:
    """Keep the offer unless it is already held or an offer for the same path is newer;
    True when it was taken. From a peer (source): ConfigError when it would pass its
    publisher's limits."""
    held = load_all(cfg)
    if offer.infohash in held:
        return False
    if any(o.path == offer.path and o.newer_than(offer) for o in held.values()):
        return False
    if source:
        check_quota(cfg, offer, held, source)
    os.makedirs(_offers_dir(cfg), mode=0o750, exist_ok=True)
    write_json(os.path.join(_offers_dir(cfg), offer.infohash + ".json"),
               json.loads(offer.to_json()))
    return True


def remove(cfg: Config, infohash: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_offers_dir(cfg), infohash + ".json"))


def load_all(cfg: Config) -> dict[str, Offer]:
    """Every offer held, by infohash; an unreadable file is skipped (the next offer of
    that file from any peer restores it)."""
    offers: dict[str, Offer] = {}
    try:
        names = sorted(os.listdir(_offers_dir(cfg)))
    except FileNotFoundError:
        return offers
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(_offers_dir(cfg), name), encoding="utf-8") as handle:
                offer = parse(handle.read(), name)
        except (OSError, ConfigError):
            continue
        offers[offer.infohash] = offer
    return offers


def current(offers: dict[str, Offer]) -> dict[str, Offer]:
    """The latest offer of each path, by path."""
    latest: dict[str, Offer] = {}
    for offer in offers.values():
        if offer.path not in latest or offer.newer_than(latest[offer.path]):
            latest[offer.path] = offer
    return latest

