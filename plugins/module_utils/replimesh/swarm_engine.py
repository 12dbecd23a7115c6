"""What swarm mode asks of libtorrent: manifests, the session's settings, who may connect.

libtorrent (Debian's python3-libtorrent on nodes, installed by the replimesh_swarm role)
does the BitTorrent part: pieces, SHA-256 checks (v2 torrents), choking, resume data.
replimesh keeps it private: no tracker, DHT, local discovery or port mapping; peers are
dialled by hand from the mesh's active peer list, and an IP filter turns away every
other address. With the mesh CA deployed, torrents are also SSL torrents: the CA's
certificate is in the manifest, and a peer must show a certificate it signed.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone

from . import swarm_manifest
from .config import Config
from .errors import ConfigError
from .swarm_offers import Offer, piece_size, relative_path

# Diffie-Hellman parameters for the SSL torrents' connections (libtorrent wants a file):
# RFC 7919's public ffdhe2048 group, as `openssl genpkey -genparam -algorithm DH -pkeyopt
# group:ffdhe2048` prints it.
FFDHE2048 = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""
INSTALL_HINT = ("python3-libtorrent is not installed on this node: deploy it with "
                "playbooks/site.yml (role replimesh_swarm)")


def lt():
    """The libtorrent module, or ConfigError saying how to get it."""
    try:
        import libtorrent
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return libtorrent


def make_offer(cfg: Config, path: str, now: datetime | None = None) -> Offer:
    """Hash the file at path (under the swarm root) into a private v2 torrent."""
    lib = lt()
    rel = relative_path(cfg, path)
    full = os.path.join(cfg.swarm_root, rel)
    size = os.path.getsize(full)
    if hasattr(lib, "list_files"):  # libtorrent 2.1
        files = lib.list_files(full)
    else:                            # 2.0 (Debian 12's)
        files = lib.file_storage()
        lib.add_files(files, full)
    creator = lib.create_torrent(files, piece_size(size), lib.create_torrent.v2_only)
    creator.set_priv(True)
    creator.set_creator("replimesh")
    if cfg.swarm_ca:
        creator.set_root_cert(_read(cfg.swarm_ca))
    lib.set_piece_hashes(creator, os.path.dirname(full))
    torrent = lib.bencode(creator.generate())
    info = lib.torrent_info(torrent)
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="microseconds")
    return Offer(path=rel, infohash=str(info.info_hashes().v2), torrent=torrent,
                 publisher=cfg.node, published=stamp, size=size)


def check(offer: Offer, source: str):
    """The offer's torrent_info, once its manifest is shown to match what the offer says:
    its structure read by swarm_manifest before libtorrent sees it (libtorrent sizes its
    hash trees from the size claimed), then its info-hash as libtorrent computes it."""
    problem = swarm_manifest.problem(offer.torrent, os.path.basename(offer.path), offer.size)
    if problem:
        raise ConfigError(f"offer of {offer.path!r} from {source}: {problem}")
    lib = lt()
    try:
        info = lib.torrent_info(offer.torrent)
    except RuntimeError as error:
        raise ConfigError(f"offer from {source}: the manifest does not parse: {error}") from None
    if str(info.info_hashes().v2) != offer.infohash:
        raise ConfigError(f"offer of {offer.path!r} from {source}: its info-hash is not the "
                          "one named")
    return info


def session_settings(cfg: Config) -> dict:
    lib = lt()
    return {
        # SSL torrents take connections only on an SSL listen socket ("s").
        "listen_interfaces": f"0.0.0.0:{cfg.swarm_port}" + ("s" if cfg.swarm_ca else ""),
        "user_agent": "replimesh",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
        "enable_natpmp": False,
        # uTP is slow on fast local links (~10 MB/s measured); peers are TCP only.
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        # Peers are dialled by the daemon every few seconds: libtorrent's own retry
        # (60 s, then giving up after 3 failures) would leave a restarted node idle.
        "min_reconnect_time": 2, "max_failcount": 1000,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": (lib.alert.category_t.error_notification
                       | lib.alert.category_t.status_notification
                       | lib.alert.category_t.storage_notification),
    }


def addresses(hosts: list[str]) -> set[str]:
    """The IP addresses of hosts (literal addresses or names), as the filter needs."""
    found: set[str] = set()
    for host in hosts:
        try:
            for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                found.add(str(info[4][0]))
        except OSError:
            continue  # a name that does not resolve now is tried at the next refresh
    return found


def ip_filter(allowed: set[str]):
    """Block every address but the active peers' (incoming and outgoing)."""
    lib = lt()
    rules = lib.ip_filter()
    rules.add_rule("0.0.0.0", "255.255.255.255", 1)
    rules.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
    for address in allowed:
        rules.add_rule(address, address, 0)
    return rules


def add_params(info, save_path: str, seed: bool, resume: bytes | None = None,
               upload_only: bool = False):
    """Parameters to add a torrent that is always active (never queued), filtered, and
    either trusted as complete (seed: the publisher, or a file finished here and
    unchanged since) or checked against what is on disk; upload_only fetches nothing
    (a file verified in place is never written there)."""
    lib = lt()
    params = lib.read_resume_data(resume) if resume else lib.add_torrent_params()
    params.ti = info
    params.save_path = save_path
    flags = params.flags
    flags &= ~lib.torrent_flags.auto_managed
    flags &= ~lib.torrent_flags.paused
    flags |= lib.torrent_flags.apply_ip_filter
    if seed:
        flags |= lib.torrent_flags.seed_mode
    if upload_only:
        flags |= lib.torrent_flags.upload_mode
    params.flags = flags
    return params



def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read the mesh CA {path}: {error.strerror} (deploy with "
                          "playbooks/site.yml)") from None
