"""The node's configuration: /etc/replimesh/config.json, written by the replimesh_agent role."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

DEFAULT_PATH = "/etc/replimesh/config.json"
DEPLOY_HINT = "deploy the node with playbooks/site.yml"


@dataclass(frozen=True)
class Config:
    node: str                       # this node's name in the peer list
    roots: tuple[str, ...]          # absolute paths of the replicas, the same on every node
    user: str = "replimesh"         # the sync user on every node
    # The mesh's own files (peer list, its lock, round results, known_hosts) share one
    # folder, the only one of the sync user's home a peer's exchange may write (serve.py).
    peers_file: str = "/var/lib/replimesh/mesh/peers.json"
    state_file: str = "/var/lib/replimesh/mesh/state.json"
    log_dir: str = "/var/log/replimesh"
    unison: str = "/usr/bin/unison"
    unison_dir: str = "/var/lib/replimesh/.unison"   # Unison's archives, a folder per pair
    ssh_port: int = 22
    connect_timeout: int = 10       # seconds; what a dead peer costs a round
    session_timeout: int = 3600     # seconds; one Unison session is stopped after this
    # A peer's session served here is stopped after session_timeout too, and once it has
    # moved no byte for idle_timeout seconds; it runs confined (confine.py) unless
    # confine is false, and is refused where confinement is not available.
    idle_timeout: int = 600
    confine: bool = True
    # Membership: the operator's public key (allowed_signers format) that every peer-list
    # entry must be signed by; the sync user's known_hosts regenerated from the list; the
    # keys user's own copy of the list, from which sshd learns the keys that may log in
    # as the sync user (authorized_keys.py), out of the sync user's reach.
    operator_signers: str = "/etc/replimesh/operator_signers"
    known_hosts: str = "/var/lib/replimesh/mesh/known_hosts"
    keys_copy: str = "/var/lib/replimesh-keys/peers.json"
    command: str = "/usr/local/bin/replimesh"   # what peers' keys are forced to run
    ssh: str = "/usr/bin/ssh"
    # Replica safety: each replica's lock and file count live in replica_dir; a session
    # waits at most lock_wait seconds for a replica another session holds.
    replica_dir: str = "/var/lib/replimesh/replicas"
    lock_wait: int = 120
    # Who wins when a file changed on both sides: newer | keep-both | prefer:NODE.
    conflict_policy: str = "newer"
    # Content deleted or overwritten by a sync is kept this long in <root>/.replimesh-backup.
    backup_days: int = 14
    # A round refuses to sync a root that lost more than this share of its files since
    # its last session (a wiped or unmounted disk), until `sync --allow-deletions`.
    max_delete_share: float = 0.5
    # Swarm mode (large files over BitTorrent, see swarm_*.py): a file published under
    # swarm_root lands at the same relative path on every node. swarm_dir holds the
    # offers (manifests), resume data and the daemon's status. swarm_ca, swarm_cert and
    # swarm_key (PEM files: the mesh CA issued by the deploy, this node's certificate and
    # key) make every torrent an SSL torrent that only holders of a mesh certificate can
    # join; empty turns that off.
    swarm_root: str = "/srv/replimesh/swarm"
    swarm_dir: str = "/var/lib/replimesh/swarm"
    swarm_port: int = 6881
    swarm_seed_hours: int = 168     # a finished file is seeded this long, then only kept
    swarm_ca: str = ""
    swarm_cert: str = ""
    swarm_key: str = ""
    # What a peer's offers may claim (swarm_offers.check_bounds): a file's size, how many
    # files and bytes one publisher has on offer at once, and how far ahead of this node's
    # clock an offer may be dated (a later date would win over every honest version).
    swarm_max_file_bytes: int = 1 << 40
    swarm_max_offers_per_publisher: int = 64
    swarm_max_bytes_per_publisher: int = 4 << 40
    swarm_clock_margin_s: int = 600
    # The node's sync key signs its offers; peers check them against its ssh_key in the
    # peer list, so an offer relayed by any node still names its true publisher.
    swarm_signing_key: str = "/var/lib/replimesh/.ssh/id_ed25519"
    # Watch mode (watch_daemon.py): a round starts watch_settle_s after the last change
    # of a burst once every file written in it was closed (watch_quiet_s while one is
    # still open), at most watch_max_wait_s after its first; where the kernel's inotify
    # limits run out, a full round every watch_fallback_s instead.
    watch_settle_s: float = 0.2
    watch_quiet_s: float = 1.0
    watch_max_wait_s: float = 5.0
    watch_fallback_s: int = 60


_TYPES = {"node": str, "roots": list, "user": str, "peers_file": str, "state_file": str,
          "log_dir": str, "unison": str, "unison_dir": str, "ssh_port": int,
          "connect_timeout": int, "session_timeout": int, "idle_timeout": int,
          "confine": bool, "operator_signers": str, "known_hosts": str,
          "keys_copy": str, "command": str, "ssh": str, "replica_dir": str,
          "lock_wait": int, "conflict_policy": str, "backup_days": int,
          "max_delete_share": (int, float), "swarm_root": str, "swarm_dir": str,
          "swarm_port": int, "swarm_seed_hours": int, "swarm_ca": str, "swarm_cert": str,
          "swarm_key": str, "swarm_max_file_bytes": int,
          "swarm_max_offers_per_publisher": int, "swarm_max_bytes_per_publisher": int,
          "swarm_clock_margin_s": int, "swarm_signing_key": str,
          "watch_settle_s": (int, float), "watch_quiet_s": (int, float),
          "watch_max_wait_s": (int, float),
          "watch_fallback_s": int}
_RETIRED = ("authorized_keys",)
POLICIES = ("newer", "keep-both")
PREFER = "prefer:"


def path_in_use() -> str:
    """The config's path: $REPLIMESH_CONFIG's, or the default."""
    return os.environ.get("REPLIMESH_CONFIG", DEFAULT_PATH)


def load(path: str | None = None) -> Config:
    path = path or path_in_use()
    return parse(read_json(path, "config", DEPLOY_HINT + " (or point REPLIMESH_CONFIG at "
                                             "the node's config)"), path)


def read_json(path: str, what: str, hint: str) -> Any:
    """A deployed JSON file; a missing or unreadable one is a ConfigError saying so."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist: {hint}") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what} {path} cannot be read as JSON: {error}") from None


