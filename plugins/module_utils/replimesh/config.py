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
    peers_file: str = "/var/lib/replimesh/peers.json"
    state_file: str = "/var/lib/replimesh/state.json"
    log_dir: str = "/var/log/replimesh"
    unison: str = "/usr/bin/unison"
    ssh_port: int = 22
    connect_timeout: int = 10       # seconds; what a dead peer costs a round
    session_timeout: int = 3600     # seconds; one Unison session is stopped after this
    # Membership: the operator's public key (allowed_signers format) that every peer-list
    # entry must be signed by, and the sync user's SSH files regenerated from the list.
    operator_signers: str = "/etc/replimesh/operator_signers"
    authorized_keys: str = "/var/lib/replimesh/.ssh/authorized_keys"
    known_hosts: str = "/var/lib/replimesh/.ssh/known_hosts"
    command: str = "/usr/local/bin/replimesh"   # what peers' keys are forced to run
    ssh: str = "/usr/bin/ssh"


_TYPES = {"node": str, "roots": list, "user": str, "peers_file": str, "state_file": str,
          "log_dir": str, "unison": str, "ssh_port": int, "connect_timeout": int,
          "session_timeout": int, "operator_signers": str, "authorized_keys": str,
          "known_hosts": str, "command": str, "ssh": str}


def load(path: str | None = None) -> Config:
    path = path or os.environ.get("REPLIMESH_CONFIG", DEFAULT_PATH)
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
    unknown = sorted(set(data) - set(_TYPES))
    if unknown:
        raise ConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}")
    for key in ("node", "roots"):
        if key not in data:
            raise ConfigError(f"{origin}: missing setting {key!r}")
    for key, value in data.items():
        kind = _TYPES[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{origin}: {key} must be a {kind.__name__}, not {value!r}")
    roots = data["roots"]
    if not roots or not all(isinstance(r, str) and r.startswith("/") for r in roots):
        raise ConfigError(f"{origin}: roots must be a non-empty list of absolute paths")
    if len(set(roots)) != len(roots):
        raise ConfigError(f"{origin}: roots lists the same path twice")
    for key in ("connect_timeout", "session_timeout", "ssh_port"):
        if key in data and data[key] <= 0:
            raise ConfigError(f"{origin}: {key} must be positive")
    return Config(**{**data, "roots": tuple(roots)})
