"""`replimesh swarm daemon`: one per node, downloads what the offers describe and seeds.

Each offer (swarm_offers.py) becomes a torrent in one libtorrent session:
- a file this node published, or finished and holds unchanged, is seeded from its place
  under the swarm root without a recheck (seed mode);
- anything else is assembled in a staging folder under the swarm root. When the node
  already holds an older version at the destination, that copy is the starting point:
  libtorrent checks it against the new manifest and fetches only the pieces that differ.
  Every piece is checked against its SHA-256; a bad one is fetched again. Once all
  pieces are in, the file is moved into place by one rename (libtorrent's move_storage
  on the same filesystem), so the destination holds the old version or the new, never
  half of one.
Resume data is saved every few seconds, so a restarted daemon goes on where it stopped.
Finished files are seeded for swarm_seed_hours, then only kept. The daemon dials every
active peer itself every few seconds, and its IP filter follows the peer list.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from . import daemons, journal, membership, swarm_engine, swarm_offers
from .config import Config
from .errors import ConfigError
from .state import write_json
from .swarm_offers import Offer

LOG = "swarm.log"
TICK_S = 0.5
DIAL_EVERY_S = 3.0
RESUME_EVERY_S = 5.0
OFFERS_EVERY_S = TICK_S  # cheap: the offers are read again only when their folder changed


@dataclass
class Tracked:
    offer: Offer
    handle: object
    staged: bool              # assembling in the staging folder (not yet in place)
    hash_failures: int = 0    # pieces that failed their check and were fetched again
    repaired: int = 0         # pieces found bad by a verify and fetched again
    verifying: bool = False   # checking the file in place, fetching nothing meanwhile
    moving: bool = False
    error: str = ""


def paths(cfg: Config) -> dict[str, str]:
    base = cfg.swarm_dir
    return {"lock": os.path.join(base, "daemon.lock"),
            "status": os.path.join(base, "status.json"),
            "resume": os.path.join(base, "resume"),
            "done": os.path.join(base, "done"),
            "verify": os.path.join(base, "verify"),
            "dh": os.path.join(base, "ffdhe2048.pem")}


def lock_or_none(cfg: Config):
    """The daemon's lock file, held; None when another daemon holds it."""
    os.makedirs(cfg.swarm_dir, mode=0o750, exist_ok=True)
    return daemons.lock_or_none(paths(cfg)["lock"])


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.lt = swarm_engine.lt()
        self.session = self.lt.session(swarm_engine.session_settings(cfg))
        self.torrents: dict[str, Tracked] = {}
        self.stopping = False
        self.allowed: set[str] = set()
        self.peers_stamp = None
        self.offers_stamp: int | None = -1  # never read yet
        for folder in ("resume", "done", "verify"):
            os.makedirs(paths(cfg)[folder], mode=0o750, exist_ok=True)
        if cfg.swarm_ca:
            with open(paths(cfg)["dh"], "w", encoding="utf-8") as out:
                out.write(swarm_engine.FFDHE2048)

    # --- the loop ---

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.log(f"started, port {self.cfg.swarm_port}"
                 f"{' (SSL torrents of the mesh CA)' if self.cfg.swarm_ca else ''}")
        due = {"offers": 0.0, "dial": 0.0, "resume": 0.0}
        while not self.stopping:
            now = time.monotonic()
            if now >= due["offers"]:
                self.refresh_filter()
                self.sync_offers()
                self.verify_requests()
                due["offers"] = now + OFFERS_EVERY_S
            if now >= due["dial"]:
                self.dial()
                due["dial"] = now + DIAL_EVERY_S
            if now >= due["resume"]:
                self.save_resume()
                due["resume"] = now + RESUME_EVERY_S
            self.handle_alerts()
            self.write_status()
            self.session.wait_for_alert(int(TICK_S * 1000))
        self.save_resume()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._resume_pending:
            self.session.wait_for_alert(200)
            self.handle_alerts()
        self.write_status()
        self.log("stopped")
        return 0

    def _stop(self, *_):
        self.stopping = True

    def log(self, line: str) -> None:
        journal.append(self.cfg, LOG, line)

    # --- who may connect, and whom we dial ---

    def peer_hosts(self) -> list[str]:
        try:
            peers = membership.load(self.cfg)
        except ConfigError:
            return []
        return [a for name in sorted(peers) if name != self.cfg.node and peers[name].active
                for a in peers[name].addresses]

    def refresh_filter(self) -> None:
        try:
            stamp = os.stat(self.cfg.peers_file).st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self.peers_stamp and self.allowed:
            return
        self.peers_stamp = stamp
        allowed = swarm_engine.addresses(self.peer_hosts())
        if allowed != self.allowed:
            self.session.set_ip_filter(swarm_engine.ip_filter(allowed))
            self.allowed = allowed
            self.log(f"peers allowed: {', '.join(sorted(allowed)) or 'none'}")

    def dial(self) -> None:
        """Connect every torrent still downloading to every active peer it lacks."""
        for tracked in self.torrents.values():
            status = tracked.handle.status()
            if status.is_seeding:
                continue
            connected = {p.ip[0] for p in tracked.handle.get_peer_info()}
            for address in sorted(self.allowed - connected):
                tracked.handle.connect_peer((address, self.cfg.swarm_port))

    # --- offers in, torrents out ---

    def sync_offers(self) -> None:
        """Take in new offers (read again only when the offers folder changed: manifests
        of large files are ~1 MB), and stop seeding what has been seeded long enough."""
        try:
            stamp = os.stat(os.path.join(self.cfg.swarm_dir, "offers")).st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self.offers_stamp:
            self.offers_stamp = stamp
            held = swarm_offers.load_all(self.cfg)
            latest = swarm_offers.current(held)
            for infohash, offer in held.items():
                if latest[offer.path].infohash != infohash:
                    self.drop(infohash, f"{offer.path}: superseded by a newer version")
                    swarm_offers.remove(self.cfg, infohash)
            for offer in latest.values():
                if offer.infohash not in self.torrents:
                    self.add(offer)
        for infohash, tracked in list(self.torrents.items()):
            done = None if tracked.staged else self.done_record(tracked.offer)
            if done and tracked.handle.status().is_seeding and self.seed_time_over(done):
                self.drop(infohash, f"{tracked.offer.path}: seeded for "
                                    f"{self.cfg.swarm_seed_hours} h, now only kept")

    def add(self, offer: Offer, verify: bool = False, repair: int = 0) -> None:
        """Add the offer's torrent: seeding in place, or assembling in staging. verify:
        check the file in place, fetching nothing; repair: assemble in staging from the
        copy in place, whose bad pieces (that many) a verify found."""
        dest = swarm_offers.destination(self.cfg, offer)
        done = self.done_record(offer)
        in_place = done is not None and _unchanged(dest, done) and not repair
        if in_place and not verify and self.seed_time_over(done):
            return
        try:
            info = swarm_engine.check(offer, "the offers folder")
        except ConfigError as error:
            self.log(str(error))
            return
        resume = None
        if verify or in_place:
            save_path, staged, seed = os.path.dirname(dest), False, not verify
        else:
            save_path, staged, seed = swarm_offers.staging_dir(self.cfg, offer), True, False
            resume = _read_bytes(self.resume_file(offer))
            self.seed_staging(offer, save_path, dest, resume)
        handle = self.session.add_torrent(
            swarm_engine.add_params(info, save_path, seed, resume, upload_only=verify))
        self.torrents[offer.infohash] = Tracked(offer, handle, staged, repaired=repair,
                                                verifying=verify)
        if staged:  # dial at once rather than at the next round of dialling
            for address in sorted(self.allowed):
                handle.connect_peer((address, self.cfg.swarm_port))
        self.log(f"{offer.path}: {'seeding' if seed else 'checking'} "
                 f"{offer.infohash[:16]} from {offer.publisher} in {save_path}")

    def seed_staging(self, offer: Offer, staging: str, dest: str, resume) -> None:
        """Start a new version from the old one held at the destination, if any: only
        the pieces that differ are fetched."""
        os.makedirs(staging, mode=0o750, exist_ok=True)
        staged = os.path.join(staging, os.path.basename(offer.path))
        if resume or os.path.exists(staged) or not os.path.isfile(dest):
            return
        # A copy-on-write clone where the filesystem has them (btrfs, XFS): no data copied.
        done = subprocess.run(["cp", "--reflink=auto", "--", dest, staged], check=False,
                              capture_output=True, text=True)
        if done.returncode != 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            self.log(f"{offer.path}: cannot start from the copy held here "
                     f"({done.stderr.strip() or 'cp failed'}): fetching every piece")
            return
        self.log(f"{offer.path}: starting from the copy held here, only changed pieces "
                 "will be fetched")

    def drop(self, infohash: str, why: str) -> None:
        tracked = self.torrents.pop(infohash, None)
        if tracked is not None:
            self.session.remove_torrent(tracked.handle)
            self.log(why)
        shutil.rmtree(os.path.join(self.cfg.swarm_root, swarm_offers.STAGING,
                                   infohash[:32]), ignore_errors=True)
        if os.path.exists(self.resume_file_of(infohash)):
            os.unlink(self.resume_file_of(infohash))

    def verify_requests(self) -> None:
        """`replimesh swarm verify` leaves the info-hash in the verify folder."""
        folder = paths(self.cfg)["verify"]
        for infohash in os.listdir(folder):
            os.unlink(os.path.join(folder, infohash))
            tracked = self.torrents.get(infohash)
            if tracked is not None and tracked.staged:
                continue  # still downloading: every piece is checked as it comes in
            offer = swarm_offers.load_all(self.cfg).get(infohash)
            if offer is not None:
                if tracked is not None:
                    self.drop(infohash, f"{offer.path}: stop seeding while it is verified")
                self.add(offer, verify=True)
                self.log(f"{offer.path}: verifying every piece in place")

    # --- what libtorrent reports ---

    _resume_pending = 0

    def handle_alerts(self) -> None:
        lib = self.lt
        for alert in self.session.pop_alerts():
            tracked = self._tracked(alert)
            if isinstance(alert, lib.save_resume_data_alert) and tracked:
                self._resume_pending -= 1
                _write_bytes(self.resume_file(tracked.offer),
                             lib.write_resume_data_buf(alert.params))
            elif isinstance(alert, lib.save_resume_data_failed_alert):
                self._resume_pending -= 1
            elif isinstance(alert, lib.torrent_finished_alert) and tracked:
                self.finished(tracked)
            elif isinstance(alert, lib.torrent_checked_alert) and tracked:
                self.checked(tracked)
            elif isinstance(alert, lib.hash_failed_alert) and tracked:
                tracked.hash_failures += 1
                self.log(f"{tracked.offer.path}: piece {alert.piece_index} failed its "
                         "SHA-256 check: fetching it again")
            elif isinstance(alert, lib.storage_moved_alert) and tracked:
                self.moved(tracked)
            elif isinstance(alert, lib.storage_moved_failed_alert) and tracked:
                tracked.moving = False
                tracked.error = f"cannot move into place: {alert.message()}"
                self.log(f"{tracked.offer.path}: {tracked.error}")
            elif isinstance(alert, lib.torrent_need_cert_alert) and tracked:
                # An SSL torrent: show peers this node's certificate from the mesh CA.
                tracked.handle.set_ssl_certificate(self.cfg.swarm_cert, self.cfg.swarm_key,
                                                   paths(self.cfg)["dh"])
            elif isinstance(alert, (lib.file_error_alert, lib.torrent_error_alert)) and tracked:
                tracked.error = alert.message()
                self.log(f"{tracked.offer.path}: {tracked.error}")
            elif isinstance(alert, lib.listen_failed_alert):
                self.log(f"cannot listen: {alert.message()}")

    def _tracked(self, alert) -> Tracked | None:
        handle = getattr(alert, "handle", None)
        if handle is None or not handle.is_valid():
            return None
        return self.torrents.get(str(handle.info_hashes().v2))

    def checked(self, tracked: Tracked) -> None:
        """After a verify: all good, seed again; else repair the file like a new version,
        in staging from the copy in place, then one rename (never written in place)."""
        if not tracked.verifying:
            return
        offer = tracked.offer
        missing = tracked.handle.torrent_file().num_pieces() - tracked.handle.status().num_pieces
        self.drop(offer.infohash, f"{offer.path}: verified, {missing} bad piece(s)")
        if missing:
            self.add(offer, repair=missing)
        else:
            write_done(self.cfg, offer)  # as it is now: seeded without another check
            self.add(offer)

    def finished(self, tracked: Tracked) -> None:
        if not tracked.staged:
            self.write_done(tracked.offer)
            return
        dest = swarm_offers.destination(self.cfg, tracked.offer)
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        tracked.moving = True
        tracked.handle.move_storage(os.path.dirname(dest),
                                    self.lt.move_flags_t.always_replace_files)

    def moved(self, tracked: Tracked) -> None:
        tracked.moving, tracked.staged = False, False
        self.write_done(tracked.offer)
        shutil.rmtree(swarm_offers.staging_dir(self.cfg, tracked.offer), ignore_errors=True)
        # Resume data is for assembling in staging; in place, the done record says it all.
        if os.path.exists(self.resume_file(tracked.offer)):
            os.unlink(self.resume_file(tracked.offer))
        self.log(f"{tracked.offer.path}: complete, every piece verified, in place")

    def save_resume(self) -> None:
        """Of every file still assembling in staging (the rest is in place, complete)."""
        for tracked in self.torrents.values():
            if not tracked.staged or tracked.moving:
                continue
            tracked.handle.save_resume_data(self.lt.save_resume_flags_t.only_if_modified)
            self._resume_pending += 1

    # --- records on disk ---

    def resume_file(self, offer: Offer) -> str:
        return self.resume_file_of(offer.infohash)

    def resume_file_of(self, infohash: str) -> str:
        return os.path.join(paths(self.cfg)["resume"], infohash + ".resume")

    def done_record(self, offer: Offer) -> dict | None:
        return done_record(self.cfg, offer)

    def write_done(self, offer: Offer) -> None:
        write_done(self.cfg, offer)

    def seed_time_over(self, done: dict) -> bool:
        return time.time() - done.get("at", 0) > self.cfg.swarm_seed_hours * 3600

    def write_status(self) -> None:
        entries = []
        for tracked in self.torrents.values():
            entries.append(describe(tracked))
        write_json(paths(self.cfg)["status"], {
            "node": self.cfg.node, "updated": time.time(),
            "files": sorted(entries, key=lambda e: e["path"])})