def parse(data: Any, origin: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a JSON object")
    # Written by releases before sshd took the keys from the keys user: nothing reads it.
    data = {k: v for k, v in data.items() if k not in _RETIRED}
    unknown = sorted(set(data) - set(_TYPES))
    if unknown:
        raise ConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}")
    for key in ("node", "roots"):
        if key not in data:
            raise ConfigError(f"{origin}: missing setting {key!r}")
    for key, value in data.items():
        kind = _TYPES[key]
        if not isinstance(value, kind) or (kind not in (str, bool) and isinstance(value, bool)):
            name = "number" if isinstance(kind, tuple) else kind.__name__
            raise ConfigError(f"{origin}: {key} must be a {name}, not {value!r}")
    roots = data["roots"]
    if not roots or not all(isinstance(r, str) and r.startswith("/") for r in roots):
        raise ConfigError(f"{origin}: roots must be a non-empty list of absolute paths")
    if len(set(roots)) != len(roots):
        raise ConfigError(f"{origin}: roots lists the same path twice")
    for key in ("connect_timeout", "session_timeout", "idle_timeout", "ssh_port", "lock_wait",
                "swarm_port", "swarm_seed_hours", "swarm_max_file_bytes",
                "swarm_max_offers_per_publisher", "swarm_max_bytes_per_publisher",
                "swarm_clock_margin_s", "watch_settle_s", "watch_quiet_s", "watch_max_wait_s",
                "watch_fallback_s"):
        if key in data and data[key] <= 0:
            raise ConfigError(f"{origin}: {key} must be positive")
    if data.get("watch_settle_s", Config.watch_settle_s) > data.get("watch_quiet_s",
                                                                    Config.watch_quiet_s):
        raise ConfigError(f"{origin}: watch_settle_s must be at most watch_quiet_s (the "
                          "wait after a burst with every file closed is the shorter one)")
    if data.get("backup_days", 0) < 0:
        raise ConfigError(f"{origin}: backup_days must be 0 or more")
    if not 0 < data.get("max_delete_share", 0.5) <= 1:
        raise ConfigError(f"{origin}: max_delete_share must be above 0 and at most 1 "
                          "(1 turns the deletion guard off)")
    if not str(data.get("swarm_root", "/")).startswith("/"):
        raise ConfigError(f"{origin}: swarm_root must be an absolute path")
    tls = [bool(data.get(k)) for k in ("swarm_ca", "swarm_cert", "swarm_key")]
    if any(tls) and not all(tls):
        raise ConfigError(f"{origin}: swarm_ca, swarm_cert and swarm_key go together "
                          "(all three, or none)")
    policy = data.get("conflict_policy", "newer")
    if policy not in POLICIES and not (policy.startswith(PREFER) and policy[len(PREFER):]):
        raise ConfigError(f"{origin}: conflict_policy {policy!r} is not one of newer, "
                          "keep-both, prefer:NODE")
    return Config(**{**data, "roots": tuple(roots)})
