"""`replimesh swarm ...`: publish a large file to every node, run the daemon, watch it."""

from __future__ import annotations

import json
import os
import time

from . import daemons, swarm_daemon, swarm_firewall, swarm_mesh, swarm_offers
from .errors import ConfigError

EXIT_OK, EXIT_FAILED = 0, 1
STALE_S = 10  # a status older than this means no daemon is running


def add_parser(verbs) -> None:
    swarm = verbs.add_parser("swarm", help="large files, sent piece by piece by every node")
    sub = swarm.add_subparsers(dest="swarm_verb", required=True, metavar="COMMAND")
    publish = sub.add_parser("publish", help="hash a file under the swarm root and offer "
                                             "it to every node")
    publish.add_argument("path", help="the file, absolute or relative to the swarm root")
    publish.add_argument("--json", action="store_true", help="print the result as JSON")
    publish.set_defaults(handler=_publish)
    daemon = sub.add_parser("daemon", help="download what is offered, and seed")
    daemons.add_arguments(daemon)
    daemon.set_defaults(handler=_daemon)
    status = sub.add_parser("status", help="every swarm file on this node")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=_status)
    verify = sub.add_parser("verify", help="check every piece of a file in place; bad "
                                           "pieces are fetched again")
    verify.add_argument("path", help="the file, absolute or relative to the swarm root")
    verify.set_defaults(handler=_verify)
    firewall = sub.add_parser("firewall", help="(root) open the swarm port to the active "
                                               "peers' addresses only")
    firewall.add_argument("--quiet", action="store_true", help="print nothing (for cron)")
    firewall.set_defaults(handler=_firewall)


def _publish(cfg, args) -> int:
    def show(sent):
        if not args.json:
            print(f"  {sent.peer:<16} {sent.result:<12} {sent.message}".rstrip(), flush=True)
    offer, sent = swarm_mesh.publish(cfg, args.path, show if not args.json else None)
    if args.json:
        print(json.dumps({"node": cfg.node, "path": offer.path, "infohash": offer.infohash,
                          "size": offer.size, "published": offer.published,
                          "peers": [vars(s) for s in sent]}, indent=2))
    else:
        print(f"published {offer.path} ({offer.size} bytes) as {offer.infohash}")
    return EXIT_FAILED if any(s.result == "failed" for s in sent) else EXIT_OK


def _daemon(cfg, args) -> int:
    return swarm_daemon.run(cfg, detach=args.detach, replace=args.replace, stop=args.stop)


def load_status(cfg) -> dict:
    """The daemon's last status, with "running" set from how fresh it is."""
    try:
        with open(swarm_daemon.paths(cfg)["status"], encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        status = {"node": cfg.node, "updated": 0, "files": []}
    status["running"] = time.time() - status.get("updated", 0) < STALE_S
    held = swarm_offers.current(swarm_offers.load_all(cfg))
    tracked = {f["infohash"] for f in status["files"]}
    for path, offer in sorted(held.items()):
        if offer.infohash not in tracked:  # seeding time over, no daemon, or not yet read
            kept = swarm_daemon.holds(cfg, offer)
            status["files"].append({"path": path, "infohash": offer.infohash,
                                    "state": "kept" if kept else "waiting",
                                    "size": offer.size, "progress": 1.0 if kept else 0.0})
    return status


def _status(cfg, args) -> int:
    status = load_status(cfg)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{cfg.node}: swarm daemon {'running' if status['running'] else 'NOT running'}")
    for entry in status["files"]:
        line = f"{entry['path']:<32} {entry['state']:<11} {entry['progress'] * 100:6.1f}%"
        if "peers" in entry:
            line += (f" {entry['download_rate'] / 1e6:7.1f} MB/s {entry['peers']:>3} peers"
                     f" eta {entry['eta_s'] if entry['eta_s'] is not None else '-'}")
        if entry.get("hash_failures") or entry.get("repaired"):
            line += f"  {entry['hash_failures'] + entry['repaired']} bad piece(s) fetched again"
        if entry.get("error"):
            line += f"  {entry['error']}"
        print(line)
    return EXIT_OK


def _verify(cfg, args) -> int:
    rel = swarm_offers.relative_path(cfg, args.path)
    offer = swarm_offers.current(swarm_offers.load_all(cfg)).get(rel)
    if offer is None:
        raise ConfigError(f"{rel} was never published in the swarm: nothing to verify against")
    folder = swarm_daemon.paths(cfg)["verify"]
    os.makedirs(folder, mode=0o750, exist_ok=True)
    with open(os.path.join(folder, offer.infohash), "w", encoding="utf-8"):
        pass
    print(f"verifying {rel} against {offer.infohash}: see `replimesh swarm status`")
    return EXIT_OK


def _firewall(cfg, args) -> int:
    if os.geteuid() != 0:
        raise ConfigError("swarm firewall changes iptables rules: run it as root")
    for line in swarm_firewall.apply(cfg):
        if not args.quiet:
            print(line)
    return EXIT_OK