def done_record(cfg: Config, offer: Offer) -> dict | None:
    """What write_done noted of this version, if this node ever held it complete."""
    try:
        with open(os.path.join(paths(cfg)["done"], offer.infohash + ".json"),
                  encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def holds(cfg: Config, offer: Offer) -> bool:
    """Whether the file in place is this version, complete and unchanged since."""
    done = done_record(cfg, offer)
    return done is not None and _unchanged(swarm_offers.destination(cfg, offer), done)


def write_done(cfg: Config, offer: Offer) -> None:
    """Note that this node holds the offer's file, complete and verified, as it is now."""
    dest = swarm_offers.destination(cfg, offer)
    stat = os.stat(dest)
    os.makedirs(paths(cfg)["done"], mode=0o750, exist_ok=True)
    write_json(os.path.join(paths(cfg)["done"], offer.infohash + ".json"),
               {"path": offer.path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "at": time.time()})


def describe(tracked: Tracked) -> dict:
    status = tracked.handle.status()
    total = tracked.offer.size
    done = status.total_wanted_done
    rate = status.download_payload_rate
    if tracked.moving:
        state = "moving"
    elif tracked.error:
        state = "error"
    elif status.state in (status.checking_files, status.checking_resume_data):
        state = "checking"
    elif status.is_seeding and not tracked.staged:
        state = "complete"
    else:
        state = "downloading"
    pieces = status.pieces
    return {
        "path": tracked.offer.path, "infohash": tracked.offer.infohash,
        "publisher": tracked.offer.publisher, "published": tracked.offer.published,
        "state": state, "size": total, "done_bytes": done,
        "progress": round(done / total, 4) if total else 1.0,
        "download_rate": rate, "upload_rate": status.upload_payload_rate,
        "peers": status.num_peers,
        "eta_s": round((total - done) / rate, 1) if rate and total > done else None,
        "pieces": len(pieces), "have": _bits(pieces),
        "downloaded": status.total_payload_download,
        "hash_failures": tracked.hash_failures, "repaired": tracked.repaired,
        "error": tracked.error,
    }


def _bits(pieces) -> str:
    """The pieces held, as a hex bitmap (first piece = most significant bit)."""
    if not pieces:
        return ""
    value = 0
    for have in pieces:
        value = (value << 1) | bool(have)
    width = (len(pieces) + 3) // 4
    return format(value << (width * 4 - len(pieces)), f"0{width}x")


def _unchanged(dest: str, done: dict) -> bool:
    try:
        stat = os.stat(dest)
    except OSError:
        return False
    return stat.st_size == done.get("size") and stat.st_mtime_ns == done.get("mtime_ns")


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def run(cfg: Config, detach: bool = False, replace: bool = False, stop: bool = False) -> int:
    """Run the daemon unless one already runs on this node (then say so, exit 0);
    replace: stop the running one first (it saves its resume data)."""
    swarm_engine.lt()  # fail here, with the install hint, not in a detached child
    os.makedirs(cfg.swarm_dir, mode=0o750, exist_ok=True)
    return daemons.run("swarm daemon", cfg.node, paths(cfg)["lock"],
                       journal.path(cfg, LOG), lambda: Daemon(cfg).run(),
                       detach=detach, replace=replace, stop=stop)
