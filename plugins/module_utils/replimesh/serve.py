"""`replimesh serve --peer NAME`: the forced command of every peer's key.

sshd runs it instead of whatever the peer asked for, which arrives in
SSH_ORIGINAL_COMMAND. Only replimesh's own verbs pass: the Unison server, and the
peer-list exchange. Anything else (a shell, scp, another program) is refused with a
logged one-line reason and a non-zero exit.
"""

from __future__ import annotations

import os
import shlex
import sys

from . import journal, membership, unison
from .config import Config
from .errors import ConfigError

# What Unison's client asks the server side to run (`<servercmd> -server`); newer
# releases may add flags of their own after it.
UNISON_SERVER = ("unison", "-server")
UNISON_SERVER_FLAGS = {"__new-rpc-mode"}
LOG = "serve.log"


class Refused(Exception):
    """The request is not one of replimesh's verbs from an active peer."""


def check(cfg: Config, peer: str, original_command: str | None) -> list[str]:
    """The argv to exec for this request ([EXCHANGE] for the peer-list exchange, done
    in this process), or Refused saying why not."""
    known = membership.load(cfg)
    if peer == cfg.node or peer not in known or not known[peer].active:
        raise Refused(f"{peer} is not an active peer of {cfg.node}")
    if cfg.node in known and not known[cfg.node].active:
        raise Refused(f"{cfg.node} is removed from the mesh: it serves nobody")
    if not original_command:
        raise Refused("no command given (an interactive shell is never allowed)")
    try:
        argv = shlex.split(original_command)
    except ValueError:
        raise Refused(f"unparsable command {original_command!r}") from None
    if tuple(argv[:2]) == UNISON_SERVER and set(argv[2:]) <= UNISON_SERVER_FLAGS:
        return [cfg.unison, "-server", *argv[2:]]
    if argv == membership.EXCHANGE.split():
        return [membership.EXCHANGE]
    raise Refused(f"command not allowed: {original_command[:200]!r}")


def serve(cfg: Config, peer: str) -> int:
    """Check the request, log the decision, and run the allowed verb."""
    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        argv = check(cfg, peer, original)
    except (Refused, ConfigError) as refusal:  # an unreadable peer list refuses everyone
        journal.append(cfg, LOG, f"refused {peer}: {refusal}")
        print(f"replimesh: refused: {refusal}", file=sys.stderr)
        return 1
    if argv == [membership.EXCHANGE]:
        return _exchange(cfg, peer)
    journal.append(cfg, LOG, f"accepted {peer}: {' '.join(argv[1:])}")
    os.chdir("/")
    os.execve(argv[0], argv, unison.environment(cfg))
    return 0  # not reached


def _exchange(cfg: Config, peer: str) -> int:
    try:
        answer = membership.answer_exchange(cfg, peer,
                                            sys.stdin.read(membership.MAX_LIST_BYTES + 1))
    except ConfigError as error:
        journal.append(cfg, LOG, f"exchange with {peer} failed: {error}")
        print(f"replimesh: {error}", file=sys.stderr)
        return 1
    journal.append(cfg, LOG, f"accepted {peer}: peer list exchange")
    sys.stdout.write(answer)
    return 0
