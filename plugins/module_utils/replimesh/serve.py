"""`replimesh serve --peer NAME`: the forced command of every peer's key.

sshd runs it instead of whatever the peer asked for, which arrives in
SSH_ORIGINAL_COMMAND. Only replimesh's own verbs pass; anything else (a shell, scp,
another program) is refused with a logged one-line reason and a non-zero exit.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timezone

from . import peers as peer_list
from . import unison
from .config import Config
from .errors import ConfigError

# What Unison's client asks the server side to run (`<servercmd> -server`); newer
# releases may add flags of their own after it.
UNISON_SERVER = ("unison", "-server")
UNISON_SERVER_FLAGS = {"__new-rpc-mode"}


class Refused(Exception):
    """The request is not one of replimesh's verbs from an active peer."""


def check(cfg: Config, peer: str, original_command: str | None) -> list[str]:
    """The argv to exec for this request, or Refused saying why not."""
    active = {p.name for p in peer_list.load(cfg.peers_file) if p.state == "active"}
    if peer not in active or peer == cfg.node:
        raise Refused(f"{peer} is not an active peer of {cfg.node}")
    if not original_command:
        raise Refused("no command given (an interactive shell is never allowed)")
    try:
        argv = shlex.split(original_command)
    except ValueError:
        raise Refused(f"unparsable command {original_command!r}") from None
    if tuple(argv[:2]) == UNISON_SERVER and set(argv[2:]) <= UNISON_SERVER_FLAGS:
        return [cfg.unison, "-server", *argv[2:]]
    raise Refused(f"command not allowed: {original_command[:200]!r}")


def serve(cfg: Config, peer: str) -> int:
    """Check the request, log the decision, and exec the allowed program."""
    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        argv = check(cfg, peer, original)
    except (Refused, ConfigError) as refusal:  # an unreadable peer list refuses everyone
        log(cfg, f"refused {peer}: {refusal}")
        print(f"replimesh: refused: {refusal}", file=sys.stderr)
        return 1
    log(cfg, f"accepted {peer}: {' '.join(argv[1:])}")
    os.chdir("/")
    os.execve(argv[0], argv, unison.environment(cfg))
    return 0  # not reached


def log(cfg: Config, line: str) -> None:
    stamp = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    client = os.environ.get("SSH_CLIENT", "").split(" ")[0] or "-"
    try:
        with open(os.path.join(cfg.log_dir, "serve.log"), "a", encoding="utf-8") as out:
            out.write(f"{stamp} {client} {line}\n")
    except OSError:
        print(f"replimesh: cannot write {cfg.log_dir}/serve.log", file=sys.stderr)
